"""What the user sees (issue 12): `mch bench` on tiny random checkpoints finishes and prints its
table (undefined values as "—", never a traceback), tables readable at 80 columns with no
value dropped, listings that grep whole in a pipe, each analysis's headline numbers, skip
reasons, --json/--csv for machines, --version; the leaderboard's row identity (checkpoint,
fingerprint), smoke runs, submit's file names and build --out errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, run_mch
from test_leaderboard import make_record, probe_metrics, write

from mch import leaderboard as lb
from mch.report import show_records

ELLIPSIS = "…"


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def assert_fits(text: str, width: int = 80) -> None:
    """No line wider than the terminal; a 'wrote PATH' line keeps its path whole (copyable)."""
    long = [line for line in text.splitlines() if len(line) > width and not line.startswith("wrote /")]
    assert not long, long[:3]


def cut_number(text: str) -> list[str]:
    """Cells rich shortened: a digit followed by '…' (the "0…" of issue 12)."""
    return re.findall(r"\d…", text)


def render(records, width=80, headlines=None) -> str:
    from rich.console import Console

    buf = io.StringIO()
    show_records(records, Console(file=buf, width=width, force_terminal=False, color_system=None), headlines or {})
    return buf.getvalue()


# --------------------------------------------------------------------------- bench on tiny checkpoints


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from mch.plugins.attributes import synth
    from mch.plugins.models import tiny

    root = tmp_path_factory.mktemp("tiny-cli")
    coco = synth.make("coco", root / "coco", images=30)
    # one unreadable image: --on-error skip must say which sample it dropped and why
    bad = sorted((coco / "val2017").glob("*.jpg"))[-1]
    bad.write_bytes(b"not a jpeg")
    return {"root": root, "llava": tiny.make_tiny_llava(root / "llava"), "coco": coco}


def bench_cmd(ck, dataset, data, store, out, *extra):
    return (
        "bench",
        "--model",
        ck[0],
        "--checkpoint",
        str(ck[1]),
        "--dataset",
        dataset,
        "--data-path",
        str(data),
        "--store",
        str(store),
        "--out",
        str(out),
        "--quiet",
        "--batch-size",
        "8",
        *extra,
    )


def test_bench_on_a_tiny_llava_prints_its_table_at_80_columns(tiny_world, tmp_path):
    """Issue 12 item 1 (a crash on `accessibility: null` after all the work) on a random
    LLaVA over a 6-attribute COCO-layout corpus: rc 0, the whole table at 80 columns (every
    probe accuracy of the record is on screen, no cut number), undefined values as "—",
    the skipped sample and attribute with their reasons, the records written and named,
    the run labelled a smoke run. Then --json and --csv from the store."""
    ck = ("llava", tiny_world["llava"])
    store, out = tmp_path / "store", tmp_path / "results"
    proc = run_mch(
        *bench_cmd(ck, "coco", tiny_world["coco"], store, out, "--on-error", "skip", "--param", "probe.min_samples=25"),
        env={"COLUMNS": "80"},
    )
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert_fits(text)
    assert not cut_number(text)
    recs = {json.loads(p.read_text())["analysis"]["name"]: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(recs) == {"probe", "gmi"}
    for p in out.glob("*.json"):
        assert f"wrote {p}" in text.replace("\n", "")
    probe, gmi = recs["probe"], recs["gmi"]
    assert probe["model"]["smoke"] is True and "smoke run" in text
    # every probe accuracy and I_probe of the record is printed
    for m in probe["metrics"]:
        if m["metric"] == "accuracy":
            assert f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in text, m
        if m["metric"] == "i_probe_bits":
            assert f"{m['value']:.2f}" in text, m
    # accessibility is undefined where I_probe <= 0: "—", under its own header
    assert any(m["metric"] == "accessibility" and m["value"] is None for m in gmi["metrics"])
    assert "accessibility" in text and "—" in text and "acc. " not in text
    # lexical has fewer than 25 usable rows here: skipped, with the probe's reason
    assert "probe: lexical skipped:" in text and "needs 25 rows" in text
    skipped = probe["dataset"]["skipped"]
    assert len(skipped) == 1 and f"{skipped[0]['sample_id']}:" in text and "skipped 1 sample" in text

    # machines: the same numbers from the store, stdout holds only them
    proc = run_mch(
        *bench_cmd(
            ck,
            "coco",
            tiny_world["coco"],
            store,
            tmp_path / "r2",
            "--on-error",
            "skip",
            "--param",
            "probe.min_samples=25",
            "--json",
        )
    )
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "mch-bench" and data["version"] == 1 and data["model_loaded"] is False
    assert [r["analysis"] for r in data["records"]] == ["probe", "gmi"]
    assert all(Path(r["path"]).is_file() for r in data["records"])
    assert data["records"][0]["dataset"]["skipped"] == skipped
    assert "needs 25 rows" in data["records"][0]["skipped_attributes"]["lexical"]
    n_metrics = len(probe["metrics"]) + len(gmi["metrics"])
    assert len(data["metrics"]) == n_metrics
    assert {
        "analysis",
        "metric",
        "stage",
        "attribute",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "checkpoint",
        "smoke",
    } <= set(data["metrics"][0])
    assert "wrote" in proc.stderr
    proc = run_mch(
        *bench_cmd(
            ck,
            "coco",
            tiny_world["coco"],
            store,
            tmp_path / "r3",
            "--on-error",
            "skip",
            "--param",
            "probe.min_samples=25",
            "--csv",
        )
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == n_metrics and rows[0]["model"] == "llava"
    acc = [r for r in rows if r["metric"] == "accessibility" and r["value"] == ""]
    assert acc  # null is an empty field
    proc = run_mch(*bench_cmd(ck, "coco", tiny_world["coco"], store, tmp_path / "r4", "--json", "--csv"))
    assert proc.returncode == 2 and "pass one of them" in proc.stderr
    no_traceback(proc)


SPEECH = [pytest.param("qwen2audio", marks=pytest.mark.slow), pytest.param("ultravox", marks=pytest.mark.slow)]


@pytest.mark.parametrize("model", SPEECH)
def test_bench_on_tiny_speech_checkpoints_prints_its_table(model, tmp_path):
    """The same for the two speech architectures on a CREMA-D-layout corpus (slow: their
    scoring runs the whole 30 s Whisper window per clip)."""
    from mch.plugins.attributes import synth
    from mch.plugins.models import tiny

    ck = (model, getattr(tiny, f"make_tiny_{model}")(tmp_path / model))
    crema = synth.make("cremad", tmp_path / "crema", actors=4, sentences=2, engine="numpy")
    proc = run_mch(*bench_cmd(ck, "cremad", crema, tmp_path / "store", tmp_path / "out"), env={"COLUMNS": "80"})
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_fits(proc.stdout)
    assert not cut_number(proc.stdout)
    assert "probe · emotion" in proc.stdout and "gmi" in proc.stdout and "smoke run" in proc.stdout
    assert len(list((tmp_path / "out").glob("*.json"))) == 2


# --------------------------------------------------------------------------- the bench tables, in process


def _rec(name, metrics, attrs=("speaker", "emotion"), notes=None, summary=None, skipped=None):
    rec = make_record(analysis=name, metrics=metrics)
    rec["dataset"]["attributes"] = list(attrs)
    rec["notes"] = notes or []
    rec["summary"] = summary or {}
    if skipped:
        rec["dataset"]["skipped"] = skipped
    return rec


def test_undefined_values_print_as_a_dash_and_selectivity_shows_when_present():
    probe = probe_metrics("speaker", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2], 0.25)
    for m in probe:
        if m.get("stage") == "llm.final":  # a fit that gave no number
            m["value"] = m["ci_low"] = m["ci_high"] = None
    gmi = [
        {"metric": "gmi_bits", "value": None, "stage": "llm.final", "attribute": "speaker"},
        {"metric": "accessibility", "value": None, "stage": "adapter", "attribute": "speaker"},
        {"metric": "accessibility", "value": 0.5, "stage": "llm.final", "attribute": "speaker"},
    ]
    text = render([_rec("probe", probe, ["speaker"]), _rec("gmi", gmi, ["speaker"])])
    assert "—" in text and "0.50" in text and "selectivity" not in text
    sel = probe_metrics("speaker", [0.9] * 7, [1.0] * 7, 0.25)
    sel += [
        {"metric": "selectivity", "value": 0.31, "stage": "adapter", "attribute": "speaker"},
        {"metric": "control_accuracy", "value": 0.59, "stage": "adapter", "attribute": "speaker"},
    ]
    gmi = [
        {
            "metric": "gmi_bits",
            "value": 0.4,
            "stage": "llm.final",
            "attribute": "speaker",
            "ci_low": 0.3,
            "ci_high": 0.5,
        },
        {"metric": "gmi_lm_bits", "value": 0.7, "stage": "llm.final", "attribute": "speaker"},
        {"metric": "gmi_p", "value": 0.004, "stage": "llm.final", "attribute": "speaker"},
    ]
    text = render([_rec("probe", sel, ["speaker"]), _rec("gmi", gmi, ["speaker"])], width=200)
    assert "selectivity" in text and "0.310" in text
    narrow = render([_rec("probe", sel, ["speaker"])], width=60)  # one table per attribute: control acc too
    assert "control acc" in narrow and "0.590" in narrow and "0.310" in narrow
    assert "GMI_lm" in text and "0.700" in text and "p (perm.)" in text and "0.004" in text
    # the GMI numbers never sit under an I_probe header
    head = next(line for line in text.splitlines() if "I_probe" in line)
    assert "GMI" not in head


def test_six_attributes_stack_at_80_columns_with_every_value():
    attrs = ["lexical", "object_category", "super_category", "object_count", "avg_obj_size", "spatial_spread"]
    metrics = []
    for i, a in enumerate(attrs):
        metrics += probe_metrics(
            a, [0.5 + i / 20 + k / 100 for k in range(7)], [0.1 * i + k / 10 for k in range(7)], 0.2
        )
    rec = _rec("probe", metrics, attrs)
    text = render([rec], width=80)
    assert_fits(text)
    assert not cut_number(text)
    for m in metrics:
        if m["metric"] == "accuracy":
            assert f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in text
    # wide enough, the attributes sit side by side in one table
    wide = render([rec], width=400)
    assert sum("lexical" in line and "spatial_spread" in line for line in wide.splitlines()) >= 1


def test_every_analysis_prints_its_headline_and_every_builtin_declares_one():
    from mch.manager import get_registry

    reg = get_registry()
    heads = {n: s.options.get("headline") for n, s in reg.analyses.items()}
    assert all(heads.values()), [n for n, h in heads.items() if not h]
    modes = [
        {"metric": "n_TA", "value": 12, "stage": "adapter"},
        {"metric": "n_MS", "value": 20, "stage": "adapter"},
        {"metric": "var_frac_MS_of_kept", "value": 0.61, "stage": "adapter", "ci_low": 0.55, "ci_high": 0.66},
    ]
    modes += [{"metric": f"other_{i}", "value": i, "stage": "adapter"} for i in range(16)]
    text = render([_rec("modes", modes)], width=120, headlines=heads)
    assert "n_TA" in text and "n_MS" in text and "0.610 [0.550, 0.660]" in text
    assert "16 more metrics" in text and "other_3" not in text
    # an analysis without a declaration still shows numbers, and says so
    text = render([_rec("third_party", modes)], width=120)
    assert "other_3" in text and "no headline declared" in text


def test_skipped_attributes_and_samples_say_why():
    probe = probe_metrics("speaker", [0.9] * 7, [1.0] * 7, 0.25)
    rec = _rec(
        "probe",
        probe,
        ["speaker", "emotion", "lexical"],
        notes=["emotion: skipped (12 usable rows in 6 classes, the largest with 2 (needs 20 rows))"],
        summary={"attributes": {"lexical": {"skipped": "fewer than two classes"}}},
        skipped=[{"sample_id": "1001_DFA_ANG_XX", "reason": "cannot decode AudioWAV/1001_DFA_ANG_XX.wav"}],
    )
    text = render([rec], width=200)
    assert "probe: emotion skipped: 12 usable rows in 6 classes, the largest with 2 (needs 20 rows)\n" in text
    assert "probe: lexical skipped: fewer than two classes" in text
    assert "skipped 1 sample (--on-error skip)" in text and "1001_DFA_ANG_XX: cannot decode" in text


# --------------------------------------------------------------------------- listings, version


def test_version():
    proc = run_mch("--version")
    assert proc.returncode == 0 and re.fullmatch(r"mch \S+\n", proc.stdout), proc.stdout


def test_listings_grep_whole_in_a_pipe_and_fit_80_columns():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "mch.cli", "list", "models"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "prismatic_dinov2" in ln)
    assert "TRI-ML/prismatic-vlms" in line and "vision" in line  # one entry, one line
    for args in (
        ["list", "models"],
        ["list", "models", "--long"],
        ["list", "datasets"],
        ["list", "analyses"],
        ["list", "params"],
        ["plugins"],
    ):
        proc = run_mch(*args, env={"COLUMNS": "80"})
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert_fits(proc.stdout)
        assert ELLIPSIS not in proc.stdout, args
    proc = run_mch("list", "models", env={"COLUMNS": "80"})
    assert any(
        ln.strip() == "prismatic_dinov2" or ln.strip().startswith("prismatic_dinov2 ")
        for ln in proc.stdout.splitlines()
    )
    assert "TRI-ML/prismatic-vlms" in proc.stdout


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_at_80_and_120_columns_shows_every_value(tmp_path):
    write(tmp_path, make_record(model="toy", checkpoint="/data/checkpoints/2026/toy-long-name-run", revision=None))
    for width in ("80", "120"):
        proc = run_mch("leaderboard", "--results", str(tmp_path), env={"COLUMNS": width})
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert_fits(proc.stdout, int(width))
        assert not cut_number(proc.stdout)
        for want in (
            "ultravox",
            "librispeech",
            "lexical",
            "0.279",
            "0.535",
            "199",
            "qwen2audio",
            "0.961",
            "…/2026/toy-long-name-run",
            "fixie-ai/ultravox-v0_6-llama-3_1-8b",
        ):
            assert want in proc.stdout, (width, want)
    # the committed toy entries' columns (GMI's LM rate, gmi_p, LM accessibility: issue 13) make the table ~440 wide
    proc = run_mch("leaderboard", "--results", str(tmp_path), env={"COLUMNS": "500"})
    assert any("0.279" in ln and "0.535" in ln for ln in proc.stdout.splitlines())  # a table when it fits


def test_runs_of_different_checkpoints_are_different_rows(tmp_path):
    m1 = probe_metrics("speaker", [0.9] * 7, [1.0] * 7, 0.25)
    m2 = probe_metrics("speaker", [0.4] * 7, [0.1] * 7, 0.25)
    gmi = [{"metric": "gmi_bits", "value": 0.2, "stage": "llm.final", "attribute": "speaker"}]
    write(tmp_path, make_record(model="m", checkpoint="/ck/a/model", revision=None, metrics=m1))
    write(
        tmp_path,
        make_record(
            model="m", checkpoint="/ck/b/model", revision=None, metrics=m2, created="2026-11-02T00:00:00+00:00"
        ),
    )
    write(tmp_path, make_record(model="m", checkpoint="/ck/b/model", revision=None, analysis="gmi", metrics=gmi))
    # same path, other weights (the store engineer's fingerprint): another row
    write(
        tmp_path,
        make_record(
            model="m",
            checkpoint="/ck/b/model",
            revision=None,
            fingerprint="f00d" * 4,
            metrics=m1,
            created="2026-11-03T00:00:00+00:00",
        ),
    )
    loaded, warnings = lb.load_records([tmp_path])
    assert not warnings
    rows = lb.aggregate(loaded)
    assert len(rows) == 3
    by = {(r["checkpoint"], r["checkpoint_fingerprint"]): r for r in rows}
    a, b, bf = by[("/ck/a/model", None)], by[("/ck/b/model", None)], by[("/ck/b/model", "f00d" * 4)]
    assert a["values"]["acc_final"]["value"] == 0.9 and a["values"]["gmi"] is None
    assert b["values"]["acc_final"]["value"] == 0.4 and b["values"]["gmi"]["value"] == 0.2  # one checkpoint merges
    assert bf["values"]["gmi"] is None
    labels = {r["checkpoint_label"] for r in rows}
    assert len(labels) == 3 and "…/a/model" in labels  # same-looking labels told apart by '#'
    assert sum(label.startswith("…/b/model #") for label in labels) == 2
    # submit keeps one entry per checkpoint
    entries = tmp_path / "entries"
    for f in sorted(tmp_path.glob("m__*probe*.json")):
        lb.submit(f, entries)
    assert len(list(entries.glob("*.json"))) == 3


def test_smoke_runs_are_labelled_hidden_by_default_and_never_submitted(tmp_path):
    from mch.plugins.models import tiny

    write(tmp_path, make_record(model="llava", smoke=True, checkpoint="/tmp/tiny/llava", revision=None))
    write(tmp_path, make_record(model="real"))
    proc = run_mch("leaderboard", "--results", str(tmp_path), "--no-entries")
    assert proc.returncode == 0 and "real" in proc.stdout and "llava" not in proc.stdout
    assert "1 row of smoke runs" in proc.stderr and "--smoke" in proc.stderr
    proc = run_mch("leaderboard", "--results", str(tmp_path), "--no-entries", "--smoke", env={"COLUMNS": "300"})
    line = next(ln for ln in proc.stdout.splitlines() if "llava" in ln)
    assert "smoke" in line and "measured" not in line
    data = json.loads(run_mch("leaderboard", "--results", str(tmp_path), "--no-entries", "--json", "--smoke").stdout)
    assert {r["model"]: r["smoke"] for r in data["rows"]} == {"llava": True, "real": False}
    smoke_file = next(tmp_path.glob("llava__*.json"))
    proc = run_mch("leaderboard", "submit", str(smoke_file), "--entries", str(tmp_path / "entries"))
    assert proc.returncode == 2 and "smoke run" in proc.stderr and not (tmp_path / "entries").exists()
    no_traceback(proc)
    proc = run_mch("leaderboard", "build", "--out", str(tmp_path / "site"), "--results", str(tmp_path), "--no-entries")
    assert proc.returncode == 0 and "1 rows" in proc.stdout
    # the tiny builders mark their checkpoints; the model plugin reports it
    ck = tiny.make_tiny_vicuna(tmp_path / "vicuna")
    from mch.api import load_entry
    from mch.checkpoints import SMOKE_KEY, is_smoke_checkpoint
    from mch.manager import get_registry

    assert SMOKE_KEY in json.loads((ck / "config.json").read_text()) and is_smoke_checkpoint(ck)
    spec = get_registry().get("model", "vicuna")
    assert load_entry(spec.entry)(spec, checkpoint=str(ck)).identity()["smoke"] is True
    assert "smoke" not in load_entry(spec.entry)(spec).identity()


@pytest.mark.parametrize("name", ["../evil", "..", ".hidden", "a/../../b"])
def test_submit_of_a_model_name_with_path_characters_is_read_back(tmp_path, name):
    src = write(tmp_path / "res", make_record(model=name))
    entries = tmp_path / "entries"
    proc = run_mch("leaderboard", "submit", str(src), "--entries", str(entries))
    no_traceback(proc)
    assert proc.returncode == 0 and "added" in proc.stdout, proc.stderr
    files = list(entries.iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".") and files[0].parent == entries
    (tmp_path / "none").mkdir()
    data = json.loads(
        run_mch(
            "leaderboard",
            "--results",
            str(tmp_path / "none"),
            "--entries",
            str(entries),
            "--json",
            env={"MCH_RESULTS": str(tmp_path / "none")},
        ).stdout
    )
    assert [r["model"] for r in data["rows"]] == [name]


def test_leaderboard_build_out_a_file_is_one_sentence(tmp_path):
    f = tmp_path / "page.html"
    f.write_text("x")
    for out in (f, f / "site"):
        proc = run_mch("leaderboard", "build", "--out", str(out), "--no-entries", "--results", str(tmp_path))
        no_traceback(proc)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert str(out) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
