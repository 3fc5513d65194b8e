"""`gradient`: the projected gradient against finite differences of the decoder loss on the
toy, the aggregation against its definition, the reference's fields under paper, and the
model (parameters, requires_grad flags, hooks) left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mch.plugins.analyses._causal import edit_adapter
from mch.plugins.analyses.gradient import _stats
from mch.runner import RunConfig, run_bench

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_aggregation_follows_the_definition():
    proj = np.array([[1.0, 2.0, 4.0, 0.5], [3.0, 2.0, 0.0, 1.5]])
    ms = np.array([True, True, False, False])
    alpha = np.array([0.1, 0.2, 1.0, 3.0])
    g_ms, g_ta, ratio, corr = _stats(proj, ms, alpha)
    g = proj.mean(0)  # (2, 2, 2, 1)
    assert (g_ms, g_ta) == (2.0, 1.5) and ratio == 0.75
    assert np.isclose(corr, np.corrcoef(g, alpha)[0, 1])
    assert _stats(proj, np.zeros(4, bool), alpha)[2] == 1.75 / 1e-10  # no MS mode: the reference's guard


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gradient")
    common = dict(model="toy", limit=300, out_dir=tmp / "results", store=tmp / "store")
    p, d = run_bench(
        RunConfig(
            analyses=["gradient"],
            params={"gradient": {"n_samples": 6, "batch_size": 4, "scale_by_sqrt_lambda": False, "n_boot": 200}},
            **common,
        )
    )
    _, scaled = run_bench(
        RunConfig(
            analyses=["gradient"], params={"gradient": {"n_samples": 6, "batch_size": 4, "n_boot": 200}}, **common
        )
    )
    _, pp = run_bench(
        RunConfig(
            analyses=["gradient"], protocol="paper", params={"gradient": {"n_samples": 8, "n_boot": 200}}, **common
        )
    )
    return p, d[0][1], scaled[0][1], pp[0][1]


def test_projections_match_finite_differences(runs):
    plan, rec, _, _ = runs
    s = rec["summary"]
    assert s["reduction"] == "token sum" and not s["scaled_by_sqrt_lambda"]
    model = plan.plugin
    by_id = {x.sample_id: x for x in plan.samples}
    samples = [by_id[i] for i in s["sample_ids"]]
    # the modes' directions, recomputed from the store exactly as the analysis did
    from types import SimpleNamespace

    from mch.plugins.analyses._causal import compute_modes  # the same modes the record used
    from mch.runner import store_key
    from mch.store import Store

    modal = Store(plan.cfg.store).entry(store_key(plan, "modal"), [x.sample_id for x in plan.samples])
    text = Store(plan.cfg.store).entry(store_key(plan, "text"), [x.sample_id for x in plan.samples])
    ctx = SimpleNamespace(reps=modal.read()[0], text_reps=lambda: text.read()[0])
    modes = compute_modes(ctx, "default", "adapter", None, params={})  # the default split, as the analysis
    eps = 1e-2
    for k in range(3):
        u = torch.tensor(modes.vectors[:, k], dtype=torch.float32)
        fd = []
        for x in samples:  # one sample at a time: no padding, every adapter row is a modality token
            with torch.no_grad():
                with edit_adapter(model, lambda z: z + eps * u):
                    up = -model.loss([x], "default").item()
                with edit_adapter(model, lambda z: z - eps * u):
                    down = -model.loss([x], "default").item()
            fd.append(abs(up - down) / (2 * eps))
        g_k = s["modes"][k]["g_k"]
        assert np.isclose(g_k, np.mean(fd), rtol=0.03, atol=1e-4), (k, g_k, np.mean(fd))
    assert all(not m._forward_hooks for m in model.module.modules())
    assert all(q.requires_grad for q in model.module.llm.parameters())  # frozen() restored the flags


def test_sqrt_lambda_scaling_and_metrics(runs):
    _, raw, scaled, _ = runs
    lam = np.array([m["eigenvalue"] for m in raw["summary"]["modes"]])
    g_raw = np.array([m["g_k"] for m in raw["summary"]["modes"]])
    g_sc = np.array([m["g_k"] for m in scaled["summary"]["modes"]])
    assert np.allclose(g_sc, g_raw * np.sqrt(lam), rtol=1e-6)
    names = {m["metric"] for m in scaled["metrics"] if m["attribute"] is None}
    assert names == {
        "g_ms",
        "g_ta",
        "g_ta_over_g_ms",
        "sensitivity_share_ms",
        "variance_share_ms",
        "correlation_g_alpha",
    }
    assert {m["attribute"] for m in scaled["metrics"] if m["metric"] == "var_frac_unread"} == {
        "content",
        "speaker",
        "emotion",
    }
    for m in scaled["metrics"]:
        assert m["stage"] == "adapter"
        if m["attribute"] is None:
            assert m["n"] == 6
            assert m["ci_low"] is None or m["ci_low"] <= m["value"] <= m["ci_high"]
    s = scaled["summary"]
    assert s["split"]["name"] == "covariance" and s["functional_split"]["name"] == "functional"
    assert set(s["functional_split"]["known_truth"]) == {"covariance", "functional"}


def test_paper_fields(runs):
    _, _, _, rec = runs
    s = rec["summary"]
    for f in (
        "g_ms_mean",
        "g_ta_mean",
        "g_ta_over_g_ms",
        "correlation_g_alpha",
        "n_samples",
        "n_modes",
        "n_ms_modes",
        "n_ta_modes",
    ):
        assert f in s, f
    assert s["text_stage"] == "llm.final"  # script 11's Σ_T quirk (B3)
    assert s["reduction"] == "token mean" and s["n_samples"] == 8 and s["n_modes"] == 64
    assert s["g_ta_over_g_ms"] == pytest.approx(s["g_ta_mean"] / max(s["g_ms_mean"], 1e-10))


def test_unread_share_cis_resample_the_declared_cluster_key(runs):
    """science.md §8: the toy's content and emotion split on speakers (6) but declare the sample
    as their cluster key, so var_frac_unread's CI resamples the 300 samples, not the speakers."""
    _, _, scaled, _ = runs
    ng = {m["attribute"]: m["n_groups"] for m in scaled["metrics"] if m["metric"] == "var_frac_unread"}
    assert ng == {"content": 300, "speaker": 300, "emotion": 300}, ng
