"""Shared dataset machinery: media readers and their errors, lexical rules, selection."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mch.api import MchError, SampleError
from mch.plugins.attributes._corpus import majority, select
from mch.plugins.attributes._lexical import (
    content_tokens,
    first_top_k_labels,
    lexical_attribute,
    lexical_labels,
    paper_tokens,
)
from mch.plugins.attributes._media import read_audio, read_image, resample


def _tone(sr: int = 16000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _expect_sample_error(fn, sid: str, path, words: str) -> SampleError:
    with pytest.raises(SampleError) as ei:
        fn()
    err = ei.value
    assert err.sample_id == sid and err.path == str(path)
    assert sid in str(err) and str(path) in str(err) and words in str(err)
    return err


# --------------------------------------------------------------------------- audio


def test_read_audio_roundtrip_mono_and_rates(tmp_path):
    y = _tone()
    sf.write(tmp_path / "a.wav", y, 16000, subtype="PCM_16")
    wave, sr = read_audio(tmp_path / "a.wav", "a", expected_rate=16000)
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == y.shape
    assert np.max(np.abs(wave - y)) < 1e-3
    stereo = np.stack([y, -y * 0.5], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 16000)
    wave, _ = read_audio(tmp_path / "s.flac", "s")
    assert wave.ndim == 1 and np.allclose(wave, (y - y * 0.5) / 2, atol=1e-3)
    wave, sr = read_audio(tmp_path / "a.wav", "a", target_rate=8000)
    assert sr == 8000 and len(wave) == len(y) // 2


def test_resample_44k1_to_16k_keeps_a_tone():
    sr = 44100
    t = np.arange(sr) / sr
    y = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    z = resample(y, sr, 16000)
    assert len(z) == 16000 and z.dtype == np.float32
    spec = np.abs(np.fft.rfft(z[2000:14000]))
    assert abs(np.argmax(spec) * 16000 / 12000 - 1000) < 3


def test_empty_audio_file(tmp_path):
    p = tmp_path / "e.wav"
    p.write_bytes(b"")
    _expect_sample_error(lambda: read_audio(p, "e"), "e", p, "empty")
    sf.write(tmp_path / "z.wav", np.zeros(0, np.float32), 16000)
    _expect_sample_error(lambda: read_audio(tmp_path / "z.wav", "z"), "z", tmp_path / "z.wav", "empty")


def test_truncated_wav_and_flac(tmp_path):
    y = _tone(seconds=1.0)
    for ext in ("wav", "flac"):
        full = tmp_path / f"full.{ext}"
        sf.write(full, y, 16000, subtype="PCM_16")
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        err = _expect_sample_error(lambda: read_audio(cut, "cut"), "cut", cut, "")
        assert "truncated" in str(err) or "cannot be decoded" in str(err)
    # libsndfile alone would have returned half the samples for the WAV
    assert "truncated" in str(pytest.raises(SampleError, read_audio, tmp_path / "cut.wav", "cut").value)


def test_streamed_wav_with_unknown_size_reads(tmp_path):
    """Tools writing to a pipe (espeak-ng --stdout) put a huge placeholder in the data size."""
    sf.write(tmp_path / "s.wav", _tone(), 16000, subtype="PCM_16")
    b = bytearray((tmp_path / "s.wav").read_bytes())
    i = b.index(b"data")
    b[i + 4 : i + 8] = (0x7FFFF000).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(b))
    wave, sr = read_audio(tmp_path / "s.wav", "s")
    assert sr == 16000 and len(wave) == 8000


def test_corrupt_and_missing_audio(tmp_path):
    p = tmp_path / "g.wav"
    p.write_bytes(b"definitely not audio" * 50)
    _expect_sample_error(lambda: read_audio(p, "g"), "g", p, "cannot be decoded")
    q = tmp_path / "none.wav"
    _expect_sample_error(lambda: read_audio(q, "none"), "none", q, "does not exist")


def test_wrong_sample_rate(tmp_path):
    p = tmp_path / "r.wav"
    sf.write(p, _tone(22050), 22050)
    err = _expect_sample_error(lambda: read_audio(p, "r", expected_rate=16000), "r", p, "22050 Hz")
    assert "16000 Hz" in str(err)


def test_audio_bytes_source(tmp_path):
    sf.write(tmp_path / "b.flac", _tone(), 16000)
    wave, sr = read_audio((tmp_path / "b.flac").read_bytes(), "b", display_path="x/b.flac")
    assert sr == 16000 and len(wave) == 8000
    _expect_sample_error(lambda: read_audio(b"", "b", display_path="x/b.flac"), "b", "x/b.flac", "empty")


# --------------------------------------------------------------------------- images


def test_read_image_rgb_and_errors(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png", "g")
    assert im.mode == "RGB" and im.size == (20, 10)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage" * 30)
    _expect_sample_error(lambda: read_image(bad, "bad"), "bad", bad, "cannot be read")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "f.jpg").read_bytes()[:600])
    _expect_sample_error(lambda: read_image(cut, "cut"), "cut", cut, "cannot be read")
    _expect_sample_error(lambda: read_image(tmp_path / "f.jpg", "f", (32, 32)), "f", tmp_path / "f.jpg", "64x64")
    _expect_sample_error(lambda: read_image(tmp_path / "no.jpg", "no"), "no", tmp_path / "no.jpg", "does not exist")


# --------------------------------------------------------------------------- lexical rules


def test_paper_lexical_rule_first_top_word_with_tie_order():
    texts = ["Don't forget a jacket", "the cat sat", "a cat and the dog"]
    labels, vocab = first_top_k_labels(texts, paper_tokens, k=3)
    # tokens: don t forget a jacket / the cat sat / a cat and the dog; a, the, cat occur twice,
    # ties keep first-seen order (a before the before cat)
    assert vocab == ["a", "the", "cat"]
    assert labels == ["a", "the", "a"]
    assert paper_tokens("It's eleven o'clock.") == ["it", "s", "eleven", "o", "clock"]


def test_default_lexical_rule_removes_stop_words():
    assert content_tokens("I think I have a doctor's appointment.") == ["think", "doctor", "appointment"]
    assert content_tokens("HE HOPED THERE WOULD BE STEW FOR DINNER") == ["hoped", "stew", "dinner"]
    labels, vocab = lexical_labels(["The dog ran", "A dog sat", "the the the", "cats ran"], "default")
    assert labels == ["dog", "dog", "", "cats"] and vocab[0] == "dog"
    assert majority(labels) == ("dog", 2 / 3)


def test_lexical_attribute_declares_rank_order_and_majority():
    a = lexical_attribute(["b", "a", "b", ""], ["b", "a", "c"], "default", "Q", "g", "transcript")
    assert a.classes == ["b", "a"] and a.verbalizers == {"b": ["b"], "a": ["a"]}
    assert "'b' = 66.7%" in a.description and set(a.label_rule) == {"default", "paper"}


# --------------------------------------------------------------------------- selection


def _items():
    return [{"id": f"s{i:03d}", "cls": f"c{i % 4}", "grp": f"g{i % 10}"} for i in range(80)]


def _sel(items, limit, seed):
    return select(items, limit, seed, key=lambda x: x["id"], stratum=lambda x: x["cls"], group=lambda x: x["grp"])


def test_select_all_is_sorted_and_limit_balanced_and_deterministic():
    items = _items()
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert [x["id"] for x in _sel(shuffled, None, 0)] == [x["id"] for x in items]
    a = _sel(items, 20, seed=1)
    assert [x["id"] for x in a] == [x["id"] for x in _sel(shuffled, 20, seed=1)]  # listing order irrelevant
    assert [x["id"] for x in a] == sorted(x["id"] for x in a)
    counts = {c: sum(x["cls"] == c for x in a) for c in ("c0", "c1", "c2", "c3")}
    assert set(counts.values()) == {5}  # round-robin over classes
    for c in counts:  # and within a class, over its groups
        grps = [x["grp"] for x in a if x["cls"] == c]
        assert len(set(grps)) == len(grps)
    b = _sel(items, 20, seed=2)
    assert [x["id"] for x in a] != [x["id"] for x in b]
    with pytest.raises(MchError, match="--limit"):
        _sel(items, 0, 0)


def test_select_uneven_strata_fills_limit():
    items = [{"id": f"a{i}", "cls": "big", "grp": str(i)} for i in range(30)] + [
        {"id": f"b{i}", "cls": "small", "grp": str(i)} for i in range(3)
    ]
    out = _sel(items, 10, 0)
    assert len(out) == 10 and sum(x["cls"] == "small" for x in out) == 3
