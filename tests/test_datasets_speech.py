"""Speech loaders on corpora generated in the real layouts: exact labels, selection, bad input."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import soundfile as sf

from mch.api import DatasetSpec, MchError, SampleError
from mch.plugins.attributes import synth
from mch.plugins.attributes.cremad import EMOTIONS, CremaD, parse_name, sentence_verbalizers
from mch.plugins.attributes.esc50 import CATEGORIES, ESC50
from mch.plugins.attributes.librispeech import LibriSpeech, sentence_case
from mch.plugins.attributes.voxceleb1 import VoxCeleb1


def spec(name: str) -> DatasetSpec:
    return DatasetSpec(name=name, entry="x:y", modality="speech", attributes=())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("speech")
    return {
        "cremad": synth.make("cremad", base / "cremad", actors=2, sentences=["IEO", "DFA"], engine="numpy"),
        "librispeech": synth.make(
            "librispeech", base / "librispeech", speakers=2, chapters=2, utterances=3, engine="numpy"
        ),
        "esc50": synth.make("esc50", base / "esc50", classes=3, seconds=1.0),
        "voxceleb1": synth.make(
            "voxceleb1", base / "voxceleb1", speakers=3, videos=2, utterances=2, first_id=10268, engine="numpy"
        ),
    }


@pytest.fixture
def copy_of(corpora, tmp_path):
    def make(name: str):
        return shutil.copytree(corpora[name], tmp_path / name)

    return make


def load_error(sample) -> SampleError:
    with pytest.raises(SampleError) as ei:
        _ = sample.media
    return ei.value


# --------------------------------------------------------------------------- CREMA-D


def test_cremad_code_map_and_file_name():
    assert EMOTIONS == {
        "ANG": "anger",
        "DIS": "disgust",
        "FEA": "fear",
        "HAP": "happy",
        "NEU": "neutral",
        "SAD": "sadness",
    }
    assert parse_name("1001_DFA_ANG_XX") == {
        "actor": "1001",
        "sentence": "DFA",
        "emotion": "anger",
        "level": "unspecified",
        "emotion_code": "ANG",
        "level_code": "XX",
    }
    assert parse_name("1091_IEO_SAD_HI")["level"] == "high"
    v = sentence_verbalizers(["ITH", "ITS", "IEO"])
    assert v["ITH"] == ["doctor", "appointment"] and v["ITS"] == ["seen"]  # "think" is shared


def test_cremad_labels_exact(corpora):
    ds = CremaD(spec("cremad"), path=str(corpora["cremad"]))
    samples = {s.sample_id: s for s in ds.samples(None, None, 0, "default")}
    assert len(samples) == 2 * 2 * 6
    s = samples["1001_DFA_ANG_XX"]
    assert s.labels == {"emotion": "anger", "speaker": "1001", "lexical": "DFA"}
    assert s.groups["actor"] == "1001" and s.groups["sentence"] == "DFA"
    assert s.text == "Don't forget a jacket."
    wave, sr = s.media
    assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1 and 0.5 < len(wave) / sr < 4
    attrs = ds.attributes("default")
    assert attrs["emotion"].classes == ["anger", "disgust", "fear", "happy", "neutral", "sadness"]
    assert attrs["emotion"].verbalizers["anger"][:2] == ["angry", "furious"]
    assert attrs["emotion"].group_key == "actor" and attrs["lexical"].group_key == "actor"
    assert attrs["speaker"].classes == ["1001", "1002"] and attrs["lexical"].classes == ["IEO", "DFA"]
    assert attrs["lexical"].verbalizers["DFA"] == ["forget", "jacket"]
    # paper: the reference's first top-50 word of the sentence text
    paper = {s.sample_id: s for s in ds.samples(None, None, 0, "paper")}
    assert paper["1001_DFA_ANG_XX"].labels["lexical"] == "don"
    assert paper["1002_IEO_NEU_XX"].labels["lexical"] == "it"
    # frequency rank, ties in first-seen order (files are read in sorted name order: DFA before IEO)
    assert ds.attributes("paper")["lexical"].classes == ["don", "it"]
    assert "first top-50" in ds.attributes("paper")["lexical"].label_rule["paper"]


def test_cremad_limit_is_balanced_and_deterministic(corpora):
    a = CremaD(spec("cremad"), path=str(corpora["cremad"])).samples(None, 12, 3, "default")
    b = CremaD(spec("cremad"), path=str(corpora["cremad"])).samples(None, 12, 3, "default")
    assert [s.sample_id for s in a] == [s.sample_id for s in b]
    assert sorted(s.labels["emotion"] for s in a) == sorted(list(EMOTIONS.values()) * 2)
    for emo in EMOTIONS.values():  # the two clips of each emotion come from the two actors
        assert {s.groups["actor"] for s in a if s.labels["emotion"] == emo} == {"1001", "1002"}
    c = CremaD(spec("cremad"), path=str(corpora["cremad"])).samples(None, 12, 4, "default")
    assert [s.sample_id for s in a] != [s.sample_id for s in c]


def test_cremad_bad_inputs(copy_of):
    root = copy_of("cremad")
    wav = root / "AudioWAV"
    (wav / "1001_IEO_ANG_XX.wav").write_bytes(b"")  # empty
    full = (wav / "1001_IEO_DIS_XX.wav").read_bytes()
    (wav / "1001_IEO_DIS_XX.wav").write_bytes(full[: len(full) // 3])  # truncated
    (wav / "1001_IEO_FEA_XX.wav").write_bytes(b"RIFF" + b"\x13" * 500)  # corrupt
    sf.write(wav / "1001_IEO_HAP_XX.wav", np.zeros(8000, np.float32) + 0.1, 22050)  # wrong rate
    shutil.copy(wav / "1001_DFA_ANG_XX.wav", wav / "1001_DFA_XYZ_XX.wav")  # label outside
    shutil.copy(wav / "1001_DFA_ANG_XX.wav", wav / "1001_QQQ_ANG_XX.wav")  # unknown sentence
    shutil.copy(wav / "1001_DFA_ANG_XX.wav", wav / "not-a-crema-name.wav")  # no labels at all
    ds = CremaD(spec("cremad"), path=str(root))
    samples = {s.sample_id: s for s in ds.samples(None, None, 0, "default")}
    expect = {
        "1001_IEO_ANG_XX": "empty",
        "1001_IEO_DIS_XX": "truncated",
        "1001_IEO_FEA_XX": "cannot be decoded",
        "1001_IEO_HAP_XX": "22050 Hz",
        "1001_DFA_XYZ_XX": "outside its declared classes",
        "1001_QQQ_ANG_XX": "not one of CREMA-D's 12 sentences",
        "not-a-crema-name": "does not follow",
    }
    for sid, words in expect.items():
        err = load_error(samples[sid])
        assert err.sample_id == sid and err.path == str(wav / f"{sid}.wav"), sid
        assert words in str(err) and sid in str(err) and str(wav / f"{sid}.wav") in str(err), (sid, str(err))
    for sid in ("1001_DFA_XYZ_XX", "1001_QQQ_ANG_XX", "not-a-crema-name"):  # found when listing: no labels
        assert all(v == "" for v in samples[sid].labels.values()) and "error" in samples[sid].meta
    assert "XYZ" not in ds.attributes("default")["emotion"].classes
    assert samples["1001_IEO_NEU_XX"].media[1] == 16000  # the others still load
    assert CremaD(spec("cremad"), path=str(root), native_rate=0).samples(None, None, 0, "default")


def test_missing_data_path_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("MCH_DATA", raising=False)
    with pytest.raises(MchError, match=r"--data-path DIR .*AudioWAV"):
        CremaD(spec("cremad")).samples(None, None, 0, "default")
    monkeypatch.setenv("MCH_DATA", str(tmp_path))
    with pytest.raises(MchError, match=r"\$MCH_DATA/cremad"):
        CremaD(spec("cremad")).attributes("default")
    with pytest.raises(MchError, match="does not exist"):
        CremaD(spec("cremad"), path=str(tmp_path / "nope")).attributes("default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MchError, match="no .wav files"):
        CremaD(spec("cremad"), path=str(tmp_path / "empty")).attributes("default")
    (tmp_path / "cremad").mkdir()
    (tmp_path / "cremad" / "1001_DFA_ANG_XX.wav").write_bytes(b"")
    assert [s.sample_id for s in CremaD(spec("cremad")).samples(None, None, 0, "default")] == ["1001_DFA_ANG_XX"]


# --------------------------------------------------------------------------- LibriSpeech


def test_librispeech_labels_exact(corpora):
    root = corpora["librispeech"]
    truth = synth.read_manifest(root)["utterances"]
    ds = LibriSpeech(spec("librispeech"), path=str(root))
    samples = {s.sample_id: s for s in ds.samples(None, None, 0, "default")}
    assert sorted(samples) == sorted(t["id"] for t in truth) and len(samples) == 12
    t = truth[4]
    s = samples[t["id"]]
    assert s.labels["speaker"] == t["speaker"] and t["id"].startswith(f"{t['speaker']}-{t['chapter']}-")
    assert s.groups == {"speaker": t["speaker"], "chapter": f"{t['speaker']}-{t['chapter']}", "utterance": t["id"]}
    line = next(
        ln
        for ln in (root / "test-clean" / t["speaker"] / t["chapter"] / f"{t['speaker']}-{t['chapter']}.trans.txt")
        .read_text()
        .splitlines()
        if ln.startswith(t["id"] + " ")
    )
    assert line == f"{t['id']} {t['text']}" and s.meta["transcript"] == t["text"]
    assert s.text == sentence_case(t["text"]) and s.text[0].isupper() and s.text[1:] == s.text[1:].lower()
    wave, sr = s.media
    assert sr == 16000 and len(wave) > 8000
    attrs = ds.attributes("default")
    assert attrs["speaker"].classes == sorted({t["speaker"] for t in truth})
    assert attrs["speaker"].verbalizers[truth[0]["speaker"]] == ["Synthetic Reader 1"]  # from SPEAKERS.TXT
    assert attrs["lexical"].group_key == "chapter"
    paper = {s.sample_id: s for s in ds.samples(None, None, 0, "paper")}
    assert paper[t["id"]].text == t["text"]  # upper case, as stored
    assert paper[t["id"]].labels["lexical"] in {"the", "he", "and", "she", "in"}
    assert sentence_case("I THINK I SAW HIM") == "I think I saw him"


def test_librispeech_split_dir_and_missing_transcript(copy_of):
    root = copy_of("librispeech")
    ds = LibriSpeech(spec("librispeech"), path=str(root / "test-clean"))
    assert len(ds.samples(None, None, 0, "default")) == 12
    with pytest.raises(MchError, match="split 'dev-clean'"):
        LibriSpeech(spec("librispeech"), path=str(root)).samples("dev-clean", None, 0, "default")
    tf = next((root / "test-clean").glob("*/*/*.trans.txt"))
    lines = tf.read_text().splitlines()
    tf.write_text("\n".join(lines[1:]) + "\n")  # first utterance loses its transcript
    flac = tf.parent / f"{lines[0].split()[0]}.flac"
    full = flac.read_bytes()
    second = tf.parent / f"{lines[1].split()[0]}.flac"
    second.write_bytes(full[: len(full) // 2])
    samples = {
        s.sample_id: s for s in LibriSpeech(spec("librispeech"), path=str(root)).samples(None, None, 0, "default")
    }
    err = load_error(samples[flac.stem])
    assert "no transcript" in str(err) and err.path == str(flac)
    err = load_error(samples[second.stem])
    assert err.sample_id == second.stem and err.path == str(second)


def test_librispeech_from_datasets_save_to_disk(corpora, tmp_path):
    import datasets

    root = corpora["librispeech"]
    truth = synth.read_manifest(root)["utterances"]
    rows = {"audio": [], "text": [], "speaker_id": [], "chapter_id": [], "id": []}
    for t in truth:
        f = root / "test-clean" / t["speaker"] / t["chapter"] / f"{t['id']}.flac"
        rows["audio"].append({"bytes": f.read_bytes(), "path": f.name})
        rows["text"].append(t["text"])
        rows["speaker_id"].append(int(t["speaker"]))
        rows["chapter_id"].append(int(t["chapter"]))
        rows["id"].append(t["id"])
    # the librispeech_asr columns; audio stored as {bytes, path} as in its parquet files (encoding
    # through datasets.Audio would need torchcodec, which the loader itself never needs)
    audio = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    feats = datasets.Features(
        {
            "audio": audio,
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "chapter_id": datasets.Value("int64"),
            "id": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "hf"))
    hf = {
        s.sample_id: s
        for s in LibriSpeech(spec("librispeech"), path=str(tmp_path / "hf")).samples(None, None, 0, "default")
    }
    local = {s.sample_id: s for s in LibriSpeech(spec("librispeech"), path=str(root)).samples(None, None, 0, "default")}
    assert sorted(hf) == sorted(local)
    sid = truth[2]["id"]
    assert hf[sid].labels == local[sid].labels and hf[sid].text == local[sid].text
    assert np.array_equal(hf[sid].media[0], local[sid].media[0])


def test_librispeech_hf_id_offline_fails_fast(monkeypatch):
    import datasets.config as dc
    import huggingface_hub.constants as hc

    # as if the user had not set HF_HUB_OFFLINE: the loader must still not wait on the network
    monkeypatch.setattr(dc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    t = time.time()
    with pytest.raises(MchError) as ei:
        LibriSpeech(spec("librispeech"), path="openslr/librispeech_asr").samples(None, 4, 0, "default")
    assert time.time() - t < 20
    msg = str(ei.value)
    assert "openslr/librispeech_asr" in msg and "--data-path DIR" in msg and "\n" not in msg
    assert dc.HF_HUB_OFFLINE is False  # restored


# --------------------------------------------------------------------------- ESC-50


def test_esc50_labels_folds_and_resampling(corpora):
    root = corpora["esc50"]
    ds = ESC50(spec("esc50"), path=str(root))
    samples = ds.samples(None, None, 0, "default")
    assert len(samples) == 15
    rows = (root / "meta" / "esc50.csv").read_text().splitlines()
    assert rows[0] == "filename,fold,target,category,esc10,src_file,take"
    for row in rows[1:]:
        fname, fold, target, cat, esc10, src, take = row.split(",")
        s = next(x for x in samples if x.sample_id == fname[:-4])
        assert s.labels == {"acoustic": cat} and s.groups["fold"] == fold
        assert CATEGORIES[int(target)] == cat and fname == f"{fold}-{src}-{take}-{target}.wav"
    assert sf.info(str(root / "audio" / rows[1].split(",")[0])).samplerate == 44100
    wave, sr = samples[0].media
    assert sr == 16000 and len(wave) == 16000 and samples[0].meta["resampler"] == "scipy.signal.resample_poly"
    native = ESC50(spec("esc50"), path=str(root), sample_rate=0).samples(None, 1, 0, "default")[0].media
    assert native[1] == 44100 and len(native[0]) == 44100
    a = ds.attributes("default")["acoustic"]
    assert a.classes == sorted({"dog", "rain", "siren"}) and a.group_key == "fold"
    assert a.verbalizers["dog"][0] == "a dog" and a.query == "This is the sound of"
    fold2 = ESC50(spec("esc50"), path=str(root)).samples("fold2", None, 0, "default")
    assert len(fold2) == 3 and {s.groups["fold"] for s in fold2} == {"2"}
    assert len(ESC50(spec("esc50"), path=str(root)).samples("1,3", None, 0, "default")) == 6
    assert {
        s.labels["acoustic"] for s in ESC50(spec("esc50"), path=str(root)).samples("esc10", None, 0, "default")
    } == {"dog", "rain"}
    with pytest.raises(MchError, match="split"):
        ESC50(spec("esc50"), path=str(root)).samples("fold9", None, 0, "default")


def test_esc50_bad_inputs(copy_of):
    root = copy_of("esc50")
    csv = root / "meta" / "esc50.csv"
    rows = csv.read_text().splitlines()
    f0, f1, f2 = (r.split(",")[0] for r in rows[1:4])
    (root / "audio" / f0).unlink()  # listed, missing
    sf.write(root / "audio" / f1, np.zeros(1000, np.float32), 16000)  # wrong rate
    bad = rows[3].split(",")
    bad[2] = "7"  # target disagrees
    rows[3] = ",".join(bad)
    csv.write_text("\n".join(rows) + "\n")
    samples = {s.sample_id: s for s in ESC50(spec("esc50"), path=str(root)).samples(None, None, 0, "default")}
    for fname, words in ((f0, "does not exist"), (f1, "16000 Hz but this corpus is 44100 Hz"), (f2, "disagree")):
        err = load_error(samples[fname[:-4]])
        assert err.sample_id == fname[:-4] and err.path == str(root / "audio" / fname) and words in str(err)
    with pytest.raises(MchError, match="esc50.csv"):
        (root / "meta" / "esc50.csv").write_text("filename,fold\nx.wav,1\n")
        ESC50(spec("esc50"), path=str(root)).samples(None, None, 0, "default")


# --------------------------------------------------------------------------- VoxCeleb1


def test_voxceleb1_speakers_splits_and_selection(corpora):
    root = corpora["voxceleb1"]
    ds = VoxCeleb1(spec("voxceleb1"), path=str(root))
    samples = ds.samples(None, None, 0, "default")
    assert len(samples) == 12
    s = samples[0]
    spk, video, utt = s.sample_id.split("/")
    assert s.labels == {"speaker": spk} and s.groups == {"speaker": spk, "video": f"{spk}/{video}"}
    assert s.meta["path"] == str(root / "wav" / spk / video / f"{utt}.wav")
    assert s.media[1] == 16000
    a = ds.attributes("default")["speaker"]
    assert a.classes == ["id10268", "id10269", "id10270"] and a.group_key == "video"
    assert a.verbalizers["id10268"] == ["Synth Voice 01"]  # vox1_meta.csv name
    test = VoxCeleb1(spec("voxceleb1"), path=str(root)).samples("test", None, 0, "default")
    assert {x.labels["speaker"] for x in test} == {"id10270"}
    dev = VoxCeleb1(spec("voxceleb1"), path=str(root / "wav")).samples("dev", None, 0, "default")
    assert {x.labels["speaker"] for x in dev} == {"id10268", "id10269"}
    few = VoxCeleb1(spec("voxceleb1"), path=str(root), n_speakers=2, samples_per_speaker=2).samples(
        None, None, 0, "default"
    )
    assert [x.labels["speaker"] for x in few] == ["id10268"] * 2 + ["id10269"] * 2
    for spk in ("id10268", "id10269"):  # round-robin: one utterance from each video
        assert len({x.groups["video"] for x in few if x.labels["speaker"] == spk}) == 2


def test_voxceleb1_corrupt_file(copy_of):
    root = copy_of("voxceleb1")
    f = sorted((root / "wav").glob("*/*/*.wav"))[0]
    f.write_bytes(f.read_bytes()[:100])
    samples = {s.sample_id: s for s in VoxCeleb1(spec("voxceleb1"), path=str(root)).samples(None, None, 0, "default")}
    sid = f"{f.parent.parent.name}/{f.parent.name}/{f.stem}"
    err = load_error(samples[sid])
    assert err.sample_id == sid and err.path == str(f)


def test_attributes_follow_the_split_chosen_later(corpora, tmp_path):
    """The runner asks for attributes before it picks the split: the objects it holds are
    updated when samples() moves to another split, and a lone split is the default."""
    dev = synth.make(
        "librispeech", tmp_path / "dev", speakers=2, chapters=1, utterances=2, split="dev-clean", engine="numpy", seed=9
    )
    root = shutil.copytree(corpora["librispeech"], tmp_path / "both")
    shutil.copytree(dev / "dev-clean", root / "dev-clean")
    ds = LibriSpeech(spec("librispeech"), path=str(root))
    held = ds.attributes("default")
    speaker = held["speaker"]
    test_speakers = list(speaker.classes)
    samples = ds.samples("dev-clean", None, 0, "default")
    dev_speakers = sorted({s.labels["speaker"] for s in samples})
    assert dev_speakers != test_speakers and speaker.classes == dev_speakers
    assert all(s.labels["lexical"] in held["lexical"].classes for s in samples if s.labels["lexical"])
    only_dev = LibriSpeech(spec("librispeech"), path=str(dev))
    assert only_dev.current_split() == "dev-clean"
    assert only_dev.attributes("default")["speaker"].classes == dev_speakers
