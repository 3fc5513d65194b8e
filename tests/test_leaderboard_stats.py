"""The leaderboard's columns for issue 13's numbers: the LM rate, the permutation p-value and
the accessibility CIs (the rendering is the leaderboard module's own; only columns are added)."""

from __future__ import annotations

from mch import leaderboard as lb
from mch.results import build_record, write_record


def test_gmi_lm_gmi_p_and_accessibility_cis_have_columns(tmp_path):
    metrics = [
        {
            "metric": "gmi_bits",
            "value": 2.41,
            "stage": "llm.final",
            "attribute": "content",
            "ci_low": 2.33,
            "ci_high": 2.49,
            "n": 600,
            "n_groups": 600,
        },
        {
            "metric": "gmi_lm_bits",
            "value": 2.74,
            "stage": "llm.final",
            "attribute": "content",
            "ci_low": 2.55,
            "ci_high": 2.90,
            "n": 600,
            "n_groups": 600,
        },
        {"metric": "gmi_p", "value": 0.005, "stage": "llm.final", "attribute": "content", "n": 600},
        {
            "metric": "accessibility",
            "value": 0.92,
            "stage": "adapter",
            "attribute": "content",
            "ci_low": 0.81,
            "ci_high": 1.1,
            "n": 600,
            "n_groups": 600,
        },
        {
            "metric": "accessibility_lm",
            "value": 1.05,
            "stage": "llm.final",
            "attribute": "content",
            "ci_low": 0.9,
            "ci_high": 1.2,
            "n": 600,
            "n_groups": 600,
        },
    ]
    rec = build_record(
        model={"name": "toyfix", "modality": "speech", "checkpoint": "builtin:toy"},
        dataset={"name": "toy", "n": 600, "sample_ids_sha256": "ab" * 32},
        analysis={"name": "gmi", "params": {}},
        protocol="default",
        extraction={},
        seeds=[0],
        config_hash="c0",
        duration_s=1.0,
        metrics=metrics,
    )
    write_record(rec, tmp_path)
    loaded, warnings = lb.load_records([tmp_path])
    assert not warnings
    (row,) = lb.aggregate(loaded)
    v = row["values"]
    assert v["gmi_lm"]["value"] == 2.74 and v["gmi_p"]["value"] == 0.005
    assert v["access_lm_final"]["value"] == 1.05
    cols = lb.COLUMN_BY_KEY
    assert lb.format_cell(cols["access_adapter"], v["access_adapter"]) == "0.92 [0.81, 1.10]"
    assert lb.format_cell(cols["gmi_lm"], v["gmi_lm"]) == "2.74 [2.55, 2.90]"
    assert lb.format_cell(cols["gmi_p"], v["gmi_p"]) == "0.005"
    shown = {c.key for c in lb.visible_metric_columns([row])}
    assert {"gmi", "gmi_lm", "gmi_p", "access_adapter", "access_lm_final"} <= shown
