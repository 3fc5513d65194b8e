"""Mode alignment (`_linalg.modes` and the `modes` analysis): known answers and the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mch.plugins.analyses._linalg import bootstrap_counts, mode_summary, modes

pytestmark = pytest.mark.usefixtures("blas_one_thread")


def reference_loop(X, Y, eps=1e-10):
    """Script 07 written out as the reference did it: d×d covariances, a Python loop for α."""
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    cov_m = Xc.T @ Xc / (len(X) - 1)
    cov_t = Yc.T @ Yc / (len(Y) - 1)
    ev, V = np.linalg.eigh(cov_m)
    idx = np.argsort(ev)[::-1]
    ev, V = ev[idx], V[:, idx]
    alpha = np.array([V[:, k] @ cov_t @ V[:, k] / max(ev[k], eps) for k in range(len(ev))])
    return ev, V, alpha


def planted(n=400, d=40, k_ms=4, seed=0):
    """Modal = a text-like part + a planted part in a k_ms-dim subspace where the text law has
    no variance at all; text = the same text-like law."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    S, rest = Q[:, :k_ms], Q[:, k_ms:]
    shared = rng.normal(size=(n, d - k_ms)) @ rest.T
    X = shared + 3.0 * rng.normal(size=(n, k_ms)) @ S.T
    Y = rng.normal(size=(n, d - k_ms)) @ rest.T
    return X.astype(np.float32), Y.astype(np.float32), S


@pytest.mark.parametrize("n,d", [(90, 48), (30, 48)])
def test_paper_matches_the_reference_loop(n, d):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    Y = 0.5 * rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    ev, V, alpha = reference_loop(X, Y)
    m = modes(X, Y, protocol="paper")
    assert m.n_modes == d
    np.testing.assert_allclose(m.eigenvalues, ev, rtol=0, atol=1e-9 * ev[0])
    np.testing.assert_allclose(m.alpha, alpha, rtol=1e-6, atol=1e-9)
    s = mode_summary(m)
    assert s["n_alpha_gt_0.5"][0] == (alpha > 0.5).sum()
    if n < d:  # the reference's defect, kept under paper: every null mode lands in TA with a huge α
        assert (m.alpha[n:] > 1e3).all()
        assert s["n_alpha_gt_0.5"][0] >= d - n + 1


@pytest.mark.parametrize("n,d", [(200, 32), (25, 40)])
def test_default_keeps_only_non_null_modes_and_matches_eigh(n, d):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)).astype(np.float32)
    Y = (0.7 * rng.normal(size=(n, d))).astype(np.float32)
    ev, V, alpha = reference_loop(X.astype(np.float64), Y.astype(np.float64))
    m = modes(X, Y)
    assert m.n_modes <= min(n - 1, d) and m.rank == min(n - 1, d)
    k = m.n_modes
    np.testing.assert_allclose(m.eigenvalues, ev[:k], rtol=1e-8)
    np.testing.assert_allclose(m.alpha, alpha[:k], rtol=1e-6)
    # same directions up to sign
    np.testing.assert_allclose(np.abs((m.eigenvectors * V[:, :k]).sum(0)), 1, atol=1e-6)
    assert m.alpha.max() < 1e3  # no null mode with α ≈ text variance / 1e-10


def test_planted_subspace_without_text_variance_gets_alpha_zero():
    X, Y, S = planted()
    m = modes(X, Y, n_boot=200, seed=3)
    # the planted modes are the top ones (variance 9 vs 1) and lie in S
    top = m.eigenvectors[:, :4]
    assert np.linalg.norm(S.T @ top, axis=0).min() > 0.99
    assert m.alpha[:4].max() < 0.02
    assert (~m.ta[:4]).all()
    # the rest of the space carries the text law: α ≈ 1 there
    assert np.median(m.alpha[4:]) == pytest.approx(1.0, abs=0.3)
    s = mode_summary(m)
    v, lo, hi = s["n_alpha_lt_0.1"]
    assert v >= 4 and lo <= v <= hi
    v, lo, hi = s["var_frac_MS_of_kept"]
    assert lo <= v <= hi and v > (4 * 9) / (4 * 9 + 36) - 0.15


def test_bootstrap_is_paired_deterministic_and_covers_the_estimate():
    X, Y, _ = planted(n=150, d=20, seed=5)
    a = modes(X, Y, n_boot=100, seed=7)
    b = modes(X, Y, n_boot=100, seed=7)
    np.testing.assert_array_equal(a.boot["alpha"], b.boot["alpha"])
    lo, hi = np.percentile(a.boot["alpha"], [2.5, 97.5], axis=0)
    inside = (lo <= a.alpha) & (a.alpha <= hi)
    assert inside.mean() > 0.9
    # replicate 0 equals a direct computation on the resampled rows, basis held fixed
    c = bootstrap_counts(150, 100, 7)[0]
    idx = np.repeat(np.arange(150), c.astype(int))
    Xb, Yb = X[idx].astype(np.float64), Y[idx].astype(np.float64)
    PM, PT = (Xb - a.mean) @ a.eigenvectors, Yb @ a.eigenvectors
    np.testing.assert_allclose(a.boot["eigenvalues"][0], PM.var(0, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(a.boot["text_variance"][0], PT.var(0, ddof=1), rtol=1e-8)


def test_gram_and_covariance_paths_agree():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 60)) @ np.diag(np.linspace(2, 0.2, 60))
    Y = rng.normal(size=(60, 60))
    g = modes(X[:, :60], Y, n_boot=20, seed=1)  # N == d: Gram path
    c = modes(np.vstack([X, X[:1] + 1e-3]), np.vstack([Y, Y[:1]]), n_boot=0)  # N > d: covariance path
    k = min(g.n_modes, c.n_modes, 20)
    np.testing.assert_allclose(g.eigenvalues[:k], c.eigenvalues[:k], rtol=0.05)


def test_gram_path_with_and_without_eigenvectors_agrees():
    """With eigenvectors the text variances come from Y_c U, without them from Y_c X_cᵀ W:
    the same numbers, bootstrap replicates included."""
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(50, 80)) @ np.diag(np.linspace(3, 0.1, 80))).astype(np.float32)
    Y = rng.normal(size=(50, 80)).astype(np.float32)
    a = modes(X, Y, n_boot=30, seed=2, vectors=True)
    b = modes(X, Y, n_boot=30, seed=2, vectors=False)
    assert a.eigenvectors.shape == (80, a.n_modes) and b.eigenvectors is None
    np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-9)
    for key in ("eigenvalues", "text_variance", "alpha"):
        np.testing.assert_allclose(a.boot[key], b.boot[key], rtol=1e-8)


def test_alpha_scale_trace_rescales_every_alpha():
    X, Y, _ = planted(n=120, d=16)
    a = modes(X, 0.1 * Y)
    b = modes(X, 0.1 * Y, alpha_scale="trace")
    np.testing.assert_allclose(b.alpha, a.alpha * a.total_variance / a.text_total_variance)


def test_width_mismatch_is_one_clear_error():
    from mch.api import MchError

    with pytest.raises(MchError, match="differ in width"):
        modes(np.zeros((10, 4)), np.zeros((10, 5)))


# --------------------------------------------------------------------------- on the toy organism


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    return tmp_path_factory.mktemp("modes_store")


def _bench(store: Path, out: Path, protocol: str, analyses, **params):
    from mch.runner import RunConfig, run_bench

    _, written = run_bench(
        RunConfig(model="toy", analyses=analyses, limit=120, protocol=protocol, store=store, out_dir=out, params=params)
    )
    return {rec["analysis"]["name"]: rec for _, rec in written}


def test_modes_on_the_toy_default(toy_store, tmp_path):
    rec = _bench(toy_store, tmp_path, "default", ["modes"], modes={"n_boot": 50})["modes"]
    m = {x["metric"]: x for x in rec["metrics"]}
    s = rec["summary"]
    assert rec["protocol"] == "default" and s["text_stage"] == "adapter"
    # the toy's adapter is a 32 -> 64 linear map: 32 null modes, all filtered
    assert m["n_modes_kept"]["value"] <= 32 and m["rank"]["value"] <= 32
    for name in ("var_frac_MS_of_kept", "var_frac_TA_of_trace", "text_var_frac_TA"):
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"]
    assert m["n_TA"]["value"] + m["n_MS"]["value"] == m["n_modes_kept"]["value"]
    split = s["split"]
    assert split["name"] == "covariance" and split["split_rule"] == "null" and split["cross_fit"] is True
    assert split["alpha_scale"] == "trace" and len(split["directions"]) == 2 and split["n_rows"] == 120
    assert m["scale_ratio"]["value"] == pytest.approx(split["scale_ratio"], rel=1e-9)
    assert m["scale_ratio"]["value"] < 0.05  # pooled text embeddings: a small fraction of the adapter's variance
    assert all(r["TA"] == (r["alignment_score"] >= r["threshold"]) for r in s["modes"])


def test_modes_on_the_toy_paper_keeps_the_reference_fields(toy_store, tmp_path):
    rec = _bench(toy_store, tmp_path, "paper", ["modes"])["modes"]
    names = {x["metric"] for x in rec["metrics"]}
    assert {
        "total_modes",
        "n_alpha_gt_0.5",
        "n_alpha_lt_0.1",
        "n_alpha_near_1",
        "mean_alpha_top10",
        "mean_alpha_top50",
        "mean_alpha_all",
    } <= names
    s = rec["summary"]
    assert s["summary"]["total_modes"] == 64 and s["text_stage"] == "llm.final"
    assert set(s["results"][0]) == {"mode_index", "eigenvalue", "alignment_score", "cumulative_variance_explained"}
    assert s["summary"]["mean_alpha_all"] > 1e3  # the null modes' α, as the reference computes it


def test_unknown_param_is_refused(toy_store, tmp_path):
    from mch.api import MchError

    with pytest.raises(MchError, match="no parameter 'n_bootstrap'"):
        _bench(toy_store, tmp_path, "default", ["modes"], modes={"n_bootstrap": 5})
