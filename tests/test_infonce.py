"""Held-out InfoNCE with a critic factorised over token positions: near the truth when one token
carries the action beside three uninformative ones (a critic over whole tuples memorised them and
read below 0 here); each action target counted once per batch (batches within a view)."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval import groundtruth as gt
from openlam.eval.infonce import InfoNCECritic


@pytest.fixture(scope="module")
def fitted():
    case = gt.informative_token()
    t = case.table
    tr, te = t.rows("train"), t.rows("test")
    critic = InfoNCECritic(t.tokens[tr], t.action[tr], t.episode[tr], t.view[tr], 8, steps=800, seed=0)
    return case, critic, te


def test_factorised_critic_recovers_an_informative_token_among_noise(fitted):
    case, critic, te = fitted
    t = case.table
    _, terms = critic.row_terms(t.tokens[te], t.action[te], t.view[te])
    assert 0.55 * case.truth <= terms.mean() <= case.truth + 0.1, (terms.mean(), case.truth)


def test_batches_never_mix_views(fitted):
    """View 1 an exact copy of view 0: per-view batches score the copy like the original; a batch
    mixing views would hold each target twice (an extra positive among the negatives)."""
    case, critic, te = fitted
    t = case.table
    one = te[t.view[te] == "cam0"]
    z2, a2 = np.concatenate([t.tokens[one]] * 2), np.concatenate([t.action[one]] * 2)
    v2 = np.repeat(np.array(["cam0", "copy"], dtype=object), len(one))
    idx, terms = critic.row_terms(z2, a2, v2, seed=0)
    _, single = critic.row_terms(t.tokens[one], t.action[one], t.view[one], seed=0)
    assert terms[v2[idx] == "cam0"].mean() == pytest.approx(single.mean(), abs=1e-9)
    assert terms.mean() == pytest.approx(single.mean(), abs=0.05)
