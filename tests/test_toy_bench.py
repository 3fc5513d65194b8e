"""The toy organisms as a validation bench (science.md §7): a positive control, the known
truth under the covariance and the functional split, the dose-response family and the
bound's gap against L·W1 (`mch toy-bench`), and the organisms' weights reproducible
bit-for-bit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_mch
from safetensors.torch import load_file

from mch.plugins.models.toy import ORGANISMS, WEIGHTS_ROOT, train_organism
from mch.plugins.models.toybench import run_family

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The toy and its positive control, each on the captions its adapter was trained on."""
    tmp = tmp_path_factory.mktemp("toybench")
    res = run_family(
        ["toy", "toy_emotion"], limit=400, out_dir=tmp / "r", store=tmp / "s", analyses=("gmi", "per_type", "gradient")
    )
    return {r["organism"]: r for r in res["rows"]}


def test_the_positive_control_makes_emotion_accessible(pair):
    toy, emo = pair["toy"], pair["toy_emotion"]
    assert toy["emotion_gmi_ci"][1] < 0.05  # the toy: emotion present, not accessible
    assert emo["emotion_gmi_ci"][0] > 0.2  # trained into the captions: accessible
    assert emo["content_gmi_bits"] > 1.5 and toy["content_gmi_bits"] > 1.5


def test_the_functional_split_recovers_the_known_truth_and_the_covariance_split_does_not(pair):
    """The decoder reads content, not speaker or emotion; the positive control reads emotion
    too. The functional split shows both: content's class scatter is the most read on the
    toy, and emotion's read share rises in toy_emotion. The covariance split (science.md §4,
    default) shows neither, on this organism: content comes out *more* MS than the hidden
    factors, and training emotion into the captions moves emotion's scatter toward MS. A
    finding about the construct: α measures alignment with the paired text's law, and the
    adapter's content directions are not the text embeddings' directions."""
    toy, emo = pair["toy"], pair["toy_emotion"]
    # functional: content read more than each hidden factor, with CIs apart
    for a in ("speaker", "emotion"):
        assert toy["content_read_share_ci"][0] > toy[f"{a}_read_share_ci"][1], a
    assert toy["known_truth_functional"] is True
    assert emo["emotion_read_share_ci"][0] > toy["emotion_read_share_ci"][1]
    # covariance: the opposite, on both counts
    assert toy["known_truth_covariance"] is False
    assert toy["content_ta_share"] < min(toy["speaker_ta_share"], toy["emotion_ta_share"])
    assert emo["emotion_ta_share"] < toy["emotion_ta_share"]


def test_toy_bench_command_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_mch(
        "toy-bench",
        "--organism",
        "toy",
        "--limit",
        "60",
        "--json",
        str(out),
        "--out",
        str(tmp_path / "r"),
        "--store",
        str(tmp_path / "s"),
        "-q",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "toy validation bench" in proc.stdout
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    for key in (
        "emotion_gmi_bits",
        "emotion_ta_share",
        "emotion_read_share",
        "logscore_gap",
        "L_W1",
        "tightness",
        "w1_excess",
    ):
        assert row[key] is not None, key
    assert row["tightness"] == pytest.approx(abs(row["logscore_gap"]) / row["L_W1"], rel=1e-9)
    assert len(list((tmp_path / "r").glob("toy__toy__*.json"))) == 4
    bad = run_mch("toy-bench", "--organism", "toy_nonesuch", "--limit", "60", "--store", str(tmp_path / "s"))
    assert bad.returncode == 2 and "toy_nonesuch" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_dose_response_family(tmp_path):
    """Emotion's GMI rises with the fraction of captions that name it (0, 10, 50, 100%)."""
    res = run_family(
        ["toy_emotion_0", "toy_emotion_10", "toy_emotion_50", "toy_emotion", "toy_scaled", "toy_rotated", "toy"],
        limit=400,
        out_dir=tmp_path / "r",
        store=tmp_path / "s",
    )
    fam = res["family"]
    assert fam["emotion_gmi_bits_monotone"] is True
    by = {r["organism"]: r for r in res["rows"]}
    assert by["toy_emotion"]["emotion_gmi_ci"][0] > by["toy_emotion_50"]["emotion_gmi_ci"][1]
    assert by["toy_emotion_50"]["emotion_gmi_ci"][0] > by["toy_emotion_0"]["emotion_gmi_ci"][1]
    assert fam["gap_vs_L_W1_spearman"]["n"] == 7


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ORGANISMS))
def test_organism_weights_reproduce_bit_for_bit(name, tmp_path):
    train_organism(name, tmp_path / name, log=lambda s: None)
    a = load_file(str(WEIGHTS_ROOT / name / "adapter.safetensors"))
    b = load_file(str(tmp_path / name / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((WEIGHTS_ROOT / name / "organism.json").read_text()) == json.loads(
        (tmp_path / name / "organism.json").read_text()
    )
