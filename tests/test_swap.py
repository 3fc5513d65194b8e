"""`swap` (MS swap): the edit against its definition, the KL, donors, the reference's fields
under paper, and the model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mch.api import MchError
from mch.model import LossTerms, Pool
from mch.plugins.analyses.swap import kl_per_sample, swap_edit
from mch.runner import RunConfig, run_bench

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_swap_edit_moves_only_the_subspace_mean():
    g = torch.Generator().manual_seed(0)
    D, T = 5, 7
    z = torch.randn(3, T, D, generator=g)  # rows 0 and 1 belong to sample 0 (two chunks), row 2 to sample 1
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[1, 5:] = False  # the second chunk's padding
    mask[2, 4:] = False
    pool = Pool(torch.tensor([0, 0, 1]), {"modality": mask, "all": torch.ones(3, T, dtype=torch.bool)})
    U, _ = torch.linalg.qr(torch.randn(D, 2, generator=g))
    P = U @ U.T
    targets = torch.randn(2, D, generator=g) @ P
    out = swap_edit(P, targets, pool, "modality", 2)(z)
    for i, rows in ((0, [0, 1]), (1, [2])):
        real = torch.cat([out[r][mask[r]] for r in rows])
        assert torch.allclose(real.mean(0) @ P, targets[i], atol=1e-5)  # the mean component is the donor's
        before = torch.cat([z[r][mask[r]] for r in rows])
        dev_a, dev_b = real - real.mean(0), before - before.mean(0)
        assert torch.allclose(dev_a, dev_b, atol=1e-5)  # per-token deviations kept
    Q = torch.eye(D) - P
    assert torch.allclose(out @ Q, z @ Q, atol=1e-5)  # nothing outside the subspace moves


def test_kl_is_zero_for_identical_and_matches_a_manual_value():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, -100]])
    base = LossTerms(logits, targets)
    assert np.allclose(kl_per_sample(base, base), 0)
    other = LossTerms(torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]]), targets)
    p = torch.softmax(logits[0, 0], -1)
    manual = float((p * (p.log() - torch.log_softmax(torch.zeros(3), -1))).sum())  # only the scored position
    assert np.isclose(kl_per_sample(base, other)[0], manual, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("swap")
    common = dict(model="toy", limit=300, out_dir=tmp / "results", store=tmp / "store")
    p, d = run_bench(RunConfig(analyses=["swap"], params={"swap": {"n_samples": 64, "n_boot": 300}}, **common))
    _, pp = run_bench(
        RunConfig(analyses=["swap"], protocol="paper", params={"swap": {"n_samples": 48, "n_boot": 200}}, **common)
    )
    return p, d[0][1], pp[0][1], tmp


def metric(rec, name):
    (m,) = [m for m in rec["metrics"] if m["metric"] == name]
    return m


def test_default_swap_on_the_toy(runs):
    _, rec, _, _ = runs
    s = rec["summary"]
    assert s["attribute"] == "speaker" and s["n_speakers"] == 6 and s["n_samples"] == 64
    rows = s["per_sample"]
    assert all(r["speaker_a"] != r["speaker_b"] for r in rows)
    for k in ("ms", "ta"):
        kl = np.array([r[f"kl_{k}_swap"] for r in rows])
        assert np.all(kl >= -1e-6)
        m = metric(rec, f"kl_{k}_swap")
        assert np.isclose(m["value"], kl.mean()) and m["ci_low"] <= m["value"] <= m["ci_high"]
        d = np.array([r[f"loss_{k}_swap"] - r["loss_baseline"] for r in rows])
        assert np.isclose(metric(rec, f"delta_loss_{k}_swap")["value"], d.mean())
        assert metric(rec, f"delta_norm_{k}")["value"] > 0
    # a speaker swap moves the decoder: the MS part carries most of the toy's variance
    assert metric(rec, "kl_ms_swap")["ci_low"] > 0
    assert metric(rec, "kl_ratio_ta_over_ms")["value"] > 0


def test_paper_fields_and_donors(runs):
    _, _, rec, _ = runs
    s = rec["summary"]
    for f in (
        "mean_kl_ms_swap",
        "median_kl_ta_swap",
        "std_kl_ms_swap",
        "kl_ratio_ta_over_ms",
        "mean_delta_loss_ms",
        "mean_delta_loss_ta",
        "pct_change_ms",
        "pct_change_ta",
        "mean_delta_ms_norm",
        "mean_delta_ta_norm",
        "norm_ratio_ms_over_ta",
        "mean_kl_ms_normalized",
        "mean_kl_ta_normalized",
        "normalized_kl_ratio_ta_over_ms",
        "n_speakers",
        "mean_loss_baseline",
        "n_ms_modes",
        "n_ta_modes",
    ):
        assert f in s, f
    rows = s["per_sample"]
    assert [r["sample_id"] for r in rows][:2] == ["toy-test-00000", "toy-test-00001"]
    # donors: default_rng(42), one draw per sample among the other speakers, in sample order
    speakers = sorted({r["speaker_a"] for r in rows} | {r["speaker_b"] for r in rows})
    rng = np.random.default_rng(42)
    from mch.plugins.attributes.toy import SPEAKERS

    assert set(speakers) <= set(SPEAKERS)
    exp = []
    for r in rows:
        others = [x for x in sorted(SPEAKERS) if x != r["speaker_a"]]
        exp.append(others[int(rng.integers(len(others)))])
    assert [r["speaker_b"] for r in rows] == exp
    base = np.mean([r["loss_baseline"] for r in rows])
    assert s["pct_change_ms"] == round(100 * np.mean([r["loss_ms_swap"] - r["loss_baseline"] for r in rows]) / base, 2)


def test_swap_leaves_the_model_unchanged_and_names_a_missing_attribute(runs, tmp_path):
    plan, _, _, tmp = runs
    model = plan.plugin
    fresh = type(model)(model.spec)
    fresh.load()
    batch = plan.samples[:5]
    with torch.no_grad():
        assert torch.equal(model.loss_terms(batch, "default").logits, fresh.loss_terms(batch, "default").logits)
    assert all(not m._forward_hooks for m in model.module.modules())
    with pytest.raises(MchError, match="attribute 'accent'"):
        run_bench(
            RunConfig(
                model="toy",
                analyses=["swap"],
                limit=300,
                out_dir=tmp_path / "r",
                store=tmp / "store",
                params={"swap": {"attribute": "accent"}},
            )
        )
