"""`ablation`: direction sets and edits checked against their definitions, the paper's claim
on the toy organism (whose decoder only ever read content), the reference's fields under
paper, and the model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mch.api import MchError
from mch.plugins.analyses._causal import Modes, edit_adapter
from mch.plugins.analyses.ablation import CONDITIONS, directions, make_edit
from mch.runner import RunConfig, run_bench

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def synthetic_modes(d: int = 6, seed: int = 0) -> Modes:
    rng = np.random.default_rng(seed)
    lam = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])[:d]
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rows = rng.standard_normal((4000, d)) * np.sqrt(lam) @ U.T + 1.5
    mean = rows.mean(0)
    cov = np.cov(rows, rowvar=False)
    ev, V = np.linalg.eigh(cov)
    o = np.argsort(ev)[::-1]
    ms = np.array([True, False, True, False, True, False])[:d]
    return Modes(
        mean=mean,
        eigvals=ev[o],
        vectors=V[:, o],
        alpha=np.where(ms, 0.1, 2.0),
        alpha_raw=np.where(ms, 0.1, 2.0),
        ms=ms,
        total_variance=float(np.trace(cov)),
        text_total_variance=1.0,
        rows=rows,
        text_stage="adapter",
        threshold=0.5,
        alpha_scale="none",
    )


def test_direction_sets_follow_their_definitions():
    m = synthetic_modes()
    v_ms, v_ta = m.eigvals[m.ms].sum(), m.eigvals[m.ta].sum()
    ms_all = directions("ms_all", m, 0)
    assert ms_all.vectors.shape[1] == 3 and np.isclose(ms_all.removed, v_ms)
    # count-matched TA: the K = min(K_MS, K_TA) largest TA modes
    ta = directions("ta_matched", m, 0)
    assert np.allclose(ta.vectors, m.vectors[:, np.flatnonzero(m.ta)[:3]])
    target = min(v_ms, v_ta)
    for cond in ("ms_variance_matched", "ta_variance_matched", "random_variance_matched"):
        d = directions(cond, m, 7)
        assert d.matched and np.isclose(d.removed, target, rtol=1e-9), cond
        assert np.allclose(d.vectors.T @ d.vectors, np.eye(d.vectors.shape[1]), atol=1e-10)
        assert np.all((d.coef > 0) & (d.coef <= 1)) and np.sum(d.coef < 1) <= 1  # only the last one shrinks
    r1, r2 = directions("random_matched", m, 42), directions("random_matched", m, 42)
    assert np.array_equal(r1.vectors, r2.vectors) and r1.vectors.shape[1] == 3
    with pytest.raises(MchError, match="unknown condition"):
        directions("ms_half", m, 0)
    assert set(CONDITIONS) >= {
        "ms_all",
        "ta_matched",
        "random_matched",
        "ta_variance_matched",
        "random_variance_matched",
    }


def test_edit_removes_exactly_the_stated_variance():
    m = synthetic_modes()
    X = torch.tensor(m.rows, dtype=torch.float32)[None]  # one "sample" of 4000 tokens
    for cond in ("ta_variance_matched", "random_variance_matched"):
        d = directions(cond, m, 3)
        out = make_edit(d, m.mean, True, "cpu")(X)[0].double().numpy()
        removed = np.trace(np.cov(m.rows, rowvar=False)) - np.trace(np.cov(out, rowvar=False))
        assert np.isclose(removed, d.removed, rtol=1e-4), cond
        assert np.allclose(out.mean(0), m.mean, atol=1e-4)  # mean-preserving
    # paper: uncentred, the whole coordinate along U goes (the mean's too)
    d = directions("ms_all", m, 0)
    out = make_edit(d, m.mean, False, "cpu")(X)[0].double().numpy()
    assert np.allclose(out @ d.vectors, 0, atol=1e-4)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ablation")
    common = dict(model="toy", limit=400, out_dir=tmp / "results", store=tmp / "store")
    p, default = run_bench(
        RunConfig(analyses=["ablation"], params={"ablation": {"n_samples": 160, "n_boot": 400}}, **common)
    )
    _, paper = run_bench(
        RunConfig(
            analyses=["ablation"], protocol="paper", params={"ablation": {"n_samples": 64, "n_boot": 200}}, **common
        )
    )
    return p, default[0][1], paper[0][1], tmp


def metric(rec, name):
    (m,) = [m for m in rec["metrics"] if m["metric"] == name]
    return m


def test_what_the_toy_shows_under_ablation(toy_runs):
    """On the toy organism, under the default split: removing *all* MS variance raises the
    content loss severely (the paper reports that removing MS variance lowers it), and of
    equal amounts of variance, TA directions cost more than MS ones, which cost about what
    random directions do."""
    _, rec, _, _ = toy_runs
    s = rec["summary"]
    assert rec["analysis"]["name"] == "ablation" and rec["protocol"] == "default"
    assert s["mean_preserving"] is True and s["text_stage"] == "adapter"
    assert s["split"]["name"] == "covariance" and s["split"]["cross_fit"] is True
    conds = s["conditions"]
    v = conds["ms_variance_matched"]["variance_removed"]
    assert v > 0.1 * s["total_variance"]  # a real amount of variance goes, the same in each condition
    for c in ("ta_variance_matched", "random_variance_matched"):
        assert conds[c]["variance_matched"] and np.isclose(conds[c]["variance_removed"], v, rtol=1e-6)
    base = metric(rec, "loss_baseline")["value"]
    ms_all = metric(rec, "delta_loss_ms_all")
    ms = metric(rec, "delta_loss_ms_variance_matched")
    ta = metric(rec, "delta_loss_ta_variance_matched")
    rnd = metric(rec, "delta_loss_random_variance_matched")
    assert conds["ms_all"]["variance_fraction"] > 0.5  # MS holds most of the variance here
    assert ms_all["ci_low"] > 1.0 * base  # removing it all: the loss more than doubles
    assert ta["ci_low"] > ms["ci_high"] and ta["ci_low"] > rnd["ci_high"]
    assert ms["ci_low"] > 0  # not free either: MS directions carry content too
    assert ms["ci_low"] <= ms["value"] <= ms["ci_high"] and ms["n"] == 160
    pct = metric(rec, "pct_change_ta_variance_matched")
    assert np.isclose(pct["value"], 100 * ta["value"] / base, rtol=1e-9)  # a ratio of means
    assert len(s["per_sample"]) == 160


def test_paper_protocol_has_the_reference_fields(toy_runs):
    _, _, rec, _ = toy_runs
    s = rec["summary"]
    for f in (
        "pct_change_ms_all",
        "pct_change_ta_matched",
        "pct_change_random_matched",
        "ms_var_fraction",
        "ta_matched_var_fraction",
        "random_var_fraction",
        "mean_loss_baseline",
        "mean_delta_ms_all",
        "median_delta_ta_matched",
        "std_delta_random_matched",
        "n_ms_modes",
        "n_ta_modes",
        "ms_threshold",
    ):
        assert f in s, f
    assert s["mean_preserving"] is False and s["n_samples"] == 64 and s["alpha_scale"] == "none"
    assert s["n_modes"] == min(100, 64)  # the toy's decoder input is 64-d
    ps = s["per_sample"]
    assert ps[0]["sample_id"] == "toy-test-00000" and ps[-1]["sample_id"] == "toy-test-00063"  # first n in order
    d = np.array([r["delta_ms_all"] for r in ps])
    assert s["pct_change_ms_all"] == round(100 * d.mean() / np.mean([r["loss_baseline"] for r in ps]), 2)


def test_rerun_is_cached_and_loads_no_model(toy_runs):
    _, rec, _, tmp = toy_runs
    p, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["ablation"],
            limit=400,
            out_dir=tmp / "results",
            store=tmp / "store",
            params={"ablation": {"n_samples": 160, "n_boot": 400}},
        )
    )
    assert not p.loaded and written[0][1]["metrics"] == rec["metrics"]


def test_ablation_leaves_the_model_unchanged(toy_runs):
    plan, _, _, _ = toy_runs
    model = plan.plugin  # used by the ablation above
    fresh = type(model)(model.spec)
    fresh.load()
    batch = plan.samples[:6]
    with torch.no_grad():
        a = model.loss_terms(batch, "default").logits
        b = fresh.loss_terms(batch, "default").logits
    assert torch.equal(a, b)
    assert all(not m._forward_hooks for m in model.module.modules())
    # the hook comes off even when the forward fails inside
    with pytest.raises(RuntimeError):
        with edit_adapter(model, lambda z: z[..., :3]):
            model.loss(batch, "default")
    assert all(not m._forward_hooks for m in model.module.modules())


def test_unknown_param_and_missing_text_are_clear_errors(toy_runs, tmp_path):
    from types import SimpleNamespace

    from mch.api import Sample
    from mch.plugins.analyses._causal import select_samples

    with pytest.raises(MchError, match="no parameter 'n_sample'"):
        run_bench(
            RunConfig(
                model="toy",
                analyses=["ablation"],
                limit=40,
                out_dir=tmp_path / "r",
                store=toy_runs[3] / "store",
                params={"ablation": {"n_sample": 3}},
            )
        )
    ctx = SimpleNamespace(samples=[Sample(f"s{i}", "", {}, {}) for i in range(5)], seed=0)
    with pytest.raises(MchError, match="content tokens"):
        select_samples(ctx, 3, "default", need_text=True)
    assert list(select_samples(ctx, 3, "paper", need_text=False)) == [0, 1, 2]


def test_raw_alpha_labels_nearly_all_toy_variance_ms(toy_runs):
    """Why the split is scale-free: the pooled text embeddings have a small fraction of the
    adapter outputs' total variance, so with the raw α (the old modes/per_type rule) nearly
    every mode is MS, including the directions the decoder reads."""
    from types import SimpleNamespace

    from mch.plugins.analyses._causal import compute_modes
    from mch.runner import store_key
    from mch.store import Store

    plan = toy_runs[0]
    ids = [x.sample_id for x in plan.samples]
    st = Store(plan.cfg.store)
    ctx = SimpleNamespace(
        reps=st.entry(store_key(plan, "modal"), ids).read()[0],
        text_reps=lambda: st.entry(store_key(plan, "text"), ids).read()[0],
    )
    old = {"cross_fit": False, "split_rule": "tau"}
    raw = compute_modes(ctx, "default", "adapter", None, params={**old, "alpha_scale": "none"})
    scaled = compute_modes(ctx, "default", "adapter", None, params={**old, "alpha_scale": "trace"})
    assert raw.total_variance > 50 * raw.text_total_variance
    assert raw.split_summary()["ms_variance_fraction"] > 0.99
    assert 0.2 < scaled.split_summary()["ms_variance_fraction"] < 0.9
    assert np.allclose(scaled.alpha, raw.alpha * raw.total_variance / raw.text_total_variance)
    assert raw.split["cross_fit"] is False and raw.split["alpha_scale"] == "none"
