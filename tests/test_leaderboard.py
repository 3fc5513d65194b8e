"""The leaderboard: aggregation (latest run vs all runs), filters and sorting, the terminal
table and --json, submissions (validation naming the first offending field, canonical names,
duplicates), escaping on the page, and the committed reported entries."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mch import leaderboard as lb
from mch.api import MchError
from mch.results import build_record, validate, write_record

XSS = "<script>alert(1)</script>"
STAGES = ["encoder", "adapter", "llm.0", "llm.1", "llm.2", "llm.3", "llm.final"]
ENTRIES = Path(__file__).resolve().parent.parent / "leaderboard" / "entries"


def probe_metrics(attr: str, accs: list[float], bits: list[float], chance: float, n: int = 200) -> list[dict]:
    out = []
    for st, a, b in zip(STAGES, accs, bits, strict=True):
        out.append(
            {
                "metric": "accuracy",
                "value": a,
                "stage": st,
                "attribute": attr,
                "ci_low": a - 0.03,
                "ci_high": a + 0.03,
                "n": n,
            }
        )
        out.append(
            {
                "metric": "i_probe_bits",
                "value": b,
                "stage": st,
                "attribute": attr,
                "ci_low": b - 0.1,
                "ci_high": b + 0.1,
                "n": n,
            }
        )
    out.append({"metric": "chance_uniform", "value": chance, "stage": None, "attribute": attr})
    out.append({"metric": "delta_tau", "value": 0.25, "stage": None, "attribute": attr})
    return out


def make_record(
    model="toyfix",
    dataset="toy",
    analysis="probe",
    protocol="default",
    metrics=None,
    created="2026-11-01T10:00:00+00:00",
    kind="measured",
    modality="speech",
    revision="r1",
    source=None,
    note=None,
    checkpoint="builtin:toy",
    smoke=False,
    fingerprint=None,
    adapter=None,
    n=400,
    ids_sha="ab" * 32,
):
    if metrics is None:
        metrics = probe_metrics(
            "speaker", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2], 0.25
        )
    rec = build_record(
        model={
            "name": model,
            "modality": modality,
            "checkpoint": checkpoint,
            "revision": revision,
            **({"note": note} if note else {}),
            **({"smoke": True} if smoke else {}),
            **({"checkpoint_fingerprint": fingerprint} if fingerprint else {}),
            **({"adapter": adapter} if adapter else {}),
        },
        dataset={"name": dataset, "split": "test", "n": n, "sample_ids_sha256": ids_sha},
        analysis={"name": analysis, "params": {}},
        protocol=protocol,
        extraction={"span": "modality", "stages": STAGES},
        seeds=[0],
        config_hash="c0ffee",
        duration_s=1.5,
        metrics=metrics,
    )
    rec["created_at"] = created
    rec["kind"] = kind
    if source:
        rec["provenance"]["source"] = source
    validate(rec)
    return rec


def write(dirpath: Path, rec: dict) -> Path:
    return write_record(rec, dirpath)


def rows_of(*dirs) -> list[dict]:
    loaded, warnings = lb.load_records(dirs)
    assert not warnings, warnings
    return lb.aggregate(loaded)


# --------------------------------------------------------------------------- aggregation


def test_chance_column_is_the_c_of_retained_pct(tmp_path):
    """Retained % and Chance in one row use one chance level: the record's chance_retention
    (mch's default: the majority rate), else 1/K (the paper's reported entries)."""
    m = probe_metrics("speaker", [0.6] * 7, [1.0] * 7, 0.25)
    m += [
        {"metric": "chance_majority", "value": 0.4, "stage": None, "attribute": "speaker"},
        {"metric": "chance_retention", "value": 0.4, "stage": None, "attribute": "speaker"},
    ]
    write(tmp_path, make_record(metrics=m))
    write(tmp_path, make_record(model="other", metrics=probe_metrics("speaker", [0.6] * 7, [1.0] * 7, 0.25)))
    rows = {r["model"]: r for r in rows_of(tmp_path)}
    assert rows["toyfix"]["values"]["chance"]["value"] == 0.4 and rows["toyfix"]["chance"] == 0.4
    assert "chance_uniform 0.25" in rows["toyfix"]["other"]  # the other level stays visible
    assert rows["other"]["values"]["chance"]["value"] == 0.25
    assert not any(o.startswith("chance_uniform") for o in rows["other"]["other"])


def test_latest_run_wins_and_all_runs_keeps_every_run(tmp_path):
    old = make_record(created="2026-11-01T10:00:00+00:00", metrics=probe_metrics("speaker", [0.5] * 7, [0.1] * 7, 0.25))
    new = make_record(created="2026-11-02T10:00:00+00:00", metrics=probe_metrics("speaker", [0.9] * 7, [1.1] * 7, 0.25))
    write(tmp_path, new)
    write(tmp_path, old)  # written later, but older: must not win
    rows = rows_of(tmp_path)
    assert len(rows) == 1
    assert rows[0]["values"]["acc_final"]["value"] == 0.9
    assert rows[0]["values"]["acc_final"]["ci_low"] == pytest.approx(0.87)
    assert rows[0]["values"]["i_probe_final"]["value"] == 1.1
    loaded, _ = lb.load_records([tmp_path])
    all_rows = lb.aggregate(loaded, all_runs=True)
    assert sorted(r["values"]["acc_final"]["value"] for r in all_rows) == [0.5, 0.9]
    assert {r["run"] for r in all_rows} == {old["created_at"], new["created_at"]}


def test_records_of_one_second_keep_their_writing_order_and_never_overwrite(tmp_path, monkeypatch):
    """Two runs of one measurement within a second go to name.json then name-1.json, and the
    later one wins in the leaderboard and the Python API (the names sort the other way). A
    process that takes a name between the check and the write never loses its record (the
    check-then-rename before overwrote it: review)."""
    import os

    import mch
    from mch import fsio

    t = "2026-11-01T10:00:00+00:00"
    first = write(tmp_path, make_record(created=t, metrics=probe_metrics("speaker", [0.5] * 7, [0.1] * 7, 0.25)))
    second = write(tmp_path, make_record(created=t, metrics=probe_metrics("speaker", [0.9] * 7, [1.1] * 7, 0.25)))
    assert second.name == first.name.replace(".json", "-1.json")
    assert rows_of(tmp_path)[0]["values"]["acc_final"]["value"] == 0.9
    api_rows = mch.load_results(tmp_path).rows()
    assert {r["value"] for r in api_rows if r["metric"] == "accuracy" and r["stage"] == "llm.final"} == {0.9}

    # a racing writer takes name-2.json after this process saw it free
    racer = tmp_path / first.name.replace(".json", "-2.json")
    real_link = os.link

    def link(src, dst):
        if Path(dst) == racer and not racer.exists():
            racer.write_text('{"racer": true}')
        return real_link(src, dst)

    monkeypatch.setattr(fsio.os, "link", link)
    third = write(tmp_path, make_record(created=t, metrics=probe_metrics("speaker", [0.7] * 7, [0.5] * 7, 0.25)))
    assert racer.read_text() == '{"racer": true}' and third.name.endswith("-3.json")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_results_item_is_the_newest_of_one_seconds_records(tmp_path):
    """`Results["probe"]` is the newest record by the same order as the leaderboard and rows():
    of name.json, name-1.json, name-2.json written in one second, name-2.json (the files sort
    name-1, name-2, name, and `created_at` alone ties: it returned name-1.json)."""
    import mch

    t = "2026-11-01T10:00:00+00:00"
    paths = [
        write(tmp_path, make_record(created=t, metrics=probe_metrics("speaker", [a] * 7, [0.1] * 7, 0.25)))
        for a in (0.5, 0.6, 0.7)
    ]
    assert [p.name for p in sorted(paths)] == [paths[1].name, paths[2].name, paths[0].name]
    rec = mch.load_results(tmp_path)["probe"]
    assert {m["value"] for m in rec["metrics"] if m["metric"] == "accuracy"} == {0.7}


def test_a_run_on_fewer_samples_is_its_own_row_with_its_n(tmp_path):
    """A later --limit run (another sample selection) never replaces or merges into the row of
    the full selection: two rows, each with its own N, in the table too."""
    full = make_record(
        created="2026-11-01T10:00:00+00:00", metrics=probe_metrics("speaker", [0.9] * 7, [1.1] * 7, 0.25, n=400)
    )
    small = make_record(
        created="2026-11-02T10:00:00+00:00",
        metrics=probe_metrics("speaker", [0.5] * 7, [0.1] * 7, 0.25, n=100),
        n=100,
        ids_sha="cd" * 32,
    )
    write(tmp_path, full)
    write(tmp_path, small)
    rows = sorted(rows_of(tmp_path), key=lambda r: r["n"])
    assert [(r["n"], r["values"]["acc_final"]["value"]) for r in rows] == [(100, 0.5), (400, 0.9)]
    res = invoke("--results", str(tmp_path), "--no-entries", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(r["n"] for r in json.loads(res.output)["rows"]) == [100, 400]
    res = invoke("--results", str(tmp_path), "--no-entries")
    assert "N" in res.output and "100" in res.output and "400" in res.output


def test_analyses_merge_into_one_row_per_attribute(tmp_path):
    write(
        tmp_path,
        make_record(
            metrics=probe_metrics("speaker", [0.6] * 7, [1.0] * 7, 0.25)
            + probe_metrics("content", [0.95] * 7, [1.9] * 7, 0.125)
        ),
    )
    gmi = [
        {
            "metric": "gmi_bits",
            "value": 0.02,
            "stage": "llm.final",
            "attribute": "speaker",
            "ci_low": 0.0,
            "ci_high": 0.05,
            "n": 400,
        },
        {"metric": "accessibility", "value": 0.02, "stage": "adapter", "attribute": "speaker"},
        {"metric": "accessibility", "value": 0.04, "stage": "llm.final", "attribute": "speaker"},
        {"metric": "gmi_bits", "value": 1.7, "stage": "llm.final", "attribute": "content"},
        {"metric": "s_star", "value": 0.8, "stage": None, "attribute": "content"},
    ]
    write(tmp_path, make_record(analysis="gmi", metrics=gmi))
    rows = {r["attribute"]: r for r in rows_of(tmp_path)}
    assert set(rows) == {"speaker", "content"}
    sp = rows["speaker"]
    assert sp["analyses"] == ["gmi", "probe"]
    assert sp["values"]["gmi"] == {"value": 0.02, "ci_low": 0.0, "ci_high": 0.05, "n": 400}
    assert sp["values"]["access_adapter"]["value"] == 0.02
    assert sp["values"]["access_final"]["value"] == 0.04
    assert sp["values"]["acc_adapter"]["value"] == 0.6
    assert [c["stage"] for c in sp["curves"]] == STAGES
    assert rows["content"]["values"]["gmi"]["value"] == 1.7
    assert "s_star 0.8" in rows["content"]["other"]  # unknown metric rows are kept, not dropped


def test_latest_is_per_analysis_not_per_row(tmp_path):
    # A newer gmi run must not hide the older (and only) probe run of the same attribute.
    write(tmp_path, make_record(created="2026-11-01T00:00:00+00:00"))
    write(
        tmp_path,
        make_record(
            analysis="gmi",
            created="2026-11-05T00:00:00+00:00",
            metrics=[{"metric": "gmi_bits", "value": 0.1, "stage": "llm.final", "attribute": "speaker"}],
        ),
    )
    (row,) = rows_of(tmp_path)
    assert row["values"]["acc_final"]["value"] == 0.3 and row["values"]["gmi"]["value"] == 0.1
    assert row["created_at"] == "2026-11-05T00:00:00+00:00"


def test_measured_and_reported_never_merge_and_model_level_rows_stand_alone(tmp_path):
    write(tmp_path, make_record(protocol="paper"))
    write(
        tmp_path,
        make_record(
            protocol="paper",
            kind="reported",
            source="Paper, Table 1",
            metrics=[
                {"metric": "accuracy", "value": 0.61, "stage": "adapter", "attribute": "speaker"},
                {"metric": "ablation_pct_change_ms_all", "value": -1.4},
            ],
        ),
    )
    rows = rows_of(tmp_path)
    kinds = [(r["kind"], r["attribute"]) for r in rows]
    assert sorted(kinds, key=str) == sorted(
        [("measured", "speaker"), ("reported", None), ("reported", "speaker")], key=str
    )
    rep = next(r for r in rows if r["kind"] == "reported" and r["attribute"] == "speaker")
    assert rep["values"]["acc_adapter"]["value"] == 0.61 and rep["values"]["ablation_ms"] is None
    assert rep["sources"] == ["Paper, Table 1"]
    ml = next(r for r in rows if r["attribute"] is None)
    assert ml["values"]["ablation_ms"]["value"] == -1.4 and ml["values"]["acc_adapter"] is None


def test_invalid_records_are_skipped_with_a_warning(tmp_path):
    write(tmp_path, make_record())
    bad = make_record(model="broken")
    bad["metrics"][0]["stage"] = "llm_final"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "other.json").write_text('{"not": "a record"}')
    loaded, warnings = lb.load_records([tmp_path])
    assert [x.record["model"]["name"] for x in loaded] == ["toyfix"]
    assert len(warnings) == 1 and "metrics/0/stage" in warnings[0] and "bad.json" in warnings[0]


# --------------------------------------------------------------------------- filter and sort


def _three_rows(tmp_path):
    write(tmp_path, make_record(model="a", metrics=probe_metrics("speaker", [0.5] * 7, [0.5] * 7, 0.25)))
    write(
        tmp_path,
        make_record(
            model="b",
            modality="vision",
            dataset="img",
            metrics=probe_metrics("object_count", [0.8] * 7, [0.5] * 7, 0.2),
        ),
    )
    write(
        tmp_path,
        make_record(
            model="c",
            analysis="gmi",
            metrics=[{"metric": "gmi_bits", "value": 0.3, "stage": "llm.final", "attribute": "speaker"}],
        ),
    )
    return rows_of(tmp_path)


def test_filters_and_a_clear_error_for_a_value_no_row_has(tmp_path):
    rows = _three_rows(tmp_path)
    assert [r["model"] for r in lb.filter_rows(rows, modality="vision")] == ["b"]
    assert {r["model"] for r in lb.filter_rows(rows, attribute="speaker")} == {"a", "c"}
    assert {r["model"] for r in lb.filter_rows(rows, attribute="speaker,object_count")} == {"a", "b", "c"}
    with pytest.raises(MchError, match=r"no leaderboard row has attribute 'speakr'.*did you mean 'speaker'"):
        lb.filter_rows(rows, attribute="speakr")


def test_sort_numbers_descending_text_ascending_missing_last(tmp_path):
    rows = _three_rows(tmp_path)
    assert [r["model"] for r in lb.sort_rows(rows, "acc_final")] == ["b", "a", "c"]
    assert [r["model"] for r in lb.sort_rows(rows, "acc_final:asc")] == ["a", "b", "c"]
    assert [r["model"] for r in lb.sort_rows(rows, "model:desc")] == ["c", "b", "a"]
    with pytest.raises(MchError, match="did you mean 'acc_final'"):
        lb.sort_rows(rows, "acc_fnal")
    with pytest.raises(MchError, match="must be 'asc' or 'desc'"):
        lb.sort_rows(rows, "gmi:up")


# --------------------------------------------------------------------------- CLI


def invoke(*args, env=None):
    """`mch leaderboard ARGS` through the CLI's entry point and its one error exit, in this
    process: exit code, and stdout and stderr interleaved as `output`."""
    from mch.cli import main

    with CliRunner().isolation(env=env) as (_, _, both):
        try:
            main(["leaderboard", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        sys.stdout.flush()
        sys.stderr.flush()
        return SimpleNamespace(exit_code=code, output=both.getvalue().decode())


def test_cli_table_json_and_filters(tmp_path):
    _three_rows(tmp_path)
    res = invoke("--results", str(tmp_path), "--no-entries")
    assert res.exit_code == 0, res.output
    for name in ("a", "b", "c", "Acc @final", "GMI", "speaker", "object_count"):
        assert name in res.output
    res = invoke("--results", str(tmp_path), "--no-entries", "--json", "--modality", "speech", "--sort", "gmi")
    data = json.loads(res.output)
    assert [r["model"] for r in data["rows"]] == ["c", "a"]
    assert data["rows"][0]["values"]["gmi"]["value"] == 0.3
    res = invoke("--no-entries", "--json", env={"MCH_RESULTS": str(tmp_path)})
    assert len(json.loads(res.output)["rows"]) == 3


def test_cli_errors_are_one_sentence_not_a_traceback(tmp_path):
    _three_rows(tmp_path)
    for args, expect in (
        (["--sort", "nope"], "cannot sort by 'nope'"),
        (["--protocol", "fancy"], "--protocol must be one of default, paper"),
        (["--attribute", "colour"], "no leaderboard row has attribute 'colour'"),
    ):
        res = invoke("--results", str(tmp_path), "--no-entries", *args)
        assert res.exit_code == 2
        assert expect in res.output and "Traceback" not in res.output
        assert res.output.startswith("error: ") and res.output.count("\n") == 1  # one sentence, one line
    res = invoke("--results", str(tmp_path / "missing"))
    assert res.exit_code == 2 and "does not exist" in res.output


def test_all_runs_flag(tmp_path):
    write(tmp_path, make_record(created="2026-11-01T00:00:00+00:00"))
    write(tmp_path, make_record(created="2026-11-03T00:00:00+00:00"))
    one = json.loads(invoke("--results", str(tmp_path), "--no-entries", "--json").output)["rows"]
    two = json.loads(invoke("--results", str(tmp_path), "--no-entries", "--json", "--all-runs").output)["rows"]
    assert len(one) == 1 and len(two) == 2


def test_terminal_table_shows_names_literally(tmp_path):
    write(tmp_path, make_record(model="[b]m[/b]"))
    res = invoke("--results", str(tmp_path), "--no-entries")
    assert "[b]m[/b]" in res.output


def test_terminal_marks_reported_rows_with_their_source(tmp_path):
    write(tmp_path, make_record(kind="reported", protocol="paper", source="Some paper, Table 2"))
    res = invoke("--results", str(tmp_path), "--no-entries")
    assert "reported[1]" in res.output and "[1] Some paper, Table 2" in res.output


# --------------------------------------------------------------------------- submit


def test_submit_canonical_name_duplicates_and_replace(tmp_path):
    entries = tmp_path / "entries"
    src = write(tmp_path / "res", make_record(model="My/Model", revision="abc123"))
    res = invoke("submit", str(src), "--entries", str(entries))
    assert res.exit_code == 0, res.output
    target = entries / "My_Model__abc123__toy__probe__default.json"
    assert target.exists() and json.loads(target.read_text()) == json.loads(src.read_text())
    # Same (model, revision, dataset, protocol, analysis), a later run: a duplicate.
    src2 = write(
        tmp_path / "res2", make_record(model="My/Model", revision="abc123", created="2026-12-01T00:00:00+00:00")
    )
    res = invoke("submit", str(src2), "--entries", str(entries))
    assert res.exit_code == 2 and "duplicates" in res.output and "--replace" in res.output
    res = invoke("submit", str(src2), "--entries", str(entries), "--replace")
    assert res.exit_code == 0 and "replaced" in res.output
    assert json.loads(target.read_text())["created_at"] == "2026-12-01T00:00:00+00:00"
    assert len(list(entries.glob("*.json"))) == 1
    # Another revision is another entry.
    src3 = write(tmp_path / "res3", make_record(model="My/Model", revision="def456"))
    assert invoke("submit", str(src3), "--entries", str(entries)).exit_code == 0
    assert len(list(entries.glob("*.json"))) == 2


def test_submit_sanitised_name_clash_keeps_both(tmp_path):
    entries = tmp_path / "entries"
    a = write(tmp_path / "a", make_record(model="x/y"))
    b = write(tmp_path / "b", make_record(model="x_y"))
    lb.submit(a, entries)
    path, replaced = lb.submit(b, entries)
    assert replaced is None and path.name.startswith("x_y__r1__toy__probe__default-")
    assert len(list(entries.glob("*.json"))) == 2


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["metrics"][2].update(value="high"), "metrics/2/value"),
        (lambda r: r.pop("model"), "'model' is a required property"),
        (lambda r: r["model"].update(name=""), "model/name"),
        (lambda r: r.update(protocol="mine"), "protocol"),
        (lambda r: r["metrics"][0].update(stage="layer7"), "metrics/0/stage"),
        (lambda r: r.update(kind="reported"), "provenance/source"),
        (lambda r: r.update(schema_version=7), "schema_version"),
    ],
)
def test_submit_rejects_invalid_records_naming_the_first_offending_field(tmp_path, mutate, field):
    rec = make_record()
    mutate(rec)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(rec))
    res = invoke("submit", str(p), "--entries", str(tmp_path / "entries"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert field in res.output, res.output
    assert not (tmp_path / "entries").exists()


def test_submit_rejects_malformed_json_and_missing_files(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"schema_version": 1,\n "kind": }')
    res = invoke("submit", str(p), "--entries", str(tmp_path / "e"))
    assert res.exit_code == 2 and "not valid JSON: line 2" in res.output
    p.write_text("[1, 2]")
    res = invoke("submit", str(p), "--entries", str(tmp_path / "e"))
    assert res.exit_code == 2 and "expected a JSON object" in res.output
    res = invoke("submit", str(tmp_path / "nope.json"), "--entries", str(tmp_path / "e"))
    assert res.exit_code == 2 and "does not exist" in res.output


# --------------------------------------------------------------------------- site


def build(tmp_path, *recs) -> tuple[str, dict]:
    res_dir = tmp_path / "results"
    for r in recs:
        write(res_dir, r)
    out = tmp_path / "site"
    res = invoke("build", "--out", str(out), "--results", str(res_dir), "--no-entries")
    assert res.exit_code == 0, res.output
    return (out / "index.html").read_text(), json.loads((out / "leaderboard.json").read_text())


def test_site_escapes_every_string(tmp_path):
    evil = make_record(
        model=XSS,
        dataset='d"><img src=x onerror=alert(2)>',
        note="</script><script>alert(3)</script>",
        metrics=probe_metrics("<b>attr</b>", [0.5] * 7, [0.5] * 7, 0.25),
    )
    page, data = build(tmp_path, evil, make_record())
    for raw in (XSS, "<img", "<b>attr</b>", "alert(3)</script>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the table cell shows it as text
    blob = re.search(r'<script type="application/json" id="lb-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in blob and ">" not in blob
    assert json.loads(blob)["rows"][0]["model"] in (XSS, "toyfix")
    assert {r["model"] for r in json.loads(blob)["rows"]} == {XSS, "toyfix"}
    # Exactly two script elements: the data block and the page's own script.
    assert len(re.findall(r"<script\b", page)) == 2
    assert {r["model"] for r in data["rows"]} == {XSS, "toyfix"}


def test_site_is_self_contained_and_its_csp_admits_only_its_own_script(tmp_path):
    page, data = build(tmp_path, make_record())
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.replace('href="https://arxiv.org', ""))
    assert "@import" not in page
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert f"script-src 'sha256-{digest}'" in csp.replace("&#x27;", "'")
    assert f'data-id="{data["rows"][0]["id"]}"' in page
    assert '<svg class="spark"' in page  # per-row layer sparkline rendered at build time


def test_empty_site_still_builds(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("build", "--out", str(tmp_path / "s"), "--results", str(tmp_path / "empty"), "--no-entries")
    assert res.exit_code == 0 and "0 rows" in res.output
    assert "No entries yet" in (tmp_path / "s" / "index.html").read_text()


# --------------------------------------------------------------------------- committed entries


def test_committed_entries_are_valid_reported_records_with_sources():
    files = sorted(ENTRIES.glob("*.json"))
    assert files, "leaderboard/entries/ is empty"
    for f in files:
        rec = lb.check_entry(f)
        assert f.name == lb.canonical_name(rec) or f.name.startswith(Path(lb.canonical_name(rec)).stem + "-")
        if rec["kind"] == "reported":
            assert rec["protocol"] == "paper" and "arXiv 2602.23136" in rec["provenance"]["source"]
            assert all(m["ci_low"] is None for m in rec["metrics"])  # the paper gives no CIs


def test_committed_entries_carry_the_papers_checked_probe_values():
    loaded, warnings = lb.load_records([ENTRIES])
    assert not warnings
    rows = {(r["model"], r["dataset"], r["attribute"]): r for r in lb.aggregate(loaded) if r["kind"] == "reported"}
    v = lambda key, col: rows[key]["values"][col]["value"]  # noqa: E731
    assert v(("ultravox", "librispeech", "lexical"), "acc_adapter") == 0.279
    assert v(("ultravox", "librispeech", "lexical"), "acc_final") == 0.535
    assert v(("ultravox", "librispeech", "speaker"), "acc_adapter") == 0.605
    assert v(("ultravox", "cremad", "emotion"), "acc_adapter") == 0.621
    assert v(("qwen2audio", "librispeech", "speaker"), "acc_adapter") == 0.961
    assert v(("ultravox_emotion_lora", "cremad", "emotion"), "acc_final") == 0.632
    # retained_pct 199 is consistent with its own inputs: 100·(0.535 − 0.02)/(0.279 − 0.02) ≈ 198.8.
    lex = rows[("ultravox", "librispeech", "lexical")]["values"]
    assert lex["retained_pct"]["value"] == pytest.approx(
        100
        * (lex["acc_final"]["value"] - lex["chance"]["value"])
        / (lex["acc_adapter"]["value"] - lex["chance"]["value"]),
        abs=0.5,
    )
    assert rows[("prismatic_dinov2", "coco", None)]["values"]["ablation_ms"]["value"] == -11.11


def test_import_is_light():
    code = (
        "import sys, mch.leaderboard, mch.site; "
        "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_n_is_the_samples_an_attributes_numbers_rest_on(tmp_path):
    """A run of 400 samples of which 250 carry the attribute (COCO's spatial_spread needs two
    objects): the row's N is 250, the n of its numbers, not the run's 400."""
    write(tmp_path, make_record(metrics=probe_metrics("spread", [0.6] * 7, [0.5] * 7, 0.33, n=250), n=400))
    (row,) = rows_of(tmp_path)
    assert row["n"] == 250 and row["values"]["acc_final"]["n"] == 250


def test_a_stage_or_span_run_never_hides_the_run_of_every_stage(tmp_path):
    """A --stage subset (which now reads the full run's store entry) or a --span run is
    another measurement: the newer subset record replaced the full run's row, and its curve
    shrank to the one stage asked (review5). The full run's row keeps its id."""
    import mch

    full = make_record(created="2026-11-01T10:00:00+00:00")
    write(tmp_path, full)
    [alone] = [r for r in rows_of(tmp_path) if r["attribute"] == "speaker"]
    sub = make_record(created="2026-11-02T10:00:00+00:00")
    sub["metrics"] = [m for m in sub["metrics"] if m["stage"] in (None, "llm.1")]
    sub["run_config"] = {"stages": ["llm.1"], "span": None}
    span = make_record(created="2026-11-03T10:00:00+00:00")
    span["run_config"] = {"stages": None, "span": "all"}
    write(tmp_path, sub)
    write(tmp_path, span)
    rows = [r for r in rows_of(tmp_path) if r["attribute"] == "speaker"]
    assert len(rows) == 3
    curves = sorted(len(r["curves"]) for r in rows)
    assert curves == [1, 7, 7]
    assert alone["id"] in {r["id"] for r in rows}  # the full run's row, unchanged
    # the Python API's table keeps all three records too
    got = {Path(r["record"]).name for r in mch.load_results(tmp_path).rows()}
    assert len(got) == 3
