"""Held-out probes from latent actions to the action target over the gap.

NMSE = mean over action dims of MSE_d / Var_d, with Var_d the held-out variance: 1.0 means no better
than predicting the held-out mean. Probes are fit on train episodes only; the ridge penalty is
chosen by grouped (by episode) cross-validation inside the train split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def one_hot_tokens(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, K) codes -> (N, K * C) concatenated one-hot vectors."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1)
    N, K = tokens.shape
    out = np.zeros((N, K * codebook_size), np.float32)
    out[np.arange(N)[:, None], np.arange(K)[None] * codebook_size + tokens] = 1.0
    return out


def safe_std(x: np.ndarray) -> np.ndarray:
    """Column std for standardising, 1 where a column never varies in the fit data (a code never
    used in train must not turn into a 1e6-scaled feature on held-out rows)."""
    sd = np.asarray(x, np.float64).std(0)
    return np.where(sd > 1e-12, sd, 1.0)


def nmse(pred: np.ndarray, target: np.ndarray) -> float:
    var = target.var(0)
    var = np.where(var > 1e-12, var, 1.0)
    return float((((pred - target) ** 2).mean(0) / var).mean())


@dataclass
class Ridge:
    """Closed-form ridge regression on standardised features (the intercept is not penalised)."""

    lam: float
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    w: np.ndarray | None = None
    b: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self.mean, self.std = x.mean(0), x.std(0)
        self.std = np.where(self.std > 1e-12, self.std, 1.0)
        xs = (x - self.mean) / self.std
        ym = y.mean(0)
        a = xs.T @ xs + self.lam * len(xs) * np.eye(xs.shape[1])
        self.w = np.linalg.solve(a, xs.T @ (y - ym))
        self.b = ym
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.w is not None
        return ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.w + self.b


def fit_ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, lams: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 folds: int = 5) -> Ridge:
    """Pick the penalty by grouped K-fold CV (folds never split an episode), refit on all."""
    uniq = np.unique(groups)
    folds = min(folds, len(uniq))
    if folds < 2:
        return Ridge(lams[len(lams) // 2]).fit(x, y)
    rng = np.random.default_rng(0)
    fold_of = dict(zip(rng.permutation(uniq), np.arange(len(uniq)) % folds))
    f = np.array([fold_of[g] for g in groups])
    scores = []
    for lam in lams:
        errs = [nmse(Ridge(lam).fit(x[f != k], y[f != k]).predict(x[f == k]), y[f == k]) for k in range(folds) if (f == k).any()]
        scores.append(np.mean(errs))
    return Ridge(lams[int(np.argmin(scores))]).fit(x, y)


def mlp_probe(x_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, x_test: np.ndarray, hidden: int = 128,
              epochs: int = 200, seed: int = 0) -> np.ndarray:
    """Small MLP probe; early stopping on held-out train episodes (20% of them). Returns test predictions."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    val_eps = set(rng.choice(uniq, max(1, len(uniq) // 5), replace=False).tolist()) if len(uniq) > 1 else set()
    is_val = np.array([g in val_eps for g in groups])
    mu, sd = x_train.mean(0), safe_std(x_train)
    ym, ys = y_train.mean(0), safe_std(y_train)
    tx = lambda a: torch.as_tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
    xt, yt = tx(x_train[~is_val]), torch.as_tensor((y_train[~is_val] - ym) / ys, dtype=torch.float32)
    xv, yv = tx(x_train[is_val]), torch.as_tensor((y_train[is_val] - ym) / ys, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, y_train.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    best, best_state, bad = float("inf"), None, 0
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 256):
            j = perm[i : i + 256]
            loss = ((net(xt[j]) - yt[j]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if len(xv):
            with torch.no_grad():
                v = ((net(xv) - yv) ** 2).mean().item()
            if v < best - 1e-5:
                best, best_state, bad = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= 10:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    with torch.no_grad():
        return net(tx(x_test)).numpy() * ys + ym
