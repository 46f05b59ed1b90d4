"""Stages 2-3: the policy's heads, pretraining on latent labels, finetuning on a few demos, the
errors that must come before training, exact resume on the shared engine, and closed-loop rollouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pyarrow.parquet as pq

from openlam.artifacts import atomic_write_json
from openlam.config import from_dict
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import goal_squares
from openlam.errors import ConfigError, DataError
from openlam.label import LabelConfig, label, shard_table
from openlam.policy.config import ActionHeadConfig, PolicyModelConfig, PolicyTrainConfig
from openlam.policy.heads import BinsHead, FlowHead, LatentTokenHead
from openlam.policy.model import ActionSpec, LatentSpec, Policy, PolicySpec, build_vocab
from openlam.policy.train import train_policy
from openlam.train.config import TrainConfig
from openlam.train.trainer import train

MODEL = {"image_size": 32, "patch": 8, "dim": 32, "heads": 4, "vision_layers": 1, "trunk_layers": 1, "readout": 2}


@pytest.fixture(scope="module")
def goals(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("goals")
    ds = write_lerobot(root / "ds", goal_squares(episodes_per_task=30, length=20, size=32), fps=10.0)
    return build_cache(ds, root / "cache", CacheConfig(size=32))


@pytest.fixture(scope="module")
def labels(goals, tmp_path_factory) -> Path:
    """`openlam label` of the goal data by a LAM trained for a few steps (gap 2 frames)."""
    root = tmp_path_factory.mktemp("lam")
    cfg = from_dict(TrainConfig, {
        "model": {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
                  "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 8, "num_tokens": 2, "restart_every": 0},
                  "decoder": {"dim": 32, "layers": 1, "heads": 4}},
        "data": {"cache": str(goals), "gap": {"seconds": None, "frames": 2}, "workers": 0},
        "steps": 30, "batch_size": 16, "log_every": 10, "preview_every": 0, "ckpt_every": 30, "eval_batches": 1, "out": str(root / "run"),
    })
    train(cfg)
    label(root / "run", goals, root / "labels", LabelConfig(batch_size=64))
    return root / "labels"


@pytest.fixture(scope="module")
def oracle_labels(goals, tmp_path_factory) -> Path:
    """Labels in `openlam label`'s format whose tokens are the action's quartile per dim: what a
    perfect LAM would give; a policy can learn them from frame + instruction."""
    out = tmp_path_factory.mktemp("oracle")
    cache = FrameCache(goals)
    ep = np.concatenate([np.full(e["length"] - 2, i) for i, e in enumerate(cache.episodes)])
    fr = np.concatenate([np.arange(e["length"] - 2) for e in cache.episodes])
    acts = np.asarray(cache.actions())[cache.starts[ep] + fr]
    edges = [np.quantile(c, [0.25, 0.5, 0.75]) for c in acts.T]
    tokens = np.stack([np.searchsorted(e, c) for e, c in zip(edges, acts.T)], 1)
    (out / "shards").mkdir()
    pq.write_table(shard_table(ep, fr, ["cam"] * len(ep), np.full(len(ep), 2), tokens, np.eye(4)[tokens].reshape(len(ep), -1)),
                   out / "shards" / "shard-00000.parquet")
    atomic_write_json(out / "labels.json", {"complete": True, "shards": 1, "num_tokens": 2, "codebook_size": 4, "code_dim": 4,
                                            "gap": {"frames": 2}, "cache": str(goals), "views": ["cam"], "model_fingerprint": "oracle"})
    return out


def policy_cfg(out: Path, **kw) -> PolicyTrainConfig:
    d = {"model": MODEL, "steps": 60, "batch_size": 32, "log_every": 20, "ckpt_every": 60, "out": str(out),
         "optim": {"lr": 2e-3, "warmup_steps": 5}, "deterministic": True}
    for k, v in kw.items():
        node = d
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return from_dict(PolicyTrainConfig, d)


def test_bins_are_equal_frequency_and_decode_to_their_medians():
    torch.manual_seed(0)
    head = BinsHead(cond_dim=4, hidden=8, chunk=2, action_dim=2, bins=8)
    a = torch.cat([torch.rand(4000, 1) * 2 - 1, torch.randn(4000, 1) ** 3], 1)  # uniform, heavy-tailed
    head.fit_bins(a)
    cls = head.classes(a.view(-1, 2, 2))
    for d in range(2):
        counts = torch.bincount(cls[..., d].flatten(), minlength=8).float()
        assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean(), counts  # equal frequency
    # every centre falls in its own bin, and the decoder returns the centre of the argmax bin
    c = head.centers.T.unsqueeze(0).contiguous()  # (1, bins, A): the centres as a "chunk" of `bins` actions
    assert torch.equal(torch.searchsorted(head.edges.unsqueeze(0).expand(8, -1, -1).contiguous(), c[0].unsqueeze(-1), right=True).squeeze(-1),
                       torch.arange(8).unsqueeze(1).expand(8, 2))
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
        head.mlp[-1].bias.view(2, 2, 8)[:, :, 5] = 10.0  # bin 5 everywhere
    assert torch.allclose(head.act(torch.zeros(3, 4)), head.centers[:, 5].expand(3, 2, 2))


def test_bins_decode_repeated_values_to_themselves():
    """A gripper at exactly -1, 0 or +1 (ties fill several quantile edges): classifying a training
    value and decoding its bin gives the value back, so a perfect classifier makes no error."""
    head = BinsHead(cond_dim=2, hidden=4, chunk=1, action_dim=2, bins=32)
    g = torch.tensor([-1.0] * 300 + [0.0] * 100 + [1.0] * 600)
    a = torch.stack([g, torch.linspace(-1, 1, 1000)], 1)
    head.fit_bins(a)
    cls = head.classes(a.unsqueeze(1))[:, 0]
    decoded = torch.gather(head.centers.T, 0, cls)  # (N, A): each row's bin centre per dim
    assert torch.equal(decoded[:, 0], g)  # ties: exact
    assert (decoded[:, 1] - a[:, 1]).abs().max() < 2 / 32  # continuous: within one bin


def test_flow_head_learns_a_conditional_action_and_samples_it():
    """cond -> action is a fixed linear map plus a little noise; after training, integrating the
    velocity from noise lands on it (error far below the action's spread)."""
    torch.manual_seed(0)
    W = torch.randn(3, 2)
    head = FlowHead(cond_dim=3, hidden=64, chunk=1, action_dim=2, steps=20)
    cond = torch.randn(4096, 3)
    act = (cond @ W).unsqueeze(1) + 0.01 * torch.randn(4096, 1, 2)
    head.fit_stats(act[:, 0])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(600):
        idx = torch.randint(0, 4096, (256,))
        loss, _ = head.loss(cond[idx], act[idx])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    test = torch.randn(256, 3)
    pred = head.act(test, torch.Generator().manual_seed(1))
    err = ((pred[:, 0] - test @ W) ** 2).mean() / (test @ W).var(0).mean()
    assert err < 0.1, err


def test_latent_head_is_causal_and_generates_its_own_argmax():
    torch.manual_seed(0)
    head = LatentTokenHead(num_tokens=3, codebook_size=5, dim=16, heads=4, layers=2).eval()
    ctx = torch.randn(4, 7, 16)
    tok = torch.randint(0, 5, (4, 3))
    lg = head.logits(ctx, tok)
    other = tok.clone()
    other[:, 1:] = (other[:, 1:] + 1) % 5  # change tokens 1..: logits of token 0 and 1 depend only on earlier ones
    lg2 = head.logits(ctx, other)
    assert torch.allclose(lg[:, :2], lg2[:, :2], atol=1e-6) and not torch.allclose(lg[:, 2], lg2[:, 2])
    gen = head.generate(ctx)
    assert torch.equal(head.logits(ctx, gen).argmax(-1), gen)  # greedy: each token is the argmax given the ones before


def test_pretrain_on_labels_then_finetune_few_demos(goals, oracle_labels, tmp_path):
    """Stage 2 learns oracle labels above the majority floor; stage 3 starts from its trunk, drops the
    latent head, fits bins on 3 demos per task, and records both stages; the instruction reaches
    the actions (swapping it changes them)."""
    pre = train_policy(policy_cfg(tmp_path / "pre", target="latent", steps=300, **{"data.labels": str(oracle_labels), "data.cache": None}),
                       "pretrain")
    assert pre["val"]["token_acc"] > pre["val"]["token_acc_majority"] + 0.08, pre["val"]
    p = Policy.from_pretrained(tmp_path / "pre")
    assert p.latent_head is not None and p.action_head is None and p.spec.history[0]["stage"] == "pretrain"
    train_policy(policy_cfg(tmp_path / "ft", target="actions", init=str(tmp_path / "pre"), steps=50,
                            **{"data.cache": str(goals), "data.episodes_per_task": 3}), "finetune")
    pol = Policy.from_pretrained(tmp_path / "ft")
    assert pol.latent_head is None and isinstance(pol.action_head, BinsHead)
    assert [h["stage"] for h in pol.spec.history] == ["pretrain", "finetune"] and pol.spec.history[1]["episodes"] == 6


@pytest.mark.parametrize("kind", ["bins", "flow"])
def test_finetuning_learns_held_out_actions(goals, tmp_path, kind):
    """From scratch on every train episode, with proprioception (the action is then a simple
    function of state and instruction): held-out NMSE of the first action far below 1 (the mean),
    and the instruction steers it."""
    r = train_policy(policy_cfg(tmp_path / kind, target="actions", steps=1000, batch_size=64, optim={"lr": 3e-3, "warmup_steps": 20},
                                head={"kind": kind, "state": True}, **{"data.cache": str(goals)}), "finetune")
    assert r["val"]["action_nmse"] < 0.4, r["val"]
    # the two tasks steer to dots on opposite sides: with the other instruction the actions change
    pol, cache = Policy.from_pretrained(tmp_path / kind), FrameCache(goals)
    rows = np.concatenate([cache.episodes[e]["start"] + np.arange(5) for e in cache.splits["val"]["episodes"]])
    img = torch.from_numpy(np.asarray(cache.frames("cam")[rows])).permute(0, 3, 1, 2)
    state = torch.from_numpy(np.asarray(cache.state()[rows]))
    g = torch.Generator().manual_seed(0)
    red = pol.act(img, ["move the square to the red dot"] * len(rows), state, g)[:, 0]
    blue = pol.act(img, ["move the square to the blue dot"] * len(rows), state, g)[:, 0]
    assert (red - blue).abs().mean() > 0.3, (red - blue).abs().mean()


def test_flow_head_with_perception_and_state_from_a_pretrained_policy(goals, labels, tmp_path):
    train_policy(policy_cfg(tmp_path / "pre", target="latent", steps=20, **{"data.labels": str(labels), "data.cache": None}), "pretrain")
    pre = Policy.from_pretrained(tmp_path / "pre")
    train_policy(policy_cfg(tmp_path / "ft", target="actions", init=str(tmp_path / "pre"), steps=40,
                            head={"kind": "flow", "chunk": 3, "perception": True, "state": True},
                                 **{"data.cache": str(goals), "data.episodes_per_task": 4}), "finetune")
    pol = Policy.from_pretrained(tmp_path / "ft")
    assert isinstance(pol.action_head, FlowHead) and pol.perception is not None
    # perception is a frozen copy of the pretrained vision encoder: bit-identical after finetuning
    for k, v in pre.vision.state_dict().items():
        assert torch.equal(pol.perception.state_dict()[k], v), k
    assert not all(torch.equal(pol.vision.state_dict()[k], v) for k, v in pre.vision.state_dict().items())  # the trunk's copy trained
    with pytest.raises(ConfigError, match="reads observation.state"):
        pol.act(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["move the square to the red dot"])


def test_action_pretraining_carries_its_head_into_finetuning(goals, tmp_path):
    train_policy(policy_cfg(tmp_path / "gt", target="actions", steps=20, **{"data.cache": str(goals)}), "pretrain")
    gt = Policy.from_pretrained(tmp_path / "gt")
    train_policy(policy_cfg(tmp_path / "ft", target="actions", init=str(tmp_path / "gt"), steps=1, optim={"lr": 1e-9, "warmup_steps": 0},
                            **{"data.cache": str(goals), "data.episodes_per_task": 1}), "finetune")
    ft = Policy.from_pretrained(tmp_path / "ft")
    # same actions, same head: its bins (fit on all the pretraining actions) and weights come along
    assert torch.equal(ft.action_head.edges, gt.action_head.edges)
    assert torch.allclose(ft.action_head.mlp[0].weight, gt.action_head.mlp[0].weight, atol=1e-6)


def test_resume_after_a_lost_checkpoint_is_exact(goals, tmp_path):
    kw = {"target": "actions", "steps": 30, "ckpt_every": 10, "keep_last": 0, "head": {"kind": "flow", "chunk": 2}, "data.cache": str(goals)}
    train_policy(policy_cfg(tmp_path / "ref", **kw), "pretrain")
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000030")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000020")
    train_policy(policy_cfg(tmp_path / "cut", **kw), "pretrain", resume=True)
    a = load_file(str(tmp_path / "ref/checkpoints/step_00000030/model.safetensors"))
    b = load_file(str(tmp_path / "cut/checkpoints/step_00000030/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["loss"] for r in rows(tmp_path / "ref")] == [r["loss"] for r in rows(tmp_path / "cut")]
    # a refused resume (a damaged checkpoint that no longer fits) leaves the run's logs as they were
    from safetensors.torch import save_file

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000030")
    w = load_file(str(tmp_path / "cut/checkpoints/step_00000020/model.safetensors"))
    save_file({k: v for k, v in w.items() if k != "norm.bias"}, str(tmp_path / "cut/checkpoints/step_00000020/model.safetensors"))
    before = (tmp_path / "cut" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="norm.bias"):
        train_policy(policy_cfg(tmp_path / "cut", **kw), "pretrain", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == before


def test_action_chunks_stop_at_their_episode_and_rows_read_their_own_frames(goals):
    from openlam.policy.config import PolicyDataConfig
    from openlam.policy.data import PolicyDataset

    cache = FrameCache(goals)
    pol = Policy(PolicySpec(from_dict(PolicyModelConfig, MODEL), build_vocab(["move the square to the red dot"]), {}, ["cam"]))
    ds = PolicyDataset.from_cache(cache, from_dict(PolicyDataConfig, {"cache": str(goals)}), pol.encode_instructions, 16, 5, True)
    acts, frames, state = np.asarray(cache.actions()), np.asarray(cache.frames("cam")), np.asarray(cache.state())
    e = ds.episodes[0]
    start, T = cache.episodes[e]["start"], cache.episodes[e]["length"]
    rows = [i for i in range(len(ds)) if ds.episode[i] == e][-3:]  # the episode's last three frames
    b = ds.__getitems__(rows)
    for k, i in enumerate(rows):
        g = ds.frame[i]
        want = acts[[min(g + j, start + T - 1) for j in range(5)]]
        assert np.array_equal(b.actions[k].numpy(), want)  # the last action repeats; never the next episode's first
        assert np.array_equal(b.image[k].permute(1, 2, 0).numpy(), frames[g]) and np.array_equal(b.state[k].numpy(), state[g])


def test_shuffled_tokens_keep_the_targets_but_not_their_frames(goals, oracle_labels):
    """The control for latent pretraining: the same token tuples (same marginals), permuted across
    rows by the seed, so a token no longer goes with its frame; off, the labels are untouched."""
    from openlam.policy.config import PolicyDataConfig
    from openlam.policy.data import PolicyDataset

    pol = Policy(PolicySpec(from_dict(PolicyModelConfig, MODEL), build_vocab(["move the square to the red dot"]), {}, ["cam"]))
    make = lambda **kw: PolicyDataset.from_labels(oracle_labels, from_dict(PolicyDataConfig, {"labels": str(oracle_labels), **kw}),  # noqa: E731
                                                  pol.encode_instructions, 16)
    plain, shuffled, again, other = make(), make(shuffle_tokens=True), make(shuffle_tokens=True), make(shuffle_tokens=True, subset_seed=1)
    assert np.array_equal(plain.frame, shuffled.frame)  # the same rows, frames and views
    assert sorted(map(tuple, plain.tokens)) == sorted(map(tuple, shuffled.tokens))
    assert np.array_equal(shuffled.tokens, again.tokens) and not np.array_equal(shuffled.tokens, other.tokens)
    assert (plain.tokens != shuffled.tokens).any(1).mean() > 0.5
    # the oracle tokens are the action's quartiles: in place they follow the action, shuffled they do not
    acts = np.asarray(FrameCache(goals).actions())[plain.frame, 0]
    corr = lambda t: abs(np.corrcoef(t[:, 0], acts)[0, 1])  # noqa: E731
    assert corr(plain.tokens) > 0.6 and corr(shuffled.tokens) < 0.1
    with pytest.raises(ConfigError, match="shuffle_tokens"):
        from_dict(PolicyDataConfig, {"cache": str(goals), "shuffle_tokens": True})


def test_bad_inputs_fail_before_training(goals, labels, tmp_path):
    lab = {"data.labels": str(labels), "data.cache": None, "target": "latent"}
    with pytest.raises(DataError, match="gap"):
        train_policy(policy_cfg(tmp_path / "a", expect_gap={"seconds": None, "frames": 5}, **lab), "pretrain")
    other = tmp_path / "other_lam" / "model"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"not the labeller")
    with pytest.raises(DataError, match="model_fingerprint"):
        train_policy(policy_cfg(tmp_path / "b", expect_lam=str(other), **lab), "pretrain")
    with pytest.raises(ConfigError, match="finetune trains on actions"):
        train_policy(policy_cfg(tmp_path / "c", **lab), "finetune")
    with pytest.raises(ConfigError, match="perception"):
        train_policy(policy_cfg(tmp_path / "d", target="actions", head={"perception": True}, **{"data.cache": str(goals)}), "finetune")
    with pytest.raises(ConfigError, match="image_size"):
        train_policy(policy_cfg(tmp_path / "e", target="actions", model={**MODEL, "image_size": 64}, **{"data.cache": str(goals)}), "finetune")
    with pytest.raises(DataError, match="labels.json"):
        train_policy(policy_cfg(tmp_path / "h", **{**lab, "data.labels": str(tmp_path / "nowhere")}), "pretrain")
    with pytest.raises(ConfigError, match="batch_size=4096 is larger than"):
        train_policy(policy_cfg(tmp_path / "i", target="actions", batch_size=4096, **{"data.cache": str(goals)}), "finetune")
    assert not (tmp_path / "i" / "config.yaml").exists()  # refused before the run's record is written
    for out in "abcdehi":
        assert not (tmp_path / out / "checkpoints").exists()
    # a resume on labels that changed since (same path, another LAM's) is refused
    mine = tmp_path / "labels_copy"
    shutil.copytree(labels, mine)
    jkw = {**lab, "data.labels": str(mine), "steps": 4, "ckpt_every": 2, "batch_size": 8}
    train_policy(policy_cfg(tmp_path / "j", **jkw), "pretrain")
    meta = json.loads((mine / "labels.json").read_text())
    (mine / "labels.json").write_text(json.dumps({**meta, "model_fingerprint": "another-lam"}))
    with pytest.raises(DataError, match="fingerprints"):
        train_policy(policy_cfg(tmp_path / "j", **jkw), "pretrain", resume=True)
    # an episode without an instruction
    eps = goal_squares(episodes_per_task=3, length=8, size=32)
    eps[4].language = ""
    ds = write_lerobot(tmp_path / "nolang", eps, fps=10.0)
    cache = build_cache(ds, tmp_path / "nolang_cache", CacheConfig(size=32))
    with pytest.raises(DataError, match=r"episodes\[\d+\]\.language"):
        train_policy(policy_cfg(tmp_path / "f", target="actions", **{"data.cache": str(cache), "data.split": "train"}), "finetune")
    # an init whose action head predicts other actions
    spec = PolicySpec(from_dict(PolicyModelConfig, MODEL), build_vocab(["x"]), {"t": "x"}, ["cam"],
                      action=ActionSpec(ActionHeadConfig(), ["a", "b", "c"]))
    Policy(spec).save_pretrained(tmp_path / "three")
    with pytest.raises(ConfigError, match=r"predicts \['a', 'b', 'c'\]"):
        train_policy(policy_cfg(tmp_path / "g", target="actions", init=str(tmp_path / "three"), **{"data.cache": str(goals)}), "finetune")


def test_rollout_in_metaworld_writes_success_videos_and_refuses_what_it_cannot_do(tmp_path):
    from openlam.policy.rollout import PolicyActor, RolloutConfig, reference_rollout, rollout, rollout_seed, run_episode
    from openlam.sim.generate import _close_all, episode_seed
    from openlam.sim.metaworld_env import ACTION_NAMES, INSTRUCTIONS

    torch.manual_seed(0)
    tasks = {"reach-v3": INSTRUCTIONS["reach-v3"]}
    spec = PolicySpec(from_dict(PolicyModelConfig, MODEL), build_vocab(list(tasks.values())), tasks, ["corner"],
                      action=ActionSpec(ActionHeadConfig(kind="flow", chunk=2, state=True), ACTION_NAMES, 4))
    Policy(spec).save_pretrained(tmp_path / "pol")
    r = rollout(tmp_path / "pol", tmp_path / "ro", from_dict(RolloutConfig, {"episodes": 2, "max_steps": 6, "videos": 1, "workers": 1}))
    t = r["tasks"]["reach-v3"]
    assert t["episodes"] == 2 and 0 <= t["ci"][0] <= t["rate"] <= t["ci"][1] <= 1
    assert json.loads((tmp_path / "ro" / "rollout.json").read_text())["overall"]["episodes"] == 2
    steps = t["episodes_detail"][0]["steps"]
    assert sorted(Path(v).name for v in r["videos"]) == ["reach-v3_000.gif", "reach-v3_000.mp4"]
    from openlam.data.video import count_frames

    assert count_frames(tmp_path / "ro" / "videos" / "reach-v3_000.mp4") == steps
    # the same episode twice: the same initial state, noise and actions; another index: another start
    pol = Policy.from_pretrained(tmp_path / "pol")
    cfg = RolloutConfig(max_steps=4)
    try:
        a, b, c = (run_episode(PolicyActor(pol, "reach-v3", cfg), "reach-v3", i, cfg, keep_frames=True) for i in (0, 0, 1))
    finally:
        _close_all()
    assert a.actions == b.actions and np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames[0], c.frames[0])
    assert not np.array_equal(rollout_seed(0, "reach-v3", 0).generate_state(4), episode_seed(0, "reach-v3", 0, 0).generate_state(4))
    with pytest.raises(ConfigError, match=r"never trained on \['push-v3'\]"):
        rollout(tmp_path / "pol", tmp_path / "x", RolloutConfig(tasks=["push-v3"]))
    with pytest.raises(ConfigError, match="not among the cameras"):
        rollout(tmp_path / "pol", tmp_path / "x", RolloutConfig(camera="topview"))
    Policy(PolicySpec(spec.model, spec.vocab, tasks, ["corner"], latent=LatentSpec(2, 8))).save_pretrained(tmp_path / "latent")
    with pytest.raises(ConfigError, match="no action head"):
        rollout(tmp_path / "latent", tmp_path / "x", RolloutConfig())
    assert not (tmp_path / "x").exists()
    # the references, through the same loop and starts: the scripted expert succeeds, random actions do not
    ref = RolloutConfig(episodes=2, max_steps=150, workers=1)
    assert reference_rollout("expert", ["reach-v3"], "corner", 32, tmp_path / "expert", ref)["overall"]["rate"] == 1.0
    assert reference_rollout("random", ["reach-v3"], "corner", 32, tmp_path / "random", ref)["overall"]["rate"] == 0.0


def test_cli_single_process_and_two_ddp_processes_train_the_same_policy(goals, tmp_path):
    """`openlam finetune` from the command line, and under torchrun with 2 ranks: each rank reads its
    half of the global batch (flow noise included), so the weights match one process's."""
    import subprocess
    import sys

    import yaml

    from openlam.config import to_dict

    from test_train import ENV

    cfg = to_dict(policy_cfg(tmp_path / "x", target="actions", steps=8, ckpt_every=8, log_every=4, batch_size=16,
                             head={"kind": "flow", "chunk": 2, "state": True}, **{"data.cache": str(goals)}))
    outs = {}
    for nproc in (1, 2):
        p = tmp_path / f"cfg{nproc}.yaml"
        p.write_text(yaml.safe_dump(cfg | {"out": str(tmp_path / f"p{nproc}")}))
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
        r = subprocess.run([*launcher, "-m", "openlam", "finetune", str(p)], env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "finetune: trained 8 steps" in r.stdout and "held-out (val): action_nmse" in r.stdout
        outs[nproc] = load_file(str(tmp_path / f"p{nproc}" / "checkpoints" / "step_00000008" / "model.safetensors"))
    a, b = outs[1], outs[2]
    for k in a:
        tol = 1e-4 if k.endswith("qkv.bias") else 1e-5  # the key bias's true gradient is 0 (cancels in the softmax)
        assert torch.allclose(a[k], b[k], atol=tol, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_cnn_stem_gives_one_token_per_patch_and_checks_its_patch():
    from openlam.policy.model import VisionEncoder

    for patch in (2, 4, 8):
        cfg = from_dict(PolicyModelConfig, {**MODEL, "stem": "cnn", "patch": patch})
        enc = VisionEncoder(cfg)
        assert enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, (32 // patch) ** 2, 32)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.patch) == patch.bit_length() - 1
    with pytest.raises(ConfigError, match="power of 2"):
        from_dict(PolicyModelConfig, {**MODEL, "stem": "cnn", "patch": 6, "image_size": 36})


def test_policy_experiment_end_to_end_is_paired_and_resumable(tmp_path):
    """The whole LAPA recipe in one command at toy size: data, a LAM, its labels, stage 2 on its
    tokens and on actions, stage 3 per row on the same demos, rollouts from the same starts; a
    second invocation redoes nothing."""
    import yaml

    from openlam.cli import main

    cfg = {
        "name": "policy_toy", "demos": [2], "seeds": [0, 1],
        "generate": {"tasks": ["reach-v3"], "episodes": 8, "cameras": ["corner"], "size": 32, "max_steps": 24, "workers": 1,
                     "splits": {"val_fraction": 0.2, "test_fraction": 0.2}},
        "data_root": str(tmp_path / "bench"),
        "arms": [{"name": "recon", "config": "configs/lapa_tiny.yaml"}], "shuffled": "recon",
        "train": ["steps=6", "batch_size=8", "model.image_size=32", "data.gap.frames=2", "data.gap.seconds=null", "log_every=3",
                  "preview_every=0", "ckpt_every=6", "eval_batches=1", "time_limit_s=0", "data.workers=0"],
        "policy": "configs/policy_tiny.yaml",
        "policy_overrides": ["model.image_size=32", "model.dim=32", "model.vision_layers=1", "model.trunk_layers=1", "log_every=3",
                             "ckpt_every=6", "head.chunk=2", "head.hidden=32", "data.views=[corner]"],
        "pretrain": ["steps=6", "batch_size=8"], "finetune": ["steps=6", "batch_size=8"],
        "rollout": {"episodes": 2, "max_steps": 5, "videos": 0, "workers": 1},
        "out": str(tmp_path / "exp"), "results": str(tmp_path / "docs" / "results.md"), "figures": str(tmp_path / "docs" / "figures"),
    }
    path = tmp_path / "policy_toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path)]) == 0
    numbers = json.loads((tmp_path / "docs" / "results" / "policy_toy_cpu.json").read_text())
    runs = numbers["runs"]
    rows = ("scratch", "latent:recon", "shuffled:recon", "actions")
    assert sorted({(r["row"], r["seed"]) for r in runs}) == sorted((row, s) for row in rows for s in (0, 1))
    pre = {row: json.loads((tmp_path / "exp" / "policies" / f"pre-{row.replace(':', '-')}-s0" / "experiment_run.json").read_text())["config"]
           for row in ("latent:recon", "shuffled:recon")}
    assert pre["latent:recon"]["data"]["labels"] == pre["shuffled:recon"]["data"]["labels"]  # the same labels, only permuted
    assert (pre["latent:recon"]["data"]["shuffle_tokens"], pre["shuffled:recon"]["data"]["shuffle_tokens"]) == (False, True)
    # paired: every row of a seed finetunes on the same demo episodes and rolls out from the same starts
    for s in (0, 1):
        rs = [r for r in runs if r["seed"] == s]
        eps = {json.dumps(json.loads((Path(r["run"]) / "inputs.json").read_text())["episodes"]) for r in rs}
        assert len(eps) == 1 and len(json.loads(eps.pop())) == 2
        starts = {json.dumps(r["rollout"]["config"]) for r in rs}
        assert len(starts) == 1
    latent = next(r for r in runs if r["row"] == "latent:recon" and r["seed"] == 0)
    assert latent["pretrain"]["val"]["token_acc_majority"] >= 0 and Policy.from_pretrained(latent["run"]).spec.history[0]["target"] == "latent"
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "## experiment: policy_toy (cpu)" in text and "| latent:recon − scratch |" in text and "success.png" in text
    assert "| ceiling: the scripted expert |" in text and "| floor: uniform random actions |" in text
    assert numbers["references"]["expert"]["config"] == runs[0]["rollout"]["config"]  # the references play the same starts
    assert (tmp_path / "docs" / "figures" / "policy_toy" / "cpu" / "success.png").is_file()
    before = {p: p.stat().st_mtime for p in (tmp_path / "exp").rglob("model.safetensors")}
    assert main(["experiment", str(path)]) == 0  # resumable: every run, label and rollout is reused
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "exp").rglob("model.safetensors")}
    # a run recorded before a config field existed had its default in effect: still reused
    key_path = tmp_path / "exp" / "policies" / "ft-scratch-n2-s0" / "experiment_run.json"
    key = json.loads(key_path.read_text())
    del key["config"]["data"]["shuffle_tokens"]
    key_path.write_text(json.dumps(key))
    assert main(["experiment", str(path)]) == 0
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "exp").rglob("model.safetensors")}
    key_path.unlink()  # a finished run whose making is unknown is refused, not reused
    assert main(["experiment", str(path)]) == 2
