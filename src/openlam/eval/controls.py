"""Controls that tell "the latent carries the action" apart from "the latent knows which episode,
task or moment it is". Scripted demonstrations are phase-locked (every episode of a task reaches,
grasps and lifts at similar times), so a latent that only tracks time-in-episode already predicts
the action on held-out episodes; a row-permutation null cannot see that.

- `phase_partners`: the within-task, phase-matched shuffle. Each episode's rows are paired with
  the action targets of another episode of the same task at the same *phase*: frame
  t' = round(t (T' - 1) / (T - 1)), T and T' the two episodes' numbers of pairs. Task, phase and
  everything that identifies an episode survive; only the link between a latent and its own
  episode's action is cut. A statistic that does no better on real pairs than on these draws
  carries nothing about the action beyond task and phase.
- `reference_tokens`: labellers whose content is known, scored by the same pipeline as the LAM:
  random tokens (the LAM's own token rows, permuted across rows: same marginals, no relation),
  episode identity (a random number per episode written in base C over the K positions; not the
  episode index, whose digits follow the task order of a generated dataset), and task + phase
  (task index and phase bin).
"""

from __future__ import annotations

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


def phase_partners(episode: np.ndarray, frame: np.ndarray, task: np.ndarray, rows: np.ndarray, draws: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Partner rows for `draws` within-task phase-matched shuffles of `rows` (indices into the
    table whose columns are given). Partners come from any episode of the same task in the table
    other than the row's own. Returns (partner (draws, R) row indices, usable (R,) mask): rows whose
    task has a single episode cannot be shuffled and are marked unusable (partner -1)."""
    length, offset, flat = _episode_layout(episode, frame)
    pool: dict[str, np.ndarray] = {}
    for t in np.unique(task):
        pool[str(t)] = np.unique(episode[task == t])
    r_ep, r_fr = episode[rows], frame[rows]
    eps = np.unique(r_ep)
    ep_task = {int(e): str(task[rows][np.nonzero(r_ep == e)[0][0]]) for e in eps}
    usable_ep = {e for e in ep_task if len(pool[ep_task[e]]) >= 2}
    usable = np.isin(r_ep, list(usable_ep))
    rng = np.random.default_rng(seed)
    out = np.full((draws, len(rows)), -1, np.int64)
    ep_pos = np.searchsorted(eps, r_ep)
    for d in range(draws):
        partner = np.full(len(eps), -1, np.int64)
        for i, e in enumerate(eps):
            if int(e) in usable_ep:
                cand = pool[ep_task[int(e)]]
                cand = cand[cand != e]
                partner[i] = cand[rng.integers(len(cand))]
        p = partner[ep_pos]
        ok = usable & (p >= 0)
        T, Tp = length[r_ep[ok]], length[p[ok]]
        tp = np.rint(r_fr[ok] * (Tp - 1) / np.maximum(T - 1, 1)).astype(np.int64)
        out[d, ok] = flat[offset[p[ok]] + tp]
    if (out[:, usable] < 0).any():
        raise ValueError("phase_partners: a partner frame has no labelled row (labels must cover every frame of an episode)")
    return out, usable


def phase_bins(episode: np.ndarray, frame: np.ndarray, bins: int) -> np.ndarray:
    """Phase of each row (t / T_e, T_e the episode's number of pairs) in `bins` equal bins."""
    length = _episode_layout(episode, frame)[0]
    return np.minimum(bins - 1, frame * bins // np.maximum(length[episode], 1)).astype(np.int64)


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
    phase = phase_bins(episode, frame, C)
    tp = np.zeros((N, K), np.int64)
    tp[:, 0] = phase
    if K > 1:
        tp[:, 1] = task_idx % C
    return {"random": tokens[rng.permutation(N)], "episode_id": ep_id.astype(np.int64), "task_phase": tp}
