"""The offline corpus generators, `mch data`, and the synth-* registry entries."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mch.api import MchError, load_entry
from mch.plugins.attributes import commands, synth


def f0_median(y: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch over the louder 40 ms frames."""
    n = int(0.04 * sr)
    frames = [y[i : i + n] for i in range(0, len(y) - n, n // 2)]
    energy = np.array([np.mean(f**2) for f in frames])
    out = []
    lo, hi = int(sr / 400), int(sr / 60)
    for f in (f for f, e in zip(frames, energy, strict=True) if e > 0.3 * energy.max()):
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[n - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        out.append(sr / lag)
    return float(np.median(out))


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != synth.MANIFEST):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    return synth.make("cremad", tmp_path_factory.mktemp("s") / "c", actors=2, sentences=["TAI"], engine="numpy")


def test_speakers_and_emotions_are_acoustically_distinct(crema):
    def clip(name):
        y, sr = sf.read(crema / "AudioWAV" / f"{name}.wav", dtype="float32")
        return y, sr

    ang, sr = clip("1001_TAI_ANG_XX")
    sad, _ = clip("1001_TAI_SAD_XX")
    neu1, _ = clip("1001_TAI_NEU_XX")
    neu2, _ = clip("1002_TAI_NEU_XX")
    assert sr == 16000
    rms = lambda y: float(np.sqrt(np.mean(y**2)))  # noqa: E731
    assert rms(ang) > 2 * rms(sad)  # energy
    assert f0_median(ang, sr) > 1.25 * f0_median(sad, sr)  # pitch level
    assert len(sad) > 1.2 * len(ang)  # rate
    assert f0_median(neu2, sr) > 1.4 * f0_median(neu1, sr)  # actor 1002 has the higher register
    voices = synth.read_manifest(crema)["voices"]
    assert abs(f0_median(neu1, sr) - voices[0]["f0"]) < 0.35 * voices[0]["f0"]


def test_make_is_deterministic_and_documented(tmp_path):
    a = synth.make("voxceleb1", tmp_path / "a", speakers=2, videos=1, utterances=2, engine="numpy", seed=3)
    b = synth.make("voxceleb1", tmp_path / "b", speakers=2, videos=1, utterances=2, engine="numpy", seed=3)
    c = synth.make("voxceleb1", tmp_path / "c", speakers=2, videos=1, utterances=2, engine="numpy", seed=4)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    m = synth.read_manifest(a)
    assert m["generator"] == "voxceleb1" and m["params"]["seed"] == 3 and m["engine"] == "numpy" and m["files"] == 4
    assert (a / "vox1_meta.csv").read_text().splitlines()[0] == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
    for name, fn in synth.GENERATORS.items():
        assert fn.__doc__ and name in synth.__doc__ and name in synth.DESCRIPTIONS


def test_make_refuses_bad_requests(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MchError, match="not an empty directory"):
        synth.make("coco", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(MchError, match="unknown synthetic corpus"):
        synth.make("imagenet", tmp_path / "n")
    with pytest.raises(MchError, match="colour"):
        synth.make("coco", tmp_path / "p", colour="red")
    assert not (tmp_path / "p").exists()
    with pytest.raises(MchError, match="no synthetic sound"):
        synth.make("esc50", tmp_path / "e", classes=["dog", "vuvuzela"])
    with pytest.raises(MchError, match="espeak|auto, numpy"):
        synth.make("cremad", tmp_path / "q", engine="festival")


def test_esc50_layout_and_librispeech_layout(tmp_path):
    e = synth.make("esc50", tmp_path / "e", classes=["siren", "church_bells"], folds=2, seconds=0.5)
    rows = (e / "meta" / "esc50.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[1].endswith(",False," + rows[1].split(",")[5] + ",A")
    for row in rows[1:]:
        info = sf.info(str(e / "audio" / row.split(",")[0]))
        assert info.samplerate == 44100 and info.channels == 1 and info.frames == 22050
    ls = synth.make("librispeech", tmp_path / "l", speakers=1, chapters=1, utterances=2, engine="numpy")
    flacs = sorted((ls / "test-clean").glob("*/*/*.flac"))
    assert len(flacs) == 2 and sf.info(str(flacs[0])).format == "FLAC"
    trans = next((ls / "test-clean").glob("*/*/*.trans.txt")).read_text().splitlines()
    assert [t.split()[0] for t in trans] == [f.stem for f in flacs] and trans[0].split(" ", 1)[1].isupper()
    assert (ls / "SPEAKERS.TXT").read_text().startswith(";ID")


def test_ensure_reuses_and_regenerates(tmp_path):
    out = tmp_path / "g"
    synth.ensure("gqa", out, images=2)
    stamp = (out / "val_balanced_questions.json").stat().st_mtime_ns
    synth.ensure("gqa", out, images=2)
    assert (out / "val_balanced_questions.json").stat().st_mtime_ns == stamp
    synth.ensure("gqa", out, images=3)
    assert len(list((out / "images").glob("*.jpg"))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("user data")
    with pytest.raises(MchError, match="not an mch synthetic corpus"):
        synth.ensure("gqa", tmp_path / "mine")


def test_synth_registry_entries_generate_on_first_use(tmp_path, monkeypatch):
    from mch.manager import get_registry

    reg = get_registry(refresh=True)
    for name in ("librispeech", "cremad", "esc50", "voxceleb1", "coco", "gqa"):
        real, offline = reg.datasets[name], reg.datasets[f"synth-{name}"]
        real_cls, offline_cls = load_entry(real.entry), load_entry(offline.entry)
        assert issubclass(offline_cls, real_cls) and offline.options == {"synth": {}}
        assert "synth" in offline_cls.option_specs and "synth" not in real_cls.option_specs  # readers only read
        assert set(real.attributes) == set(offline.attributes)
    monkeypatch.setenv("MCH_DATA", str(tmp_path))
    spec = reg.datasets["synth-coco"]
    ds = load_entry(spec.entry)(spec)
    samples = ds.samples(None, None, 0, "default")
    assert (tmp_path / "synth-coco" / synth.MANIFEST).is_file()
    assert len(samples) == 22 and samples[0].media.size == (160, 120)  # 24 scenes, 2 empty ones dropped
    spec = reg.datasets["synth-gqa"]
    assert set(load_entry(spec.entry)(spec).attributes("default")) == {"answer", "question_type"}


def test_synth_entry_reads_a_given_path_and_synth_null_generates_nothing(tmp_path, monkeypatch):
    """The generated entries locate their data as the loaders do when told where it is:
    --data-path first, and `synth: null` reads $MCH_DATA/<name>."""
    from mch.manager import get_registry

    monkeypatch.setenv("MCH_DATA", str(tmp_path / "data"))
    spec = get_registry(refresh=True).datasets["synth-gqa"]
    mine = synth.make("gqa", tmp_path / "mine", images=2)
    ds = load_entry(spec.entry)(spec, path=str(mine))
    assert len(ds.samples(None, None, 0, "default")) == 10 and ds.root() == mine
    with pytest.raises(MchError, match=r"\$MCH_DATA/synth-gqa \(.*\) does not exist"):
        load_entry(spec.entry)(spec, synth=None).samples(None, None, 0, "default")
    assert not (tmp_path / "data").exists()


def test_commands_list_and_make(tmp_path):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("noop")(lambda: None)
    commands.mch_register_commands(app)
    r = CliRunner().invoke(app, ["data", "list"])
    assert r.exit_code == 0 and all(n in r.output for n in synth.GENERATORS)
    r = CliRunner().invoke(
        app,
        ["data", "make", "coco", "--out", str(tmp_path / "c"), "-p", "counts=[7,2]", "-p", "width=96", "--seed", "5"],
    )
    assert r.exit_code == 0, r.output
    assert "--data-path" in r.output and (tmp_path / "c" / "val2017").is_dir()
    m = synth.read_manifest(tmp_path / "c")
    assert m["params"] == {"counts": [7, 2], "width": 96, "seed": 5} and [i["count"] for i in m["images"]] == [7, 2]
    r = CliRunner().invoke(app, ["data", "make", "nope", "--out", str(tmp_path / "n")])
    assert r.exit_code != 0 and isinstance(r.exception, MchError)
    assert commands.parse_params(["a=1", "b=x y", "c=[1,2]"]) == {"a": 1, "b": "x y", "c": [1, 2]}
    with pytest.raises(MchError, match="KEY=VALUE"):
        commands.parse_params(["novalue"])


def test_commands_module_is_import_light():
    """`mch data` is mounted at every start of `mch`: neither numpy & co. nor the writers."""
    code = (
        "import sys, mch.plugins.attributes.commands; "
        "heavy = [m for m in ('numpy', 'torch', 'scipy', 'PIL', 'soundfile', 'mch.plugins.attributes.synth') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_engine(tmp_path):
    out = synth.make("cremad", tmp_path / "c", actors=1, sentences=["DFA"], emotions=["ANG", "SAD"], engine="espeak")
    assert synth.read_manifest(out)["engine"] == "espeak"
    ang, sr = sf.read(out / "AudioWAV" / "1001_DFA_ANG_XX.wav", dtype="float32")
    sad, _ = sf.read(out / "AudioWAV" / "1001_DFA_SAD_XX.wav", dtype="float32")
    assert sr == 16000 and np.sqrt(np.mean(ang**2)) > 2 * np.sqrt(np.mean(sad**2)) and len(sad) > len(ang)


def test_auto_engine_without_espeak(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on PATH
    out = synth.make("cremad", tmp_path / "c", actors=1, sentences=["DFA"], emotions=["NEU"])
    assert synth.read_manifest(out)["engine"] == "numpy"
    with pytest.raises(MchError, match="espeak-ng"):
        synth.make("cremad", tmp_path / "d", actors=1, sentences=["DFA"], emotions=["NEU"], engine="espeak")
    assert os.listdir(out / "AudioWAV") == ["1001_DFA_NEU_XX.wav"]
