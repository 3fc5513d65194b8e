"""The toy model organism shows the paper's phenomenon through the real mch pipeline:
non-text factors present (probes far above chance at `adapter`) yet inaccessible (GMI ~ 0
bits through the decoder's scoring rule), while the caption's factor is accessible."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mch.plugins.models.toy import WEIGHTS, train
from mch.runner import RunConfig, run_bench


def _metric(rec, metric, stage, attribute):
    for m in rec["metrics"]:
        if m["metric"] == metric and m.get("stage") == stage and m.get("attribute") == attribute:
            return m
    raise AssertionError(f"{metric} at {stage} for {attribute} missing from {rec['analysis']['name']}")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    _, written = run_bench(RunConfig(limit=600, out_dir=tmp / "r", store=tmp / "s", analyses=["probe", "gmi"]))
    return {rec["analysis"]["name"]: rec for _, rec in written}


def test_hidden_factors_are_present_at_the_adapter(records):
    """Speaker is nearly perfectly decodable; emotion, probed on held-out speakers (grouped
    splits), at least 1.5x chance with its CI well clear of chance."""
    probe = records["probe"]
    for attr, min_acc, min_bits in (("speaker", 0.9, 1.5), ("emotion", 1.5 * 0.25, 0.1)):
        acc = _metric(probe, "accuracy", "adapter", attr)
        assert _metric(probe, "chance_uniform", None, attr)["value"] == pytest.approx(
            1 / (6 if attr == "speaker" else 4)
        )
        assert acc["ci_low"] > min_acc, (attr, acc)
        assert _metric(probe, "i_probe_bits", "adapter", attr)["value"] > min_bits


def test_hidden_factors_are_present_above_their_control_task(records):
    """science.md §1: I_probe above the control task's (labels permuted across groups, same
    folds and lam) at the adapter, and selectivity clear of 0."""
    probe = records["probe"]
    for attr in ("speaker", "emotion"):
        ip = _metric(probe, "i_probe_bits", "adapter", attr)
        control = _metric(probe, "control_i_probe_bits", "adapter", attr)
        assert ip["ci_low"] > control["ci_high"], (attr, ip, control)
        assert _metric(probe, "selectivity", "adapter", attr)["ci_low"] > 0.1


def test_hidden_factors_are_not_accessible_to_the_decoder(records):
    """GMI ~ 0 and no evidence of access: the permutation p-value is not small."""
    gmi = records["gmi"]
    for attr in ("speaker", "emotion"):
        g = _metric(gmi, "gmi_bits", "llm.final", attr)
        assert g["value"] < 0.1 and g["ci_high"] < 0.2, (attr, g)
        # retrained toy (issue 14): emotion p 0.83; speaker p 0.030 (0.037 at 4000 permutations)
        # for a GMI of 0.001 bits, a trace of access that 600 samples can detect; a test that
        # always rejects gives 0.005 here
        assert _metric(gmi, "gmi_p", "llm.final", attr)["value"] > 0.01, attr


def test_the_caption_factor_is_accessible(records):
    g = _metric(records["gmi"], "gmi_bits", "llm.final", "content")
    assert g["ci_low"] > 1.5, g  # of log2(8) = 3 bits
    acc = _metric(records["gmi"], "accessibility", "adapter", "content")
    hidden = _metric(records["gmi"], "accessibility", "adapter", "emotion")
    assert acc["value"] > 0.5 and hidden["value"] < 0.1
    assert acc["ci_low"] > 0.5 and hidden["ci_high"] < 0.1  # CIs from the probe's and GMI's shared draws
    # the decoder rarely answers some words ("boat"): the LM rate does not charge that bias to
    # inaccessibility (retrained toy: 2.30 -> 2.75 bits; the LM rate at s = 1 without the
    # search gives 2.23, below GMI)
    lm = _metric(records["gmi"], "gmi_lm_bits", "llm.final", "content")
    assert lm["value"] >= g["value"] and _metric(records["gmi"], "gmi_p", "llm.final", "content")["value"] < 0.01


def test_records_carry_provenance(records):
    for rec in records.values():
        assert rec["model"]["name"] == "toy" and rec["protocol"] == "default"
        assert rec["dataset"]["n"] == 600 and len(rec["dataset"]["sample_ids_sha256"]) == 64
        assert rec["provenance"]["versions"]["torch"]
        assert rec["extraction"]["span"] == "modality"


@pytest.mark.slow
def test_toy_weights_reproduce_bit_for_bit(tmp_path):
    train(tmp_path / "w", log=lambda s: None)
    a, b = load_file(str(WEIGHTS / "model.safetensors")), load_file(str(tmp_path / "w" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((WEIGHTS / "vocab.json").read_text()) == json.loads((tmp_path / "w" / "vocab.json").read_text())
