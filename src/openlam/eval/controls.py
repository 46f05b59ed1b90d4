"""Controls that tell "the latent carries the action" apart from "the latent knows which episode,
task or moment it is". Scripted demonstrations are phase-locked (every episode of a task reaches,
grasps and lifts at similar times), so a latent that only tracks time-in-episode already predicts
the action on held-out episodes; a row-permutation null cannot see that.

- `phase_pairings`: the within-task, phase-matched permutation test. Each held-out episode's rows
  are paired with the action targets of an episode of the same task (a random permutation of the
  task's episodes that q never saw) at the same *relative phase*: frame t' = round(t (T' - 1) /
  (T - 1)), T and T' the two episodes' numbers of pairs. Task, phase and everything that
  identifies an episode survive; only the link between a latent and its own episode's action is
  cut. Partners come only from episodes outside q's training set: q has fit the training
  episodes' actions, so pairing with them would flatter the shuffled scores. A statistic that
  does no better on real pairs than on these pairings carries nothing detectable about the
  action beyond task and relative phase.
- `reference_tokens`: labellers whose content is known, scored by the same pipeline as the LAM:
  random tokens (the LAM's own token rows, permuted across rows: same marginals, no relation),
  episode identity (a random number per episode written in base C over the K positions; not the
  episode index, whose digits follow the task order of a generated dataset), task + relative
  phase (phase bin floor(C t / T)) and task + elapsed time (bin floor(C t / T_max), T_max the
  longest episode): what knowing only the task and the moment gives.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def _episode_layout(episode: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(length T_e per episode index, offset per episode, flat (offset + t) -> first row with (e, t))."""
    n_ep = int(episode.max()) + 1
    length = np.zeros(n_ep, np.int64)
    np.maximum.at(length, episode, frame + 1)
    offset = np.concatenate([[0], np.cumsum(length)[:-1]])
    flat = np.full(int(length.sum()), -1, np.int64)
    order = np.arange(len(episode))[::-1]  # the first row of each (e, t) is written last and wins
    flat[offset[episode[order]] + frame[order]] = order
    return length, offset, flat


@dataclass
class Pairings:
    """Pairings of a split's episodes with episodes of the same task (`partners[j, i]`: the row
    whose action target row i is paired with under pairing j)."""

    partners: np.ndarray  # (P, R) row indices; -1 for rows outside the test (`usable` False)
    usable: np.ndarray  # (R,) rows whose task has >= 2 episodes in the pool
    distinct: int  # S: how many distinct pairings exist
    exact: bool  # partners lists all S pairings (the real one among them) instead of sampling them


def phase_pairings(episode: np.ndarray, frame: np.ndarray, task: np.ndarray, rows: np.ndarray, pool: np.ndarray, draws: int,
                   seed: int = 0) -> Pairings:
    """Within-task, phase-matched pairings of the episodes of `rows` (indices into the table whose
    columns are given) with the episodes in `pool` (plus the split's own). Each pairing maps the
    split's episodes of a task one-to-one into that task's pool: a uniformly random permutation of
    the pool, so the real pairing is one of them (what makes the permutation p-value exact under
    exchangeability). With S <= draws distinct pairings all are listed, else `draws` are sampled."""
    length, offset, flat = _episode_layout(episode, frame)
    r_ep, r_fr = episode[rows], frame[rows]
    split_eps = np.unique(r_ep)
    task_of = {int(e): str(task[rows][np.nonzero(r_ep == e)[0][0]]) for e in split_eps}
    all_task = {}
    for e in np.unique(episode):
        all_task.setdefault(str(task[np.nonzero(episode == e)[0][0]]), set()).add(int(e))
    groups = []  # (split episodes of a task, its pool)
    for t in sorted(set(task_of.values())):
        mine = sorted(e for e in task_of if task_of[e] == t)
        pl = sorted(all_task[t] & (set(int(x) for x in pool) | set(mine)))
        if len(pl) >= 2:
            groups.append((mine, pl))
    usable_eps = [e for mine, _ in groups for e in mine]
    usable = np.isin(r_ep, usable_eps)
    distinct = 1
    for mine, pl in groups:
        distinct *= math.perm(len(pl), len(mine))
    if not groups:
        return Pairings(np.zeros((0, len(rows)), np.int64), usable, 0, True)
    if distinct <= draws:
        maps = [dict(zip([e for mine, _ in groups for e in mine], [x for part in combo for x in part]))
                for combo in itertools.product(*(itertools.permutations(pl, len(mine)) for mine, pl in groups))]
    else:
        rng = np.random.default_rng(seed)
        maps = []
        for _ in range(draws):
            m = {}
            for mine, pl in groups:
                m.update(zip(mine, rng.permutation(pl)[: len(mine)].tolist()))
            maps.append(m)
    out = np.full((len(maps), len(rows)), -1, np.int64)
    e_u, t_u = r_ep[usable], r_fr[usable]
    T = length[e_u]
    for j, m in enumerate(maps):
        p = np.array([m[int(e)] for e in e_u], np.int64)
        tp = np.rint(t_u * (length[p] - 1) / np.maximum(T - 1, 1)).astype(np.int64)
        out[j, usable] = flat[offset[p] + tp]
    if (out[:, usable] < 0).any():
        raise ValueError("phase_pairings: a partner frame has no labelled row (labels must cover every frame of an episode)")
    return Pairings(out, usable, int(distinct), distinct <= draws)


def phase_bins(episode: np.ndarray, frame: np.ndarray, bins: int) -> np.ndarray:
    """Phase of each row (t / T_e, T_e the episode's number of pairs) in `bins` equal bins."""
    length = _episode_layout(episode, frame)[0]
    return np.minimum(bins - 1, frame * bins // np.maximum(length[episode], 1)).astype(np.int64)


def _with_task(first: np.ndarray, task_idx: np.ndarray, K: int, C: int) -> np.ndarray:
    """(N, K) tokens: position 0 = `first` (C levels), position 1 = the task index mod C; with K = 1
    both share one code (C // tasks levels of `first` per task)."""
    out = np.zeros((len(first), K), np.int64)
    if K > 1:
        out[:, 0], out[:, 1] = first, task_idx % C
    else:
        per = max(1, C // (int(task_idx.max()) + 1))
        out[:, 0] = (task_idx * per + first * per // C) % C
    return out


def reference_tokens(tokens: np.ndarray, episode: np.ndarray, frame: np.ndarray, task: np.ndarray, codebook_size: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """(N, K) token arrays of the reference labellers, with the LAM's own budget of K x C."""
    N, K = tokens.shape
    C = codebook_size
    rng = np.random.default_rng(seed)
    # a random code per episode: episode indices run task by task, and their digits would name the task
    code = rng.permutation(int(episode.max()) + 1)[episode]
    ep_id = np.stack([(code // C**k) % C for k in range(K)], 1)
    task_idx = np.unique(task, return_inverse=True)[1].reshape(-1)
    elapsed = np.minimum(C - 1, frame * C // (int(frame.max()) + 1))
    return {"random": tokens[rng.permutation(N)], "episode_id": ep_id.astype(np.int64),
            "task_phase": _with_task(phase_bins(episode, frame, C), task_idx, K, C), "task_time": _with_task(elapsed, task_idx, K, C)}
