"""Stages 2 and 3 on the shared engine: `openlam pretrain` (latent tokens from `openlam label`, or
real actions as the upper bound, on many videos) and `openlam finetune` (real actions on a few demos,
from a pretrained policy or from scratch). Writes <out>/model (policy folder) and summary.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from openlam.artifacts import atomic_write_json, atomic_write_text
from openlam.config import dump_config, to_dict
from openlam.data.cache import FrameCache
from openlam.errors import ConfigError, DataError, OpenLAMError
from openlam.label import labelled_cache
from openlam.policy.config import PolicyDataConfig, PolicyTrainConfig
from openlam.policy.data import PolicyBatch, PolicyDataset, check_labels, instructions, split_episodes
from openlam.policy.model import ActionSpec, LatentSpec, Policy, PolicySpec, build_vocab
from openlam.train import distributed, engine
from openlam.train.engine import Hooks, Job

Stage = Literal["pretrain", "finetune"]


def train_policy(cfg: PolicyTrainConfig, stage: Stage, resume: bool = False) -> dict[str, Any]:
    info, device = distributed.init(cfg.device)
    try:
        result = _train(cfg, stage, resume, info, device, Path(cfg.out))
        distributed.finish()
        return result
    finally:
        distributed.shutdown()


def _data_cache(cfg: PolicyTrainConfig) -> FrameCache:
    return FrameCache(labelled_cache(cfg.data.labels) if cfg.data.labels is not None else cfg.data.cache)  # type: ignore[arg-type]


def build_policy(cfg: PolicyTrainConfig, cache: FrameCache, init: Policy | None) -> tuple[Policy, bool]:
    """The policy this run trains: the init's vision, instruction and trunk weights (or fresh ones)
    with the heads the target needs. Returns it and whether its action head came from the init
    (which already predicts these actions with the same head: action pretraining, then finetuning)."""
    eps, views = split_episodes(cache, cfg.data)
    tasks = instructions(cache, eps)
    latent = action = None
    if cfg.target == "latent":
        meta = json.loads((Path(cfg.data.labels) / "labels.json").read_text())  # type: ignore[arg-type]
        latent = LatentSpec(meta["num_tokens"], meta["codebook_size"])
    else:
        assert cache.action_space is not None
        action = ActionSpec(cfg.head, list(cache.action_space.names), (cache.state_dim or 0) if cfg.head.state else 0)
    if init is None:
        if cfg.head.perception and cfg.target == "actions":
            raise ConfigError("head.perception: the frozen perception encoder is a copy of a pretrained policy's vision encoder; "
                              "give init (a pretrained policy) or set head.perception=false")
        return Policy(PolicySpec(cfg.model, build_vocab(list(tasks.values())), tasks, views, latent, action)), False
    if init.spec.action is not None and action is not None and init.spec.action.names != action.names:
        raise ConfigError(f"init: its action head predicts {init.spec.action.names} but the data's actions are {action.names}")
    policy = init.with_heads(latent, action, tasks)
    policy.spec.views = views
    if action is not None and init.spec.action == action and init.action_head is not None:
        assert policy.action_head is not None
        policy.action_head.load_state_dict(init.action_head.state_dict())  # same head, same actions: keep it
        if cfg.head.state:
            policy.state_mean.copy_(init.state_mean)
            policy.state_std.copy_(init.state_std)
        return policy, True
    return policy, False


def inputs_fingerprint(cfg: PolicyTrainConfig) -> dict[str, str | None]:
    """What the run learns from, by content: the frames' source, the labels (their LAM and data),
    the initial policy's weights. A resume or a reused experiment run is checked against it."""
    from openlam.artifacts import fingerprint_files

    cache = _data_cache(cfg)
    labels = None
    if cfg.data.labels is not None:
        meta = json.loads((Path(cfg.data.labels) / "labels.json").read_text())
        labels = f"{meta.get('model_fingerprint')}/{meta.get('dataset_fingerprint')}/{meta.get('gap')}"
    init = None
    if cfg.init is not None:
        d = Path(cfg.init)
        d = d / "model" if (d / "model" / "model.safetensors").is_file() else d
        init = fingerprint_files([d / "model.safetensors"])
    return {"source": cache.meta["source_fingerprint"], "labels": labels, "init": init}


def check_policy_inputs(out: Path, now: dict[str, str | None]) -> None:
    path = out / "inputs.json"
    if not path.is_file():
        raise OpenLAMError(f"{path}: missing, so the run's inputs cannot be checked; resume needs the run's own record")
    was = json.loads(path.read_text()).get("fingerprints", {})
    changed = [k for k in now if was.get(k) != now[k]]
    if changed:
        raise DataError(path, "fingerprints", f"the inputs this run was trained on ({', '.join(changed)})",
                        "different data, labels or initial policy now; start a new run in another out")


def _dataset(cfg: PolicyTrainConfig, data: PolicyDataConfig, cache: FrameCache, policy: Policy) -> PolicyDataset:
    if cfg.target == "latent":
        return PolicyDataset.from_labels(data.labels, data, policy.encode_instructions, policy.spec.model.max_words)  # type: ignore[arg-type]
    return PolicyDataset.from_cache(cache, data, policy.encode_instructions, policy.spec.model.max_words, cfg.head.chunk, cfg.head.state)


class PolicyHooks(Hooks):
    def __init__(self, record: Callable[[], None]):
        self._record = record

    def record(self) -> None:
        self._record()


def _train(cfg: PolicyTrainConfig, stage: Stage, resume: bool, info: distributed.DistInfo, device: torch.device, out: Path) -> dict[str, Any]:
    if stage == "finetune" and cfg.target != "actions":
        raise ConfigError("openlam finetune trains on actions (target=actions, data.cache); latent targets are stage 2: openlam pretrain")
    if cfg.data.labels is not None:  # labels of another gap or LAM are refused before anything is built
        meta_path = Path(cfg.data.labels) / "labels.json"
        if not meta_path.is_file():
            raise DataError(meta_path, "(file)", "the labels.json of an `openlam label` output folder (data.labels)", "missing")
        check_labels(Path(cfg.data.labels), json.loads(meta_path.read_text()), cfg.expect_gap, cfg.expect_lam)
    ckpt = engine.begin(cfg, out, resume)
    if ckpt is not None:
        check_policy_inputs(out, inputs_fingerprint(cfg))
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    cache = _data_cache(cfg)
    init = Policy.from_pretrained(cfg.init) if cfg.init is not None else None
    policy, carried = build_policy(cfg, cache, init)
    if policy.spec.model.image_size != cache.size:
        raise ConfigError(f"{cache.path}: frames are {cache.size} px but the policy's image_size is {policy.spec.model.image_size}")
    train_ds = _dataset(cfg, cfg.data, cache, policy)
    if policy.action_head is not None and not carried:
        acts = torch.from_numpy(train_ds.action_rows())
        if cfg.head.kind == "bins":
            policy.action_head.fit_bins(acts)  # type: ignore[union-attr]
        else:
            policy.action_head.fit_stats(acts)  # type: ignore[union-attr]
        if cfg.head.state:
            st = torch.from_numpy(train_ds.state_rows())
            policy.state_mean.copy_(st.mean(0))
            policy.state_std.copy_(st.std(0).clamp_min(1e-3))
    policy = policy.to(device)

    def record() -> None:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        atomic_write_json(out / "inputs.json", {
            "stage": stage, "cache": str(cache.path.resolve()), "labels": str(Path(cfg.data.labels).resolve()) if cfg.data.labels else None,
            "views": train_ds.views, "episodes": train_ds.episodes, "rows": len(train_ds), "init": cfg.init,
            "fingerprints": inputs_fingerprint(cfg),
        })

    job = Job(policy, train_ds, {"model": policy}, workers=cfg.data.workers, hooks=PolicyHooks(record),
              find_unused_parameters=False)
    done, log = engine.run(cfg, job, info, device, out, ckpt)
    result: dict[str, Any] = dict(done)
    if info.main:
        val = PolicyDataConfig(**{**to_dict(cfg.data), "split": "val", "episodes_per_task": None})
        if "val" in cache.splits and cache.splits["val"]["episodes"]:
            result["val"] = evaluate(policy, _dataset(cfg, val, cache, policy), device)
        policy.spec.history.append({"stage": stage, "target": cfg.target, "steps": done["steps"], "init": cfg.init,
                                    "episodes": len(train_ds.episodes), "rows": len(train_ds)})
        policy.save_pretrained(out / "model")
        log.scalars(done["steps"], {f"val/{k}": float(v) for k, v in result.get("val", {}).items()})
        atomic_write_json(out / "summary.json", result)
    log.close()
    return result


@torch.no_grad()
def evaluate(policy: Policy, ds: PolicyDataset, device: torch.device, max_rows: int = 2048, batch: int = 256) -> dict[str, float]:
    """Held-out scores beside their floors. Latent: greedy token accuracy vs the most frequent token
    per position of the held-out rows. Actions: NMSE per dim of the predicted first action (MSE over
    the population variance: exactly 1 for predicting the held-out mean), averaged over the dims
    that vary there; the flow head's noise is one seeded stream over all rows."""
    was = policy.training
    gen = torch.Generator(device).manual_seed(0)
    policy.eval()
    idx = np.linspace(0, len(ds) - 1, min(len(ds), max_rows)).round().astype(int)
    out: dict[str, list[Any]] = {"pred": [], "true": []}
    for i in range(0, len(idx), batch):
        b: PolicyBatch = ds.__getitems__(idx[i : i + batch].tolist()).to(device)
        feats = policy.features(b.image, b.words)
        if b.tokens is not None:
            assert policy.latent_head is not None
            out["pred"].append(policy.latent_head.generate(feats).cpu())
            out["true"].append(b.tokens.cpu())
        else:
            assert policy.action_head is not None and b.actions is not None
            out["pred"].append(policy.action_head.act(policy.action_condition(feats, b.image, b.state), gen)[:, 0].cpu())
            out["true"].append(b.actions[:, 0].cpu())
    policy.train(was)
    pred, true = torch.cat(out["pred"]), torch.cat(out["true"])
    if pred.dtype == torch.long:
        majority = torch.stack([true[:, k].bincount().argmax() for k in range(true.shape[1])])
        return {"token_acc": float((pred == true).float().mean()), "token_acc_majority": float((true == majority).float().mean()),
                "sequence_acc": float((pred == true).all(1).float().mean())}
    var = true.var(0, unbiased=False)
    varies = var > 1e-8
    if not varies.any():
        raise DataError(ds.cache.path, "actions", "held-out actions that vary in at least one dim", "constant actions")
    nmse = torch.where(varies, ((pred - true) ** 2).mean(0) / var.clamp_min(1e-8), torch.nan)
    return {"action_nmse": float(nmse[varies].mean()), **{f"action_nmse_{k}": float(v) for k, v in enumerate(nmse)}}
