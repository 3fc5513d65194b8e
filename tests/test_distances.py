"""Distances between modal and text laws: known answers, the reference's script 05, the toy."""

from __future__ import annotations

import numpy as np
import pytest

from mch.plugins.analyses.distances import (
    compare,
    linear_cka,
    mmd2_many,
    paper_hook,
    pooled_gram,
    sliced_w1_many,
    sq_dists_from_gram,
)

SMALL = dict(n_perm=100, n_boot=100, w1_max_n=120, w1_n_perm=30, w1_n_boot=30, n_directions=64)


pytestmark = pytest.mark.usefixtures("blas_one_thread")


def test_two_samples_of_one_law_are_not_told_apart():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(240, 16)), rng.normal(size=(240, 16))
    r = compare(X, Y, paired=True, seed=1, **SMALL)
    for name in ("MMD2", "W1", "sliced_W1"):
        assert r[name]["p_value"] > 0.05, name
    assert r["MMD2"]["ci_low"] <= 0 <= r["MMD2"]["ci_high"]
    for name in ("W1", "sliced_W1"):  # biased above 0 at finite n: the excess over the null is what is ~0
        nm = r[name]["null_mean"]
        assert r[name]["ci_low"] - nm <= 0 <= r[name]["ci_high"] - nm, name


def test_a_shifted_law_is_told_apart():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(240, 16)), rng.normal(size=(240, 16)) + 0.4
    r = compare(X, Y, paired=True, seed=1, **SMALL)
    for name in ("MMD2", "W1", "sliced_W1"):
        assert r[name]["p_value"] <= 0.05, name
    assert r["MMD2"]["ci_low"] > 0
    assert r["W1"]["value"] > r["W1"]["null_mean"]


def test_cka_known_answers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    assert linear_cka(X, X) == pytest.approx(1.0)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert linear_cka(X, 5.0 * X @ Q + 2.0) == pytest.approx(1.0)  # rotation, scale, shift
    assert abs(linear_cka(X, rng.normal(size=(2000, 3)))) < 0.01  # independent
    # paired: the pairing carries the dependence, and the permutation null knows it
    Y = X @ Q + 0.5 * rng.normal(size=(2000, 3))
    r = compare(X[:200], Y[:200], paired=True, seed=0, metrics=("CKA",), n_perm=100, n_boot=50)
    assert r["CKA"]["p_value"] < 0.05 and r["CKA"]["value"] > 0.5
    r = compare(X[:200], rng.normal(size=(200, 3)), paired=True, seed=0, metrics=("CKA",), n_perm=100, n_boot=50)
    assert r["CKA"]["p_value"] > 0.05


def test_mmd_and_sliced_w1_match_direct_formulas():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(30, 5)), rng.normal(size=(20, 5)) + 0.3
    D2 = sq_dists_from_gram(pooled_gram(X, Y))
    K = np.exp(-D2 / 2.0)
    kxx, kyy, kxy = K[:30, :30], K[30:, 30:], K[:30, 30:]
    direct = (kxx.sum() - 30) / (30 * 29) + (kyy.sum() - 20) / (20 * 19) - 2 * kxy.mean()
    a = np.r_[np.ones(30), np.zeros(20)][None]
    assert mmd2_many(K, a, 1 - a)[0] == pytest.approx(direct, rel=1e-10)
    u = rng.normal(size=(5, 1))
    u /= np.linalg.norm(u)
    proj = np.vstack([X, Y]) @ u
    sw = sliced_w1_many(proj, a / 30, (1 - a) / 20)[0]
    assert sw == pytest.approx(wasserstein_distance((X @ u)[:, 0], (Y @ u)[:, 0]), rel=1e-10)


def _reference_script05(Xm, Xt, seed, n_subsample, pca_dim, n_bootstrap):
    """Script 05's steps written out directly (cdist per replicate, PCA per replicate)."""
    import ot
    from scipy.spatial.distance import cdist
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)

    def sub(X, n):
        return X if len(X) <= n else X[rng.choice(len(X), size=n, replace=False)]

    def mmd(X, Y, s2):
        kxx, kyy = np.exp(-cdist(X, X, "sqeuclidean") / (2 * s2)), np.exp(-cdist(Y, Y, "sqeuclidean") / (2 * s2))
        kxy = np.exp(-cdist(X, Y, "sqeuclidean") / (2 * s2))
        np.fill_diagonal(kxx, 0)
        np.fill_diagonal(kyy, 0)
        n, m = len(X), len(Y)
        return kxx.sum() / (n * (n - 1)) + kyy.sum() / (m * (m - 1)) - 2 * kxy.sum() / (n * m)

    def w1(X, Y):
        c = np.concatenate([X, Y])
        p = PCA(n_components=min(pca_dim, c.shape[1], c.shape[0]), random_state=seed).fit(c)
        return ot.emd2(
            np.ones(len(X)) / len(X), np.ones(len(Y)) / len(Y), cdist(p.transform(X), p.transform(Y), "euclidean")
        )

    Xs, Ys = sub(Xm, n_subsample), sub(Xt, n_subsample)
    c = np.concatenate([Xs[:500], Ys[:500]])
    dd = cdist(c, c, "sqeuclidean")
    s2 = np.median(dd[np.triu_indices_from(dd, 1)])
    out = {"MMD2": mmd(Xs, Ys, s2)}
    bx = [rng.choice(len(Xs), len(Xs), replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(len(Ys), len(Ys), replace=True) for _ in range(n_bootstrap)]
    out["MMD2_boot"] = [mmd(Xs[bx[i]], Ys[by[i]], s2) for i in range(n_bootstrap)]
    n = min(len(Xm), len(Xt), n_subsample)
    out["CKA"] = linear_cka(sub(Xm, n), sub(Xt, n))
    Xw, Yw = sub(Xm, n_subsample), sub(Xt, n_subsample)
    out["W1"] = w1(Xw, Yw)
    bx = [rng.choice(len(Xw), len(Xw), replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(len(Yw), len(Yw), replace=True) for _ in range(n_bootstrap)]
    out["W1_boot"] = [w1(Xw[bx[i]], Yw[by[i]]) for i in range(n_bootstrap)]
    return out


def test_paper_hook_reproduces_script05():
    rng = np.random.default_rng(4)
    Xm, Xt = rng.normal(size=(70, 6)), rng.normal(size=(64, 6)) + 0.2
    rows = {r["metric"]: r for r in paper_hook(Xm, Xt, np.random.default_rng(42), 50, 4, 6, 42)}
    ref = _reference_script05(Xm, Xt, 42, 50, 4, 6)
    assert rows["MMD2"]["value"] == ref["MMD2"]  # bit for bit
    assert rows["MMD2"]["ci_lower"] == np.percentile(ref["MMD2_boot"], 2.5)
    assert rows["CKA"]["value"] == pytest.approx(ref["CKA"], rel=1e-12)
    assert rows["W1"]["value"] == pytest.approx(ref["W1"], rel=1e-9)
    assert rows["W1"]["ci_upper"] == pytest.approx(np.percentile(ref["W1_boot"], 97.5), rel=1e-9)
    # the reference's with-replacement bootstrap: its CI for two samples of one law excludes 0
    same = paper_hook(Xm, rng.normal(size=(64, 6)), np.random.default_rng(42), 50, 4, 40, 42)[0]
    assert same["ci_lower"] > 0


def test_distances_on_the_toy(tmp_path):
    from mch.runner import RunConfig, run_bench

    small = {
        "max_n": 100,
        "n_perm": 50,
        "n_boot": 50,
        "w1_max_n": 60,
        "w1_n_perm": 10,
        "w1_n_boot": 10,
        "n_directions": 32,
    }
    _, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["distances"],
            limit=100,
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"distances": small},
        )
    )
    rec = written[0][1]
    got = {(m["metric"], m["stage"]): m for m in rec["metrics"]}
    assert rec["summary"]["stages"] == ["adapter", "llm.2", "llm.final"]
    # the decoder input of the modality and of its own caption are different laws
    assert got[("MMD2", "adapter")]["ci_low"] > 0
    assert got[("MMD2_p_value", "adapter")]["value"] < 0.05
    assert got[("W1_excess", "adapter")]["ci_low"] > 0
    assert 0 < got[("CKA", "adapter")]["value"] < 1
    _, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["distances"],
            limit=100,
            protocol="paper",
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"distances": {"n_bootstrap": 5, "n_subsample": 80}},
        )
    )
    rec = written[0][1]
    rows = rec["summary"]["rows"]
    assert [r["hook_point"] for r in rows] == ["llm_final"] * 3 + ["encoder_output<->adapter_output"]
    assert [r["metric"] for r in rows] == ["MMD2", "CKA", "W1", "CKA_cross_stage"]


def test_paper_protocol_converts_only_the_rows_it_samples_with_the_reference_s_numbers(tmp_path):
    """The paper path drops all-zero rows and converts to float64 only the rows a subsample
    takes (large N): the same rows and values as the reference's eager copy, so the same
    numbers, whether the stage is sampled (N > n_subsample) or taken whole."""
    from mch.plugins.analyses.distances import NonzeroRows

    rng = np.random.default_rng(7)
    for n, n_sub in ((1300, 200), (90, 200)):
        X = rng.normal(size=(n, 6)).astype(np.float32)
        Y = (rng.normal(size=(n, 6)) + 0.3).astype(np.float32)
        X[rng.choice(n, n // 10, replace=False)] = 0  # the reference drops all-zero rows
        Y[::7] = 0
        for name, A in (("x", X), ("y", Y)):
            np.save(tmp_path / f"{name}.npy", A)
        Xm, Ym = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")

        def eager(A):
            A = np.asarray(A)
            return A[np.any(A != 0, axis=1)].astype(np.float64)

        lazy = paper_hook(NonzeroRows(Xm), NonzeroRows(Ym), np.random.default_rng(42), n_sub, 4, 5, 42)
        ref = paper_hook(eager(X), eager(Y), np.random.default_rng(42), n_sub, 4, 5, 42)
        assert lazy == ref
        assert len(NonzeroRows(Xm)) == len(eager(X))


def test_compare_frees_each_metrics_state_before_the_next(monkeypatch):
    """Issue 17 (distances at N = 2620 was 2.1x the vectors read): MMD's (P, n) replicate masks,
    CKA's centred grams and the pooled Gram are dropped once their metric is done, and sliced
    W1 weighs its masks in place. At sliced W1's first call only its own mask pair (and small
    arrays) may be alive: before, MMD's last masks or their weighted copies and the Gram were
    too (2.4x one pair here)."""
    import tracemalloc

    from mch.plugins.analyses import _distances as D

    rng = np.random.default_rng(0)
    n, d, P = 300, 64, 2000
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = (X + rng.standard_normal((n, d))).astype(np.float32)
    alive: list[int] = []
    real = D.sliced_w1_many

    def spy(*a, **k):
        alive.append(tracemalloc.get_traced_memory()[0])
        return real(*a, **k)

    D.compare(X[:20], Y[:20], paired=True, seed=0, n_perm=5, n_boot=5, w1_max_n=10, w1_n_perm=2, w1_n_boot=2, pca_dim=4)
    monkeypatch.setattr(D, "sliced_w1_many", spy)  # (after a first call: its imports are not the compare's memory)
    tracemalloc.start()
    try:
        D.compare(X, Y, paired=True, seed=0, n_perm=P, n_boot=P, w1_max_n=100, w1_n_perm=5, w1_n_boot=5, pca_dim=16)
    finally:
        tracemalloc.stop()
    pair = 2 * P * (2 * n) * 8  # one (P, 2n) float64 mask pair
    assert len(alive) == 3 and alive[1] < 1.3 * pair, (alive[1] / pair, alive)
