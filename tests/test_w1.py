"""One exact W1 (plugins/analyses/_w1.py) behind bound, distances (default and paper) and
per_type (default and paper): the call sites agree on the same inputs, every POT call uses
one iteration cap, and POT's default cap is shown to stop early where the shared one does not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mch.plugins.analyses import _w1, bound, distances, per_type


def _laws(n=70, m=55, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.4


def _every_call_site(X, Y):
    """W1(X, Y) through each place in the analyses that computes one."""
    Z = np.concatenate([X, Y])
    D = cdist(Z, Z)
    ia, ib = np.arange(len(X)), len(X) + np.arange(len(Y))
    d = X.shape[1]
    return {
        "bound": bound.exact_w1(X, Y),
        "distances (default)": distances.emd_w1(D, ia, ib),
        # the paper path's PCA keeps every dimension here: a rotation, so W1 is unchanged
        "distances (paper)": distances._ref_w1(X, Y, pca_dim=d, seed=0),
        "per_type (default)": per_type.matched_w1(
            np.concatenate([X[:50], Y[:50]]),
            {"all": np.arange(d)},
            np.array(["a"] * 50 + ["b"] * 50),
            k=d,
            per_class=50,
            reps=1,
            rng=np.random.default_rng(0),
            max_pairs=1,
        )["all"],
        "per_type (paper)": per_type._ref_w1(X, Y, pca_dim=d),
    }


def test_the_call_sites_agree_on_the_same_inputs():
    X, Y = _laws()
    got = _every_call_site(X, Y)
    ref = _w1.exact_w1(X, Y)
    assert got["bound"] == ref and got["distances (default)"] == ref and got["per_type (paper)"] == ref
    assert got["distances (paper)"] == pytest.approx(ref, rel=1e-12)
    # per_type's matched path takes 50 rows a class: the same W1 as the helper on those rows
    assert got["per_type (default)"] == pytest.approx(_w1.exact_w1(X[:50], Y[:50]), rel=1e-12)


def test_known_answer_a_translated_law_is_its_shift_away():
    X, _ = _laws()
    v = np.array([0.3, -1.2, 0.0, 0.5, 2.0])
    assert _w1.exact_w1(X, X + v) == pytest.approx(np.linalg.norm(v), rel=1e-9)


def test_every_call_site_uses_one_iteration_cap(monkeypatch):
    import ot

    caps = []
    real = ot.emd2

    def spy(a, b, M, *args, **kw):
        caps.append(kw.get("numItermax", "POT's default"))
        return real(a, b, M, *args, **kw)

    monkeypatch.setattr(ot, "emd2", spy)
    X, Y = _laws()
    sites = _every_call_site(X, Y)
    assert len(caps) >= len(sites)
    assert set(caps) == {_w1.NUM_ITER_MAX}, caps  # per_type and the paper path used POT's default before


@pytest.mark.slow
def test_pots_default_cap_stops_early_where_the_shared_cap_does_not():
    """2000 x 2000 points in 32 dimensions: POT's default numItermax (1e5) stops before the
    optimum (it warns) and returns a larger W1; the shared cap reaches it."""
    import ot

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(2000, 32)), rng.normal(size=(2000, 32)) + 0.3
    M = cdist(X, Y)
    u = np.ones(2000) / 2000
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        default = float(ot.emd2(u, u, M))
    assert any("numItermax" in str(w.message) for w in seen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "numItermax reached" warning
        shared = _w1.w1_from_cost(M)
    assert default > shared * (1 + 1e-4)
