"""Per-type analysis: planted TA / MS class structure, the reference's script 06, the toy."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from mch.api import AnalysisSpec, Attribute, Sample
from mch.context import AnalysisContext
from mch.plugins.analyses.per_type import PerType

SPEC = AnalysisSpec(name="per_type", entry="mch.plugins.analyses.per_type:PerType")


pytestmark = pytest.mark.usefixtures("blas_one_thread")


def world(n=400, d=30, seed=0):
    """Modal: noise with a different variance in every dim (no degenerate eigenvalues), plus
    class means of attribute `said` along dims 0-1 and of `hidden` along dims 20-21. Text: the
    same law in dims 0-19 (the paired text carries `said`: text-aligned), nothing in dims
    20-29 (modality-specific)."""
    rng = np.random.default_rng(seed)
    said = rng.integers(0, 4, n)
    hidden = rng.integers(0, 4, n)
    centres = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float)
    spec = 0.3 + 0.5 * np.arange(d) / d
    X = rng.normal(size=(n, d)) * spec
    X[:, 0:2] += centres[said]
    X[:, 20:22] += 1.4 * centres[hidden]
    Y = np.zeros((n, d))
    Y[:, :20] = rng.normal(size=(n, 20)) * spec[:20]
    Y[:, 0:2] += centres[said]
    labels = {
        "said": np.array([f"s{i}" for i in said], dtype=object),
        "hidden": np.array([f"h{i}" for i in hidden], dtype=object),
    }
    return X.astype(np.float32), Y.astype(np.float32), labels


def context(X, Y, labels, protocol="default", **params):
    analysis = PerType(SPEC)
    attrs = {a: Attribute(a, sorted(set(v)), {c: [c] for c in set(v)}, "q", group_key="g") for a, v in labels.items()}
    samples = [Sample(sample_id=f"x{i}", text="", labels={}, groups={}) for i in range(len(X))]
    groups = {a: np.array([f"g{i // 2}" for i in range(len(X))], dtype=object) for a in labels}  # pairs of rows
    ctx = AnalysisContext(
        protocol=protocol,
        params={**analysis.default_params(protocol), **params},
        seed=0,
        stages=["adapter"],
        reps={"adapter": X},
        samples=samples,
        attributes=attrs,
        labels=labels,
        groups=groups,
        _text_reps=lambda: {"adapter": Y, "llm.final": Y},
    )
    return analysis, ctx


def metrics_of(out):
    return {(m.metric, m.attribute): m for m in out.metrics}


def test_planted_classes_land_in_the_planted_subspace():
    X, Y, labels = world()
    analysis, ctx = context(X, Y, labels, n_boot=100, w1_reps=4)
    m = metrics_of(analysis.run(ctx))
    assert m[("var_frac_MS", "hidden")].value > 0.95
    assert m[("var_frac_TA", "said")].value > 0.95
    assert m[("var_frac_MS", "hidden")].ci_low > 0.9 and m[("var_frac_TA", "said")].ci_low > 0.9
    assert m[("weighted_alpha", "hidden")].value < 0.1 < 1.0 < m[("weighted_alpha", "said")].value
    assert m[("W1_MS_matched", "hidden")].value > m[("W1_TA_matched", "hidden")].value
    assert m[("W1_TA_matched", "said")].value > m[("W1_MS_matched", "said")].value
    # the MS share of `hidden` is far outside its permutation null, that of `said` is not
    assert m[("var_frac_ms_p", "hidden")].value < 0.05 < 0.5 < m[("var_frac_ms_p", "said")].value
    assert all(
        mm.ci_low <= mm.value <= mm.ci_high
        for (name, _), mm in m.items()
        if name in ("var_frac_MS", "weighted_alpha") and mm.ci_low is not None
    )


def _reference_script06(X, Y, labels, attrs, seed=42, pca_dim=256, n_subsample=1000, thr=0.5):
    """Script 06 (Parts A and B) written out directly with d×d matrices and its RNG order."""
    import ot
    from scipy.spatial.distance import cdist
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)

    def w1(A, B, k):
        c = np.concatenate([A, B])
        k = min(k, c.shape[1], c.shape[0])
        if k < c.shape[1]:
            p = PCA(n_components=k, random_state=0).fit(c)
            A, B = p.transform(A), p.transform(B)
        return ot.emd2(np.ones(len(A)) / len(A), np.ones(len(B)) / len(B), cdist(A, B))

    def interclass(Z, lab, k):
        u = np.unique(lab)
        pairs = list(combinations(u, 2)) if len(u) <= 6 else None
        if pairs is None:
            allp = [(a, b) for i, a in enumerate(u) for b in u[i + 1 :]]
            pairs = [allp[i] for i in rng.choice(len(allp), size=min(20, len(allp)), replace=False)]
        vals = []
        for a, b in pairs:
            A, B = Z[lab == a], Z[lab == b]
            n = min(n_subsample // 2, len(A), len(B))
            A = A if len(A) <= n else A[rng.choice(len(A), n, replace=False)]
            B = B if len(B) <= n else B[rng.choice(len(B), n, replace=False)]
            vals.append(w1(A, B, k))
        return float(np.mean(vals))

    X = X.astype(np.float64)
    naive = {a: interclass(X, labels[a].astype(str), pca_dim) for a in attrs}
    Xc, Yc = X - X.mean(0), Y.astype(np.float64) - Y.astype(np.float64).mean(0)
    ev, V = np.linalg.eigh(Xc.T @ Xc / (len(X) - 1))
    idx = np.argsort(ev)[::-1]
    ev, V = ev[idx], V[:, idx]
    alpha = np.diag(V.T @ (Yc.T @ Yc / (len(Y) - 1)) @ V) / np.maximum(ev, 1e-10)
    ta, ms = alpha > thr, alpha <= thr
    out = {}
    for a in attrs:
        lab = labels[a].astype(str)
        mu = X.mean(0)
        SB = sum(
            (lab == c).sum() * np.outer(X[lab == c].mean(0) - mu, X[lab == c].mean(0) - mu) for c in np.unique(lab)
        )
        tr = np.trace(SB)
        c_k = np.diag(V.T @ SB @ V) / tr
        out[a] = {
            "var_frac_MS": np.trace(V[:, ms].T @ SB @ V[:, ms]) / tr,
            "var_frac_TA": np.trace(V[:, ta].T @ SB @ V[:, ta]) / tr,
            "weighted_alpha": float((c_k * alpha).sum()),
            "W1_TA_matched": interclass(X @ V[:, ta], lab, min(ms.sum(), pca_dim)),
            "W1_MS_matched": interclass(X @ V[:, ms], lab, min(ms.sum(), pca_dim)),
        }
    return naive, out


def test_paper_reproduces_script06():
    X, Y, labels = world(n=160, d=24, seed=1)
    labels["many"] = np.array([f"m{i % 8}" for i in range(len(X))], dtype=object)  # > 6 classes: random pairs
    analysis, ctx = context(X, Y, labels, protocol="paper", text_stage="adapter")
    out = analysis.run(ctx)
    m = metrics_of(out)
    naive, ref = _reference_script06(X, Y, labels, list(labels))
    for a in labels:
        assert m[("W1_tau", a)].value == pytest.approx(naive[a], rel=1e-9)
        for f, v in ref[a].items():
            assert m[(f, a)].value == pytest.approx(v, rel=1e-7, abs=1e-12), (a, f)
    assert {"alpha_threshold", "n_text_aligned_modes", "n_modality_specific_modes", "w1_target_dim"} <= set(out.summary)


def test_delta_tau_is_read_from_an_earlier_probe():
    from mch.api import AnalysisOutput, Metric

    X, Y, labels = world(n=200)
    analysis, ctx = context(X, Y, labels, n_boot=20, w1_reps=2)
    ctx.previous["probe"] = AnalysisOutput(
        metrics=[
            Metric("retention_ratio", 0.8, stage="encoder", attribute="hidden"),
            Metric("retention_ratio", 0.3, stage="llm.final", attribute="hidden"),
            Metric("delta_tau", 0.05, attribute="said"),
        ]
    )
    m = metrics_of(analysis.run(ctx))
    assert m[("delta_tau", "hidden")].value == pytest.approx(0.5)
    assert m[("delta_tau", "said")].value == pytest.approx(0.05)


def test_shuffled_labels_are_inside_their_null_in_90_percent_of_runs():
    """A label with no class signal (the planted `hidden` labels, shuffled afresh in each run):
    its MS share says nothing, and `var_frac_ms_p` must not call it (p >= 0.05 in >= 90% of
    runs); the real `hidden` labels are called (p < 0.05)."""
    X, Y, labels = world(n=240, d=24, seed=3)
    rng = np.random.default_rng(0)
    ps = []
    for r in range(25):
        lab = {"shuffled": rng.permutation(labels["hidden"]), "hidden": labels["hidden"]}
        analysis, ctx = context(X, Y, lab, n_boot=0, n_perm=100, w1_reps=1, max_pairs=1, attributes=["shuffled"])
        ctx.seed = r
        m = metrics_of(analysis.run(ctx))
        ps.append(m[("var_frac_ms_p", "shuffled")].value)
    assert np.mean(np.array(ps) >= 0.05) >= 0.9, ps
    analysis, ctx = context(X, Y, labels, n_boot=0, n_perm=100, w1_reps=1, attributes=["hidden"])
    assert metrics_of(analysis.run(ctx))[("var_frac_ms_p", "hidden")].value < 0.05


def test_on_the_toy_every_share_comes_with_its_null_and_the_run_s_split(tmp_path):
    """On the toy organism (the default split): each attribute's MS share with its permutation
    p-value, the record names the split (the same as `modes` in the same run), and says that
    the covariance split does not recover the toy's known truth (the decoder reads content,
    yet content comes out as MS as the hidden factors: see tests/test_toy_bench.py)."""
    from mch.runner import RunConfig, run_bench

    _, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["modes", "per_type"],
            limit=200,
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"per_type": {"n_boot": 50, "n_perm": 50, "w1_reps": 2}},
        )
    )
    recs = {r["analysis"]["name"]: r for _, r in written}
    rec = recs["per_type"]
    assert rec["summary"]["split"] == recs["modes"]["summary"]["split"]
    m = {(x["metric"], x["attribute"]): x for x in rec["metrics"]}
    for a in ("content", "speaker", "emotion"):
        p = m[("var_frac_ms_p", a)]["value"]
        assert 0 < p <= 1
        v = m[("var_frac_MS", a)]
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
    truth = rec["summary"]["known_truth"]
    assert truth["text_describable"] == ["content"] and truth["recovered"] is False


def test_cis_resample_the_declared_cluster_key_not_the_split_groups():
    """science.md §8: an attribute that declares a cluster key (here 8 speakers, while the
    split's groups are pairs of rows) gets CIs from resamples of the speakers: the same CIs as
    a run whose group key is the speaker, other CIs than resampling the pairs."""
    X, Y, labels = world(n=240, d=24, seed=1)
    spk = np.array([f"spk{i % 8}" for i in range(len(X))], dtype=object)

    def cis(cluster: bool, groups_are_speakers: bool):
        analysis, ctx = context(X, Y, labels, n_boot=60, n_perm=0, w1_reps=1, max_pairs=1)
        ctx.samples = [
            Sample(sample_id=s.sample_id, text="", labels={}, groups={"spk": spk[i]}) for i, s in enumerate(ctx.samples)
        ]
        if cluster:
            ctx.attributes = {
                a: Attribute(a, at.classes, at.verbalizers, "q", group_key="g", cluster_key="spk")
                for a, at in ctx.attributes.items()
            }
        if groups_are_speakers:
            ctx.groups = {a: spk for a in labels}
        m = metrics_of(analysis.run(ctx))
        return {k: (v.ci_low, v.ci_high, v.n_groups) for k, v in m.items() if k[0] == "var_frac_MS"}

    clustered, by_speaker, by_pair = cis(True, False), cis(False, True), cis(False, False)
    assert clustered == by_speaker
    for a in labels:
        assert clustered[("var_frac_MS", a)][2] == 8 and by_pair[("var_frac_MS", a)][2] == 120
        assert clustered[("var_frac_MS", a)][:2] != pytest.approx(by_pair[("var_frac_MS", a)][:2])
