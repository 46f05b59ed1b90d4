"""Action supervision (the supervised reference and light supervision): which episodes are labelled,
what the loss is, where its gradient goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.models.config import LAMConfig
from openlam.models.lam import LatentActionModel, normalize
from openlam.objectives.action import ActionConfig, ActionSupervision, labelled_episodes
from openlam.objectives.base import ObjectiveContext


def small_model(lookup: str = "euclidean") -> LatentActionModel:
    torch.manual_seed(0)
    cfg = {"image_size": 16, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
           "quantizer": {"kind": "nsvq", "num_tokens": 2, "codebook_size": 4, "code_dim": 4, "lookup": lookup},
           "decoder": {"dim": 16, "layers": 1, "heads": 2}}
    from openlam.config import from_dict

    return LatentActionModel(from_dict(LAMConfig, cfg))


def batch(episodes: list[int], views: int = 2, seed: int = 0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    B = len(episodes)
    frames = {f"v{i}": torch.randint(0, 256, (B, 2, 3, 16, 16), generator=g, dtype=torch.uint8) for i in range(views)}
    return PairBatch(frames=frames, masks={}, action=torch.randn(B, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1]) + 5,
                     language=[""] * B, episode=torch.tensor(episodes), t=torch.arange(B), gap=torch.ones(B, dtype=torch.long),
                     views=list(frames))


def test_labelled_episodes_are_a_seeded_share_of_at_least_one():
    eps = list(range(100, 140))
    two = labelled_episodes(eps, 0.05, seed=0)
    assert len(two) == 2 and set(two) <= set(eps) and two == labelled_episodes(eps, 0.05, seed=0)
    assert labelled_episodes(eps, 0.05, seed=1) != two
    assert len(labelled_episodes(eps, 0.001, 0)) == 1 and labelled_episodes(eps, 1.0, 0) == eps
    with pytest.raises(ConfigError, match="fraction must be in"):
        ActionConfig(fraction=0.0).validate()


def test_loss_is_the_standardised_error_of_labelled_pairs_and_its_gradient_reaches_the_encoder():
    model = small_model()
    asked: list[list[int]] = []
    mean, std = np.array([5.0, 5.0, 5.0]), np.array([1.0, 10.0, 0.1])

    def stats(episodes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        asked.append(list(episodes))
        return mean, std

    obj = ActionSupervision(ActionConfig(fraction=0.5, seed=3), ObjectiveContext({e: 10 + e for e in range(10)}, latent_dim=8, action_stats=stats))
    assert asked == [obj.labelled] and len(obj.labelled) == 5  # statistics only from what is labelled
    lab = obj.labelled
    unl = [e for e in range(10) if e not in lab]
    share = sum(10 + e for e in lab) / sum(10 + e for e in range(10))  # of training pairs, not episodes

    b = batch([lab[0], unl[0], lab[1], unl[1]])
    loss, logs = obj(model, b)
    # by hand: rows 0 and 2, both views, standardised target; the sum over them divided by the
    # expected number of labelled rows in a batch of 4 pairs x 2 views
    with torch.no_grad():
        x = torch.stack([b.frames[v] for v in b.views], 1)[[0, 2]].flatten(0, 1)
        z = model.encode_pair(normalize(x)).quant.z_cont.flatten(1)
        target = ((b.action[[0, 2]] - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)).repeat_interleave(2, 0)
        per_row = (obj.head(z) - target).pow(2).mean(1)
    torch.testing.assert_close(loss.detach(), per_row.sum() / (4 * 2 * share))
    torch.testing.assert_close(logs["error"], loss.detach())
    assert float(logs["labelled_rows"]) == 4  # 2 pairs x 2 views
    loss.backward()
    enc = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert enc and any(g.abs().sum() > 0 for g in enc)
    assert all(p.grad is None for p in model.decoder.parameters())  # the reference never decodes
    assert model.quantizer.proj_in.weight.grad.abs().sum() > 0 and model.quantizer.codebook.grad is None

    model.zero_grad(set_to_none=True)
    obj.head.zero_grad(set_to_none=True)
    usage = model.quantizer.usage.clone()
    loss, logs = obj(model, batch(unl[:4]))  # nothing labelled: zero loss and zero gradient to the LAM, but
    loss.backward()  # every head parameter is in the graph (DDP without find_unused_parameters needs it)
    assert float(loss.detach()) == 0.0 and float(logs["labelled_rows"]) == 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in obj.head.parameters())
    assert torch.equal(model.quantizer.usage, usage)  # reading the latent leaves the quantizer's state alone


def test_head_width_follows_the_quantizer():
    """FSQ's continuous latent has one dim per level, not code_dim."""
    from openlam.config import from_dict
    from openlam.train.trainer import objective_context

    cfg = {"image_size": 16, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
           "quantizer": {"kind": "fsq", "num_tokens": 2, "fsq_levels": [3, 3, 4], "code_dim": 32}, "decoder": {"dim": 16, "layers": 1, "heads": 2}}
    model = LatentActionModel(from_dict(LAMConfig, cfg))

    class Data:
        views = ["view0"]

        def pairs_per_episode(self):
            return {0: 3, 1: 3}

        def action_stats(self, episodes):
            return np.zeros(3), np.ones(3)

    class Cache:
        action_space = object()

    obj = ActionSupervision(ActionConfig(views="first"), objective_context(model, Cache(), Data(), 2))
    loss, _ = obj(model, batch([0, 1]))
    assert obj.head.in_features == 2 * 3 and torch.isfinite(loss)


@pytest.mark.parametrize("lookup", ["euclidean", "cosine"])
def test_continuous_latent_matches_the_quantizers_input(lookup):
    model = small_model(lookup).eval()
    x = normalize(torch.stack([batch([0, 1]).frames["v0"]], 1).flatten(0, 1))
    torch.testing.assert_close(model.encode_continuous(x), model.encode_pair(x).quant.z_cont)


def test_needs_actions():
    with pytest.raises(ConfigError, match="needs training data with actions"):
        ActionSupervision(ActionConfig(), ObjectiveContext({0: 5, 1: 5}, latent_dim=8, action_stats=None))


def test_shuffled_latent_error_shows_whether_the_decoder_reads_the_latent():
    """Held-out eval also predicts each pair with another pair's latent (same camera): equal to the
    own-latent error exactly when the decoder ignores the latent, different when it reads it."""
    from openlam.train.evaluate import reconstruction_eval

    from openlam.objectives.reconstruction import stack_views

    model = small_model()
    b = batch([0, 1, 2, 3, 4, 5], views=2)
    model(stack_views(b, b.views))  # a training forward seeds the codebook from the data
    with torch.no_grad():  # at initialisation the latents differ little: make the decoder read them strongly
        model.decoder.act_in.weight.mul_(1e3)
    reads = reconstruction_eval(model, [b], torch.device("cpu"))
    assert abs(reads["shuffled_latent_mse"] - reads["recon_mse"]) > 1e-5 * reads["recon_mse"]
    with torch.no_grad():  # a decoder blind to the action tokens
        model.decoder.act_in.weight.zero_()
        model.decoder.act_in.bias.zero_()
    blind = reconstruction_eval(model, [b], torch.device("cpu"))
    assert blind["shuffled_latent_mse"] == pytest.approx(blind["recon_mse"], rel=1e-9)
    # the partner is another pair, never the same pair's other camera: with one pair there is no other
    one = reconstruction_eval(small_model(), [batch([0], views=2)], torch.device("cpu"))
    assert one["shuffled_latent_mse"] == pytest.approx(one["recon_mse"], rel=1e-9)
