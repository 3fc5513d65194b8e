"""The default TA/MS split (science.md §4, `_split`): its known answers, against a direct
implementation of its definition, and the defects of the in-sample raw-α split it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from mch.api import MchError
from mch.plugins.analyses._split import SPLIT_DEFAULTS, attribute_shares, covariance_split, functional_split

pytestmark = pytest.mark.usefixtures("blas_one_thread")

OLD_MODES_RULE = {"cross_fit": False, "split_rule": "tau", "alpha_scale": "none"}  # modes/per_type before
OLD_CAUSAL_RULE = {"cross_fit": False, "split_rule": "tau", "alpha_scale": "trace"}  # ablation/swap/gradient before


def identical(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def planted(n: int, d: int, c: float, seed: int, k_ms: int = 6, k_ta: int = 12):
    """MS: k_ms directions with modal variance 12..8 and no text variance; TA: k_ta directions
    with variance 3..0.5 in both laws (independent draws); isotropic noise (sd 0.05) in both;
    the whole text law scaled by c. Returns X, Y and the planted laws' square-root factors."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, k_ms + k_ta)))
    SM, ST = Q[:, :k_ms], Q[:, k_ms:]
    vm, vt = np.linspace(12, 8, k_ms), np.geomspace(3, 0.5, k_ta)

    def law():
        return (rng.normal(size=(n, k_ta)) * np.sqrt(vt)) @ ST.T + 0.05 * rng.normal(size=(n, d))

    X = law() + (rng.normal(size=(n, k_ms)) * np.sqrt(vm)) @ SM.T
    return X, c * law(), ST * np.sqrt(vt), SM * np.sqrt(vm)


def recovered(sp, X, F, which: str) -> float:
    """Share of the planted law F Fᵀ's variance inside the kept modes that lies in the modes
    labelled `which`, pooled over both directions."""
    num = den = 0.0
    for d in sp.directions:
        w = np.linalg.norm(F.T @ d.vectors(X), axis=0) ** 2  # u_kᵀ F Fᵀ u_k
        num += w[d.ta if which == "ta" else d.ms].sum()
        den += w.sum()
    return num / den


@pytest.mark.parametrize("n,d,seeds", [(200, 400, (0, 1)), (500, 1000, (0,))])
def test_identical_laws_leave_at_most_5_percent_of_the_variance_ms(n, d, seeds):
    for seed in seeds:
        X, Y = identical(n, d, seed)
        sp = covariance_split(X, Y, seed=seed)
        assert sp.pooled()["var_frac_MS_of_kept"] <= 0.05, seed
        # the defect it removes: in-sample eigenvalues inflated by selection, α biased low
        old = covariance_split(X, Y, OLD_MODES_RULE, seed=seed).pooled()["var_frac_MS_of_kept"]
        assert old > 0.6, old


@pytest.mark.parametrize("c", [0.1, 0.01])
@pytest.mark.parametrize("n,d", [(400, 60), (200, 400)])
def test_planted_ta_with_a_scaled_text_law_stays_ta_and_planted_ms_is_ms(n, d, c):
    X, Y, FT, FM = planted(n, d, c, seed=1)
    sp = covariance_split(X, Y, seed=1)
    assert recovered(sp, X, FT, "ta") >= 0.95
    assert recovered(sp, X, FM, "ms") >= 0.95
    assert sp.scale_ratio == pytest.approx(np.trace(np.cov(Y.T)) / np.trace(np.cov(X.T)), rel=1e-9)
    # the defect it removes: raw α carries the text law's scale, so nothing is TA
    old = covariance_split(X, Y, OLD_MODES_RULE, seed=1)
    assert recovered(old, X, FT, "ta") < 0.05


def test_planted_subspaces_at_the_unscaled_text_law():
    X, Y, FT, FM = planted(400, 60, 1.0, seed=2)
    sp = covariance_split(X, Y, seed=2)
    assert recovered(sp, X, FT, "ta") >= 0.95 and recovered(sp, X, FM, "ms") >= 0.95


def test_alpha_tilde_is_scale_free():
    X, Y, _, _ = planted(300, 40, 1.0, seed=3)
    a, b = covariance_split(X, Y, seed=3), covariance_split(X, 0.01 * Y, seed=3)
    for da, db in zip(a.directions, b.directions, strict=True):
        np.testing.assert_allclose(da.alpha, db.alpha, rtol=1e-8)
        np.testing.assert_array_equal(da.ms, db.ms)
    assert b.scale_ratio == pytest.approx(1e-4 * a.scale_ratio, rel=1e-9)


def direct_cross_fit(X, Y, fit, ev, rel_tol=1e-6):
    """The definition written out with d x d matrices: eigenvectors of the fit rows'
    covariance, λ_k, u_kᵀΣ_T u_k and both traces on the eval rows, α̃ = (t/trT)/(λ/trM)."""

    def cov(Z):
        Zc = Z - Z.mean(0)
        return Zc.T @ Zc / (len(Z) - 1)

    ev_f, V = np.linalg.eigh(cov(X[fit]))
    o = np.argsort(ev_f)[::-1]
    ev_f, V = ev_f[o], V[:, o]
    rank = min(len(fit) - 1, X.shape[1])
    keep = (ev_f > rel_tol * ev_f[0]) & (np.arange(len(ev_f)) < rank)
    V = V[:, keep]
    SM, ST = cov(X[ev]), cov(Y[ev])
    lam = np.einsum("dk,de,ek->k", V, SM, V)
    tv = np.einsum("dk,de,ek->k", V, ST, V)
    return V, lam, tv, (tv / np.trace(ST)) / (lam / np.trace(SM))


@pytest.mark.parametrize("n,d", [(80, 30), (60, 90)])  # the covariance path and the Gram path
def test_each_direction_matches_the_definition(n, d):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(n, d)) @ np.diag(np.linspace(3, 0.3, d)) + 5.0
    Y = 0.3 * rng.normal(size=(n, d)) @ np.diag(np.linspace(0.2, 2, d)) - 1.0
    codes = np.arange(n) // 2
    sp = covariance_split(X, Y, seed=5, codes=codes, n_boot=3)
    for dr in sp.directions:
        V, lam, tv, at = direct_cross_fit(X, Y, dr.fit, dr.eval)
        # bootstrap replicate 0: the eval rows repeated as often as their group was drawn
        from mch.plugins.analyses._stats import group_resamples, resample_seed

        w = group_resamples(n // 2, 3, resample_seed(5, "split", "bootstrap")).counts[0][codes[dr.eval]]
        rows = np.repeat(dr.eval, w)
        _, lam0, tv0, _ = direct_cross_fit(X, Y, dr.fit, rows)
        np.testing.assert_allclose(dr.boot["lam"][0], lam0, rtol=1e-7)
        np.testing.assert_allclose(dr.boot["tv"][0], tv0, rtol=1e-7)
        assert dr.boot["total"][0] == pytest.approx(np.trace(np.cov(X[rows].T)), rel=1e-9)
        assert dr.boot["text_total"][0] == pytest.approx(np.trace(np.cov(Y[rows].T)), rel=1e-9)
        assert dr.n_modes == V.shape[1]
        np.testing.assert_allclose(dr.lam, lam, rtol=1e-7)
        np.testing.assert_allclose(dr.tv, tv, rtol=1e-7)
        np.testing.assert_allclose(dr.alpha, at, rtol=1e-7)
        np.testing.assert_allclose(np.abs((dr.vectors(X) * V).sum(0)), 1.0, atol=1e-6)  # same modes, up to sign
    A, B = sp.directions[0].fit, sp.directions[0].eval
    assert set(A) | set(B) == set(range(n)) and not set(A) & set(B)
    assert np.array_equal(sp.directions[1].fit, B) and np.array_equal(sp.directions[1].eval, A)


@pytest.mark.parametrize("n,d,route", [(80, 30, "cov"), (60, 90, "gram"), (62, 31, "mixed")])
def test_coordinates_summed_in_row_blocks_give_the_definitions(n, d, route, monkeypatch):
    """The modes' coordinates are summed in blocks of ROWS rows and never held whole (issue
    17's memory): with blocks of 7 rows, λ, the text variance, the null's threshold, every
    bootstrap replicate and the kept coordinates equal their definitions on whole matrices,
    on both routes and on a split with one half on each (halves of 30 and 32 rows, d = 31)."""
    from mch.plugins.analyses import _split_basis
    from mch.plugins.analyses._stats import group_halves, group_resamples, resample_seed

    monkeypatch.setattr(_split_basis, "ROWS", 7)
    rng = np.random.default_rng(8)
    X = rng.normal(size=(n, d)) @ np.diag(np.linspace(3, 0.3, d)) + 5.0
    Y = 0.3 * rng.normal(size=(n, d)) @ np.diag(np.linspace(0.2, 2, d)) - 1.0
    codes = np.arange(n) // 2
    n_null, n_boot = 25, 4
    sp = covariance_split(X, Y, {"n_null": n_null}, seed=5, codes=codes, n_boot=n_boot, scores=True)
    assert {dr._basis[0] for dr in sp.directions} == {"cov": {"cov"}, "gram": {"gram"}, "mixed": {"cov", "gram"}}[route]
    counts = group_resamples(n // 2, n_boot, resample_seed(5, "split", "bootstrap")).counts
    for which, dr in enumerate(sp.directions):
        Xe, Ye = X[dr.eval], Y[dr.eval]
        U = dr.vectors(X)
        P, Q = (Xe - Xe.mean(0)) @ U, (Ye - Ye.mean(0)) @ U
        assert len(dr.eval) > 3 * 7  # several blocks
        np.testing.assert_allclose(dr.P, P, rtol=1e-9, atol=1e-12 * np.abs(P).max())
        np.testing.assert_allclose(dr.lam, P.var(0, ddof=1), rtol=1e-9)
        np.testing.assert_allclose(dr.tv, Q.var(0, ddof=1), rtol=1e-9)
        ecodes = np.unique(codes[dr.eval], return_inverse=True)[1]
        a_null = []
        for r in range(n_null):  # modal α̃ between the two quarters of one cut of the eval rows
            h1, h2 = group_halves(ecodes, resample_seed(5, "split", "null", which, r))
            t1, t2 = np.trace(np.cov(Xe[h1].T)), np.trace(np.cov(Xe[h2].T))
            a_null.append(P[h2].var(0, ddof=1) / P[h1].var(0, ddof=1) * (t1 / t2))
        np.testing.assert_allclose(dr.threshold, np.quantile(a_null, 0.05, axis=0), rtol=1e-9)
        for r in range(n_boot):  # replicate r: each eval row repeated as often as its group was drawn
            rows = np.repeat(np.arange(len(dr.eval)), counts[r][codes[dr.eval]])
            np.testing.assert_allclose(dr.boot["lam"][r], P[rows].var(0, ddof=1), rtol=1e-9)
            np.testing.assert_allclose(dr.boot["tv"][r], Q[rows].var(0, ddof=1), rtol=1e-9)


def test_null_threshold_is_a_low_quantile_of_modal_vs_modal_alpha_and_rules_differ():
    X, Y = identical(400, 50, 6)
    sp = covariance_split(X, Y, seed=6)
    thr = sp.primary.threshold
    assert np.all((thr > 0.5) & (thr < 1.0))  # below 1 by the null's spread, not by τ
    tau = covariance_split(X, Y, {"split_rule": "tau", "tau": 0.5}, seed=6)
    np.testing.assert_array_equal(tau.primary.threshold, 0.5)
    np.testing.assert_allclose(tau.primary.alpha, sp.primary.alpha)  # one α̃, two rules
    # conservative: the null's variances come from quarters, so few modes of one law fall below it
    fr = np.mean([covariance_split(*identical(400, 50, s), seed=s).pooled()["n_MS"] / 49 for s in range(4)])
    assert fr < 0.04


def test_group_halves_keep_groups_whole_and_record_names_the_split():
    X, Y = identical(120, 20, 7)
    codes = np.repeat(np.arange(30), 4)
    sp = covariance_split(X, Y, {"split_group_key": "speaker"}, seed=7, codes=codes, n_boot=50)
    A, B = sp.directions[0].fit, sp.directions[0].eval
    assert not set(codes[A]) & set(codes[B])
    rec = sp.record()
    for k, v in SPLIT_DEFAULTS.items():
        assert rec[k] == v or k == "split_group_key"
    assert rec["split_group_key"] == "speaker" and rec["n_groups"] == 30 and len(rec["directions"]) == 2
    boot = sp.pooled_boot()["var_frac_MS_of_kept"]
    assert boot.shape == (50,) and np.isfinite(boot).all()


def test_bad_split_params_are_one_clear_error():
    X, Y = identical(40, 10, 0)
    with pytest.raises(MchError, match="split_rule"):
        covariance_split(X, Y, {"split_rule": "median"})
    with pytest.raises(MchError, match="needs cross_fit"):
        covariance_split(X, Y, {"cross_fit": False})
    with pytest.raises(MchError, match="paired text"):
        covariance_split(X, Y[:30])
    with pytest.raises(MchError, match="at least 8 rows"):
        covariance_split(X[:6], Y[:6])


# --------------------------------------------------------------------------- per-attribute scatter


def labelled_world(n=400, d=30, seed=0):
    """Classes of `hidden` along two modal-only directions (MS); classes of `said` along two
    directions where the paired text carries the same classes (TA)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    hidden, said = rng.integers(0, 4, n), rng.integers(0, 4, n)
    centres = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float)
    spec = np.linspace(1.0, 0.3, d)
    X = rng.normal(size=(n, d)) * spec
    Y = rng.normal(size=(n, d)) * spec
    Y[:, :2] = 0.05 * rng.normal(size=(n, 2))  # no text variance along dims 0-1
    X[:, 0:2] += 2.0 * centres[hidden]
    X[:, 10:12] += 1.2 * centres[said]
    Y[:, 10:12] += 1.2 * centres[said]
    lab = {
        "hidden": np.array([f"h{i}" for i in hidden], dtype=object),
        "said": np.array([f"s{i}" for i in said], dtype=object),
    }
    return X @ Q.T, Y @ Q.T, lab


def test_shares_find_planted_classes_and_shuffled_labels_are_inside_their_null():
    X, Y, lab = labelled_world()
    sp = covariance_split(X, Y, seed=0, scores=True)
    h = attribute_shares(sp, lab["hidden"], None, n_perm=100, seed=0, names=("h",))
    s = attribute_shares(sp, lab["said"], None, n_perm=100, seed=0, names=("s",))
    assert h.var_frac_MS > 0.9 and h.p_value < 0.05
    assert s.var_frac_TA > 0.9 and s.p_value > 0.5
    # labels without signal: the noise correction removes the scatter's floor, the p-value is not small
    rng = np.random.default_rng(1)
    ps, floors, plug = [], [], []
    for r in range(30):
        sh = attribute_shares(sp, rng.permutation(lab["hidden"]), None, n_perm=100, seed=r, names=("shuffled",))
        ps.append(sh.p_value)
        floors.append(sh.signal_fraction)
        plug.append(sh.var_frac_MS_plugin)
    assert np.mean(np.array(ps) >= 0.05) >= 0.9
    assert abs(np.mean(floors)) < 0.15  # corrected scatter ≈ 0 when classes carry nothing
    assert np.mean(plug) > 0.05  # while the plug-in share is far from 0


def test_group_structure_is_kept_by_the_permutation_null():
    """A label constant within groups of 10 rows with a group effect in MS directions: the
    group-preserving null sees the group effect too; a row-level null would call it signal."""
    rng = np.random.default_rng(3)
    n, d, g = 400, 20, 40
    codes = np.repeat(np.arange(g), n // g)
    X = rng.normal(size=(n, d))
    X[:, 0] += 2.0 * rng.normal(size=g)[codes]  # group effect along a modal-only direction
    Y = rng.normal(size=(n, d))
    Y[:, 0] = 0.05 * rng.normal(size=n)
    labels = np.array([f"c{k}" for k in rng.integers(0, 2, g)[codes]], dtype=object)  # says nothing
    sp = covariance_split(X, Y, seed=3, scores=True)
    grouped = attribute_shares(sp, labels, codes.astype(str), n_perm=200, seed=0, names=("g",))
    rows = attribute_shares(sp, labels, None, n_perm=200, seed=0, names=("g",))
    assert grouped.p_value > 0.05 and rows.p_value < grouped.p_value


def test_functional_split_reads_the_directions_the_gradients_use():
    """Gradients along w only: the one read direction is Σ_M w (the natural variation that
    moves the log-likelihood), in whitened coordinates the top eigenvector of E[g gᵀ]."""
    rng = np.random.default_rng(0)
    n, d = 300, 12
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    S = np.cov(X.T)
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    w = rng.normal(size=d)
    G = rng.normal(size=(n, 1)) * w
    fs = functional_split(G, U, lam, mass=0.9)
    target = S @ w / np.linalg.norm(S @ w)
    assert fs.n_read == 1 and abs(abs(fs.read[:, 0] @ target) - 1) < 1e-9
    # two read directions with gradients 3:1 in whitened size: mass 0.5 keeps one, 0.95 both
    w2 = rng.normal(size=d)
    G2 = np.concatenate([G, 0.1 * rng.normal(size=(n, 1)) * w2])
    assert functional_split(G2, U, lam, mass=0.5).n_read == 1
    assert functional_split(G2, U, lam, mass=0.9999).n_read == 2


def test_the_five_analyses_of_a_run_share_one_split(tmp_path):
    """modes, per_type, ablation, swap and gradient on the toy in one run: one split record."""
    import torch

    from mch.runner import RunConfig, run_bench

    torch.set_num_threads(1)
    params = {
        "modes": {"n_boot": 20},
        "per_type": {"n_boot": 20, "n_perm": 20, "w1_reps": 1},
        "ablation": {"n_samples": 8, "n_boot": 50, "conditions": ["ms_all"]},
        "swap": {"n_samples": 8, "n_boot": 50},
        "gradient": {"n_samples": 8, "n_boot": 50},
    }
    _, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["modes", "per_type", "ablation", "swap", "gradient"],
            limit=120,
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params=params,
        )
    )
    splits = {rec["analysis"]["name"]: rec["summary"]["split"] for _, rec in written}
    assert len(splits) == 5
    first = splits["modes"]
    assert all(s == first for s in splits.values())
    assert first["split_rule"] == "null" and first["n_rows"] == 120 and first["stage"] == "adapter"
    # a different parameter is named, and gives another split record
    _, other = run_bench(
        RunConfig(
            model="toy",
            analyses=["modes"],
            limit=120,
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"modes": {"n_boot": 0, "split_rule": "tau"}},
        )
    )
    assert other[0][1]["summary"]["split"]["split_rule"] == "tau" and other[0][1]["summary"]["split"] != first


def test_functional_shares_resample_the_bootstrap_key_they_are_given():
    """science.md §8: with `boot_groups` (an attribute's cluster key) the replicates are those of
    resampling that key, whatever the split groups; n_groups counts its groups."""
    from mch.plugins.analyses._split import functional_shares

    rng = np.random.default_rng(1)
    n, d = 120, 6
    X = rng.normal(size=(n, d))
    lam, U = np.linalg.eigh(np.cov(X.T))
    fs = functional_split(rng.normal(size=(n, 1)) * rng.normal(size=d), U[:, ::-1], lam[::-1], mass=0.9)
    labels = np.array([f"c{v}" for v in rng.integers(0, 3, n)])
    X[:, 0] += labels == "c1"
    pairs, spk = np.arange(n) // 2, np.arange(n) % 6
    kw = dict(n_boot=40, seed=0, names=("adapter", "a"))
    clustered = functional_shares(fs, X, labels, pairs, boot_groups=spk, **kw)
    assert clustered["n_groups"] == 6
    np.testing.assert_array_equal(clustered["boot_unread"], functional_shares(fs, X, labels, spk, **kw)["boot_unread"])
    assert not np.allclose(clustered["boot_unread"], functional_shares(fs, X, labels, pairs, **kw)["boot_unread"])
