"""The run's shared resamples (science.md §8): one set of group draws per attribute, the same
in every analysis and row subset, so that ratios and paired changes take their CIs replicate
by replicate; weighted scores; TOST; the causal tests' group bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from mch.api import AnalysisOutput, AnalysisSpec, Attribute, Metric, Sample
from mch.context import AnalysisContext
from mch.plugins.analyses import _causal as C, probe as P
from mch.plugins.analyses._stats import (
    RowGroups,
    attribute_groups,
    confusion,
    percentile_ci,
    run_groups,
    scores_from_confusion,
    tost,
    weighted_means,
    weighted_scores,
)

pytestmark = pytest.mark.usefixtures("blas_one_thread")


def ctx_for(
    labels: dict,
    groups: dict,
    sample_groups: list[dict] | None = None,
    cluster: dict | None = None,
    protocol: str = "default",
    reps=None,
    seed: int = 0,
    params=None,
) -> AnalysisContext:
    n = len(next(iter(labels.values())))
    attrs = {
        a: Attribute(
            a,
            sorted({str(v) for v in lab}),
            {c: [c] for c in sorted({str(v) for v in lab})},
            "q",
            group_key="g",
            cluster_key=(cluster or {}).get(a),
        )
        for a, lab in labels.items()
    }
    samples = [Sample(sample_id=f"s{i}", text="", labels={}, groups=(sample_groups or [{}] * n)[i]) for i in range(n)]
    return AnalysisContext(
        protocol=protocol,
        params=params or {},
        seed=seed,
        stages=list(reps or {}),
        reps=reps or {},
        samples=samples,
        attributes=attrs,
        labels={a: np.asarray(v, dtype=object) for a, v in labels.items()},
        groups={a: np.asarray(v, dtype=object) for a, v in groups.items()},
    )


def test_attribute_groups_code_the_whole_run_so_subsets_share_draws():
    g = np.array(["a", "b", "a", "c", "b", "c", "d"])
    ctx = ctx_for({"emo": np.array(["x", "y"] * 3 + ["x"])}, {"emo": g})
    rg = attribute_groups(ctx, "emo")
    assert rg.n_total == 4 and rg.key == "g"
    sub = rg.subset(np.array([1, 3, 4]))
    assert sub.n_groups == 2 and sub.n_total == 4
    # a row's weight is its group's count in the same draws, whatever subset it is in
    np.testing.assert_array_equal(sub.weights(50), rg.weights(50)[:, [1, 3, 4]])
    # the first B draws are the same for any n_boot >= B
    np.testing.assert_array_equal(rg.resamples(30).counts, rg.resamples(80).counts[:30])
    # another attribute draws differently; another seed too
    ctx2 = ctx_for({"spk": g}, {"spk": g})
    assert not np.array_equal(attribute_groups(ctx2, "spk").resamples(20).counts, rg.resamples(20).counts)


def test_a_declared_cluster_key_is_resampled_instead_of_the_group_key():
    sg = [{"g": f"row{i}", "speaker": f"s{i % 3}"} for i in range(9)]
    ctx = ctx_for(
        {"emo": np.array(["x", "y", "z"] * 3)},
        {"emo": np.array([f"row{i}" for i in range(9)])},
        sg,
        cluster={"emo": "speaker"},
    )
    rg = attribute_groups(ctx, "emo")
    assert rg.key == "speaker" and rg.n_total == 3
    w = rg.weights(40)
    assert (w[:, 0] == w[:, 3]).all() and (w[:, 1] == w[:, 4]).all()  # same speaker, same weight
    bad = ctx_for({"emo": np.array(["x", "y"] * 2)}, {"emo": np.arange(4)}, [{}] * 4, cluster={"emo": "speaker"})
    with pytest.raises(Exception, match="cluster key 'speaker'"):
        attribute_groups(bad, "emo")


def test_run_groups_take_the_coarsest_key():
    ctx = ctx_for(
        {"spk": np.array(["a", "b"] * 6), "emo": np.array(["x", "y", "z"] * 4)},
        {"spk": np.arange(12), "emo": np.repeat(np.arange(4), 3)},
    )
    rg = run_groups(ctx)
    assert rg.n_total == 4
    np.testing.assert_array_equal(rg.resamples(10).counts, attribute_groups(ctx, "emo").resamples(10).counts)


def test_weighted_scores_equal_the_scores_of_the_expanded_rows():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    w = rng.integers(0, 3, (7, 50)).astype(float)
    got = weighted_scores(y, pred, 4, w)
    for b in range(7):
        idx = np.repeat(np.arange(50), w[b].astype(int))
        want = scores_from_confusion(confusion(y[idx], pred[idx], 4))
        for key in want:
            assert got[key][b] == pytest.approx(want[key])
    assert weighted_means(np.arange(50.0), w)[0] == pytest.approx(np.repeat(np.arange(50.0), w[0].astype(int)).mean())


def test_tost_declares_equivalence_only_inside_the_margin():
    rng = np.random.default_rng(1)
    assert tost(rng.normal(0.0, 0.01, 2000), 0.05)["equivalent"] is True
    assert tost(rng.normal(0.04, 0.01, 2000), 0.05)["equivalent"] is False  # close to the margin
    assert tost(rng.normal(0.0, 0.05, 2000), 0.05)["equivalent"] is False  # too uncertain
    r = tost(rng.normal(0.0, 0.02, 2000), 0.05)
    assert r["ci90"][0] > -0.05 and r["ci90"][1] < 0.05 and r["p"] < 0.05 and r["margin"] == 0.05


def test_probe_hands_its_replicates_and_the_retention_cis_use_the_same_draws():
    rng = np.random.default_rng(2)
    n = 240
    y = rng.integers(0, 3, n)
    reps = {
        s: (np.eye(3)[y] * sc + rng.standard_normal((n, 3))).astype(np.float32)
        for s, sc in (("encoder", 2.0), ("adapter", 1.5), ("llm.final", 0.8))
    }
    groups = np.repeat(np.arange(40), 6)
    probe = P.Probe(AnalysisSpec(name="probe", entry="mch.plugins.analyses.probe:Probe"))
    ctx = ctx_for(
        {"a": np.array([f"c{v}" for v in y])},
        {"a": groups},
        reps=reps,
        params={**probe.default_params("default"), "n_bootstrap": 300, "control": False},
    )
    out = probe.run(ctx)
    acc = {s: out.replicates[("accuracy", s, "a")] for s in reps}
    assert all(len(v) == 300 for v in acc.values())
    c = [m for m in out.metrics if m.metric == "chance_retention"][0].value
    m = {x.metric: x for x in out.metrics if x.stage is None}
    lo, hi = percentile_ci(100 * (acc["llm.final"] - c) / (acc["adapter"] - c))
    assert (m["retained_pct"].ci_low, m["retained_pct"].ci_high) == pytest.approx((lo, hi))
    r = lambda a: (a - c) / (1 - c)  # noqa: E731
    lo, hi = percentile_ci(r(acc["encoder"]) - r(acc["llm.final"]))
    assert (m["delta_tau"].ci_low, m["delta_tau"].ci_high) == pytest.approx((lo, hi))
    assert m["delta_tau"].n_groups == 40 and m["final_over_chance"].ci_low is not None
    # the per-stage metrics say how many groups their CIs rest on
    assert all(x.n_groups == 40 for x in out.metrics if x.stage and x.ci_low is not None)
    assert out.replicates[("_groups", None, "a")]["n_total"] == 40


def test_one_group_gives_no_ci_rather_than_a_zero_width_one():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    X = (np.eye(2)[y] + rng.standard_normal((60, 2))).astype(np.float32)
    probe = P.Probe(AnalysisSpec(name="probe", entry="mch.plugins.analyses.probe:Probe"))
    ctx = ctx_for(
        {"a": np.array([f"c{v}" for v in y])},
        {"a": np.zeros(60)},
        reps={"adapter": X},
        params={**probe.default_params("default"), "control": False},
    )
    out = probe.run(ctx)
    acc = [x for x in out.metrics if x.metric == "accuracy"][0]
    assert acc.ci_low is None and acc.n_groups is None
    assert any("1 groups" in note and "cannot be resampled" in note for note in out.notes)


# --------------------------------------------------------------------------- the causal tests' deltas


def test_causal_cis_resample_groups_under_default_and_rows_under_paper():
    g = np.repeat(np.arange(8), 5)
    ctx = ctx_for({"emo": np.array(["x", "y"] * 20)}, {"emo": g})
    samples = ctx.samples[5:]  # the selected samples: rows 5..39
    rg = C.sample_groups(ctx, samples)
    assert isinstance(rg, RowGroups) and rg.n_groups == 7
    x = np.random.default_rng(4).normal(size=len(samples)) + rg.codes  # a strong group effect
    m, lo, hi = C.mean_ci(x, rg, 400)
    want = percentile_ci(weighted_means(x, rg.weights(400)))
    assert (lo, hi) == pytest.approx(want) and m == pytest.approx(x.mean())
    # the same draws inside a ratio and through the index-based bootstrap
    den = np.abs(x) + 1
    pc, plo, phi = C.ratio_of_means_pct(x, den, rg, 400)
    w = rg.weights(400)
    assert (plo, phi) == pytest.approx(percentile_ci(100 * (w @ x) / (w @ den)))
    blo, bhi = C.bootstrap(lambda idx: x[idx].mean(), len(x), rg, 400)
    assert (blo, bhi) == pytest.approx(want)
    out = C.grouped(
        AnalysisOutput(metrics=[Metric("delta", m, "adapter", None, lo, hi, len(x)), Metric("frac", 0.1, "adapter")]),
        rg,
    )
    assert out.metrics[0].n_groups == 7 and out.metrics[1].n_groups is None
    assert out.summary["bootstrap"]["n_groups"] == 7
    # rows resampled alone are narrower here (the group effect is ignored)
    _, rlo, rhi = C.mean_ci(x, 0, 400)
    assert rhi - rlo < 0.7 * (hi - lo)
    paper = ctx_for({"emo": np.array(["x", "y"] * 20)}, {"emo": g}, protocol="paper")
    assert C.sample_groups(paper, paper.samples) == 0
