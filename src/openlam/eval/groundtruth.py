"""Labellings with a known I(Z; A), in the regime real latent tokens live in: many distinct token
tuples with 1-3 rows each, rows serially dependent within episodes, actions phase-locked across
scripted episodes, action dims on very different scales, an informative token beside
uninformative ones, every action target seen from several views. Used by the tests and by
`openlam audit` (docs/audit.md) to check that each estimator is what it claims to be.

Each case is an `EvalTable` (train/test split by episode), so the evaluation suite runs on it
unchanged, plus the true I(Z; A) of the tokens and of the continuous embedding in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from openlam.eval.table import EvalTable


@dataclass
class Case:
    name: str
    table: EvalTable
    truth: float  # I(tokens; action target), nats
    truth_continuous: float | None  # I(continuous embedding; action target), nats
    about: str


def _table(tokens: np.ndarray, z: np.ndarray, action: np.ndarray, E: int, T: int, V: int, task_of_episode: np.ndarray,
           test_episodes: int, codebook_size: int, seed: int) -> EvalTable:
    """Rows ordered (view, episode, frame); tokens/z (V, E, T, ...), action (E, T, A) shared by views."""
    ep = np.tile(np.repeat(np.arange(E), T), V)
    fr = np.tile(np.arange(T), E * V)
    view = np.repeat(np.array([f"cam{v}" for v in range(V)], dtype=object), E * T)
    rng = np.random.default_rng(seed + 7)
    test = rng.permutation(E)[:test_episodes]
    splits = {"train": ~np.isin(ep, test), "test": np.isin(ep, test)}
    tasks = np.array([f"task{t}" for t in task_of_episode], dtype=object)
    return EvalTable(ep, fr, view, np.ones(len(ep), np.int64), tokens.reshape(E * T * V, -1).astype(np.int64),
                     z.reshape(E * T * V, -1).astype(np.float32), np.tile(action.reshape(E * T, -1), (V, 1)).astype(np.float32),
                     tasks[ep], splits, {"cache": f"groundtruth:{seed}"}, codebook_size)


def ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary N(0, 1) AR(1) along axis 1 of (E, T, ...)."""
    x = np.empty(shape)
    x[:, 0] = rng.standard_normal((shape[0], *shape[2:]))
    for t in range(1, shape[1]):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal((shape[0], *shape[2:]))
    return x


def binned_gaussian_channel_mi(sigma: float, codes: int) -> float:
    """I(Z; S) for S ~ N(0, 1) and Z = the equiprobable bin (of `codes`) of S + sigma * noise."""
    edges = np.sqrt(1 + sigma**2) * norm.ppf(np.arange(1, codes) / codes)
    s = np.linspace(-9, 9, 20001)
    cdf = norm.cdf((edges[None, :] - s[:, None]) / sigma)
    p = np.diff(np.concatenate([np.zeros((len(s), 1)), cdf, np.ones((len(s), 1))], 1), axis=1)
    h_cond = -(p * np.log(np.maximum(p, 1e-300))).sum(1)
    return float(np.log(codes) - np.trapezoid(norm.pdf(s) * h_cond, s))


def gaussian_mixture_mi(means: np.ndarray, sigma: float) -> float:
    """I(Z; A) for Z uniform over len(means) symbols and A = means[Z] + sigma * noise (1-D)."""
    x = np.linspace(means.min() - 10 * sigma, means.max() + 10 * sigma, 40001)
    dens = norm.pdf((x[None] - means[:, None]) / sigma).mean(0) / sigma
    h_mix = -np.trapezoid(dens * np.log(np.maximum(dens, 1e-300)), x)
    return float(h_mix - 0.5 * np.log(2 * np.pi * np.e * sigma**2))


def quantised_ar(E: int = 40, T: int = 60, V: int = 2, test_episodes: int = 10, sigma: float = 0.7, seed: int = 0) -> Case:
    """4 action dims, each a stationary AR(1) (rho 0.9) on scales 0.01, 1, 30, 0.2; each view sees
    s + sigma * its own noise, quantised into 8 equiprobable codes per dim (4 tokens: 4,096 tuples,
    so most held-out tuples occur 1-3 times). Continuous embedding: the unquantised s + noise."""
    rng = np.random.default_rng(seed)
    s = ar1(rng, (E, T, 4), 0.9)
    zc = s[None] + sigma * rng.standard_normal((V, E, T, 4))
    edges = np.sqrt(1 + sigma**2) * norm.ppf(np.arange(1, 8) / 8)
    tokens = np.searchsorted(edges, zc)
    action = s * np.array([0.01, 1.0, 30.0, 0.2])
    return Case("quantised_ar", _table(tokens, zc, action, E, T, V, np.zeros(E, int), test_episodes, 8, seed),
                4 * binned_gaussian_channel_mi(sigma, 8), 4 * 0.5 * np.log(1 + 1 / sigma**2),
                "4 dims AR(1) on scales 0.01-30, 8 codes per dim, 2 views with their own noise: many tuples, serial dependence")


def informative_token(E: int = 40, T: int = 60, V: int = 2, test_episodes: int = 10, sep: float = 1.0, seed: int = 0) -> Case:
    """Token 0 is a sticky Markov chain over 8 codes (stays with prob. 0.8) and sets the action's
    first dim (sep * code + N(0, 1)); tokens 1-3 are uniform noise (uninformative, 512 extra
    tuples per code); the second action dim is noise on a 50x larger scale. Embedding: a fixed
    random vector per (position, code), so it carries exactly what the tokens carry."""
    rng = np.random.default_rng(seed)
    z0 = np.empty((E, T), np.int64)
    z0[:, 0] = rng.integers(0, 8, E)
    for t in range(1, T):
        z0[:, t] = np.where(rng.random(E) < 0.8, z0[:, t - 1], rng.integers(0, 8, E))
    tokens = np.concatenate([np.broadcast_to(z0[None, ..., None], (V, E, T, 1)), rng.integers(0, 8, (V, E, T, 3))], -1)
    action = np.stack([sep * z0 + rng.standard_normal((E, T)), 50 * rng.standard_normal((E, T))], -1)
    book = rng.standard_normal((4, 8, 3))
    z = np.concatenate([book[k][tokens[..., k]] for k in range(4)], -1) + 1e-3 * rng.standard_normal((V, E, T, 12))
    truth = gaussian_mixture_mi(sep * np.arange(8.0), 1.0)
    return Case("informative_token", _table(tokens, z, action, E, T, V, np.zeros(E, int), test_episodes, 8, seed), truth, truth,
                "token 0 (sticky over time) sets the action, tokens 1-3 are noise; a second action dim is noise on a 50x scale")


def _phase_curve(rng: np.random.Generator, tasks: int, dims: int) -> np.ndarray:
    """Smooth scripted motions: per task and dim a sum of 3 random sinusoids of the phase, on (tasks, 101, dims)."""
    ph = np.linspace(0, 1, 101)
    amp, freq, off = rng.standard_normal((3, tasks, 1, dims, 3))
    return (amp * np.sin(2 * np.pi * (np.abs(freq) + 0.5) * ph[None, :, None, None] + 3 * off)).sum(-1)


def _phase_locked_actions(rng: np.random.Generator, E: int, T: int, tasks: int, dims: int, noise: float, offset: float = 0.0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(task of each episode, the task's curve at every frame (E, T, dims), actions = curve + AR(1)
    noise + a constant per-episode offset of scale `offset`, which clusters an episode's targets)."""
    task = np.arange(E) % tasks
    curve = _phase_curve(rng, tasks, dims)[task][:, np.rint(np.arange(T) * 100 / (T - 1)).astype(int)]
    return task, curve, curve + noise * ar1(rng, (E, T, dims), 0.8) + offset * rng.standard_normal((E, 1, dims))


def episode_identity(E: int = 40, T: int = 60, V: int = 2, test_episodes: int = 10, seed: int = 0) -> Case:
    """One task, phase-locked actions (a smooth curve of the phase + AR noise), every episode the
    same length; tokens name the episode (index in base 8 over 2 positions) and nothing else, so
    the action's distribution is the same for every token value: I(Z; A) = 0 exactly."""
    rng = np.random.default_rng(seed)
    task, _, action = _phase_locked_actions(rng, E, T, 1, 3, 0.3)
    ep = np.arange(E)
    tokens = np.broadcast_to(np.stack([ep % 8, (ep // 8) % 8], -1)[None, :, None], (V, E, T, 2))
    z = np.broadcast_to(rng.standard_normal((E, 6))[None, :, None], (V, E, T, 6)) + 1e-3 * rng.standard_normal((V, E, T, 6))
    return Case("episode_identity", _table(tokens, z, action, E, T, V, task, test_episodes, 8, seed), 0.0, 0.0,
                "tokens name the episode; actions phase-locked across episodes of one task (true MI 0)")


def _mc_mi(log_joint_cond: np.ndarray, log_marg: np.ndarray) -> float:
    return float((log_joint_cond - log_marg).mean())


def phase_only(E: int = 48, T: int = 60, V: int = 2, tasks: int = 3, test_episodes: int = 12, noise: float = 0.3, seed: int = 0) -> Case:
    """3 tasks with phase-locked actions; tokens = (phase bin of 8, task): they predict the action
    on new episodes (true MI > 0) but carry nothing about *this* episode's action beyond task and
    phase, so the phase-matched shuffle must not reject. Truth by Monte Carlo with exact densities."""
    rng = np.random.default_rng(seed)
    task, curve, action = _phase_locked_actions(rng, E, T, tasks, 3, noise)
    ph = np.minimum(7, np.arange(T) * 8 // T)
    tokens = np.broadcast_to(np.stack([np.broadcast_to(ph, (E, T)), np.broadcast_to(task[:, None], (E, T))], -1)[None], (V, E, T, 2))
    z = tokens.astype(np.float64) + 1e-3 * rng.standard_normal(tokens.shape)
    # A | (task, t) ~ N(curve, noise^2 I) (the AR noise is stationary N(0, noise^2) per frame)
    means = np.stack([curve[np.nonzero(task == k)[0][0]] for k in range(tasks)])  # (tasks, T, 3)
    mrng = np.random.default_rng(seed + 1)
    n = 20000
    tt, ti = mrng.integers(0, tasks, n), mrng.integers(0, T, n)
    a = means[tt, ti] + noise * mrng.standard_normal((n, 3))
    logp = norm.logpdf((a[:, None, None] - means[None]) / noise).sum(-1) - 3 * np.log(noise)  # (n, tasks, T)
    lse = lambda x, ax: np.log(np.exp(x - x.max(ax, keepdims=True)).mean(ax)) + x.max(ax)  # noqa: E731
    log_marg = lse(logp.reshape(n, -1), 1)
    same = ph[None] == ph[ti][:, None]
    lp_task = logp[np.arange(n), tt]  # (n, T)
    log_cond = np.log((np.exp(lp_task - lp_task.max(1, keepdims=True)) * same).sum(1) / same.sum(1)) + lp_task.max(1)
    truth = _mc_mi(log_cond, log_marg)
    return Case("phase_only", _table(tokens, z, action, E, T, V, task, test_episodes, 8, seed), truth, truth,
                "tokens = (phase bin, task) with phase-locked actions: predictive, but nothing beyond task and phase")


def phase_locked_quantiser(E: int = 48, T: int = 60, V: int = 2, tasks: int = 3, test_episodes: int = 12, noise: float = 0.6,
                           offset: float = 0.5, seed: int = 0) -> Case:
    """The same phase-locked tasks with larger deviations, AR(1) within an episode plus a constant
    offset per episode (targets cluster by episode); tokens quantise each episode's own action (8
    equiprobable codes per dim, 3 tokens), so they carry the action beyond task and phase: the
    permutation test must reject. Z is a function of A, so I(Z; A) = H(Z), by Monte Carlo over a
    large sample of the same process."""
    rng = np.random.default_rng(seed)
    task, _, action = _phase_locked_actions(rng, E, T, tasks, 3, noise, offset)
    big = _phase_locked_actions(np.random.default_rng(seed), 2000, T, tasks, 3, noise, offset)[2].reshape(-1, 3)
    edges = [np.quantile(big[:, d], np.arange(1, 8) / 8) for d in range(3)]
    q = lambda a: np.stack([np.searchsorted(edges[d], a[..., d]) for d in range(3)], -1)  # noqa: E731
    tokens = np.broadcast_to(q(action)[None], (V, E, T, 3))
    zb = q(big)
    sym = np.unique(zb, axis=0, return_counts=True)[1]
    p = sym / sym.sum()
    truth = float(-(p * np.log(p)).sum())
    z = np.broadcast_to(action[None], (V, E, T, 3)) + 1e-3 * rng.standard_normal((V, E, T, 3))
    return Case("phase_locked_quantiser", _table(tokens, z, action, E, T, V, task, test_episodes, 8, seed), truth, None,
                "tokens quantise each episode's own phase-locked action (AR noise + per-episode offsets): information beyond task and phase")


CASES = {f.__name__: f for f in (quantised_ar, informative_token, episode_identity, phase_only, phase_locked_quantiser)}
