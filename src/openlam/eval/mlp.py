"""A small MLP fit for evaluation (regression probe or classifier q(A|Z)), with early stopping on
whole held-out *train* episodes: rows of one episode are near-copies of each other, so stopping on
a random row split would reward memorising episodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def validation_episodes(groups: np.ndarray, seed: int, share: float = 0.2) -> np.ndarray:
    """Mask of rows whose episode is among a seeded `share` of the episodes (at least one, never
    all). With a single episode the mask is empty."""
    uniq = np.unique(groups)
    if len(uniq) < 2:
        return np.zeros(len(groups), bool)
    rng = np.random.default_rng(seed)
    pick = rng.choice(uniq, max(1, min(len(uniq) - 1, round(share * len(uniq)))), replace=False)
    return np.isin(groups, pick)


def standardizer(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Standardise with the statistics of `x` (the fit data, never the scored data); a column
    constant there is left unscaled, so a code never used in training cannot become a 1e6 feature."""
    x = np.asarray(x, np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return lambda v: (np.asarray(v, np.float64) - mu) / sd


def fit_mlp(x: np.ndarray, y: np.ndarray, groups: np.ndarray, loss: str, out_dim: int, hidden: int = 128, epochs: int = 200,
            patience: int = 10, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """loss "mse": y (N, out_dim) floats, predictions in y's units. loss "ce": y (N,) class indices
    in [0, out_dim), predictions are log-probabilities (N, out_dim). Returns (predict, best
    validation loss per row; inf without a validation episode)."""
    import torch

    torch.manual_seed(seed)
    val = validation_episodes(groups, seed)
    scale = standardizer(x[~val] if (~val).any() else x)
    xt = torch.as_tensor(scale(x), dtype=torch.float32)
    if loss == "mse":
        ym, ys = y[~val].mean(0), y[~val].std(0)
        ys = np.where(ys > 1e-12, ys, 1.0)
        yt = torch.as_tensor((y - ym) / ys, dtype=torch.float32)
        crit = lambda out, tgt: ((out - tgt) ** 2).mean()  # noqa: E731
    elif loss == "ce":
        yt = torch.as_tensor(y, dtype=torch.long)
        crit = torch.nn.functional.cross_entropy
    else:
        raise ValueError(f"fit_mlp: loss must be 'mse' or 'ce', got {loss!r}")
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, out_dim))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    tr, va = np.nonzero(~val)[0], np.nonzero(val)[0]
    best, best_state, bad = float("inf"), None, 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), 256):
            j = perm[i : i + 256]
            step_loss = crit(net(xt[j]), yt[j])
            opt.zero_grad()
            step_loss.backward()
            opt.step()
        if not len(va):
            continue
        with torch.no_grad():
            v = crit(net(xt[va]), yt[va]).item()
        if v < best - 1e-5:
            best, best_state, bad = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()

    def predict(xn: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.as_tensor(scale(xn), dtype=torch.float32))
            if loss == "ce":
                return torch.log_softmax(out, 1).double().numpy()
            return out.double().numpy() * ys + ym

    return predict, best
