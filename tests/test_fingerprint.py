"""mch.fingerprint: what identifies a checkpoint's files and a sample's media (store keys,
result provenance), in the fast mode and under MCH_FINGERPRINT=full."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from mch import fingerprint as fp
from mch.api import MchError


def safetensors(path: Path, shape: tuple[int, ...], fill: int = 0) -> None:
    """A valid safetensors file of one float32 tensor (written by hand: its header is the point)."""
    n = 4
    for d in shape:
        n *= d
    header = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes([fill]) * n)


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 4}')
    safetensors(d / "model.safetensors", (4, 4))
    return d


def test_small_files_are_hashed_whole_and_portable(ckpt):
    a = fp.checkpoint_fingerprint([ckpt])
    assert a.startswith("sha256:")
    os.utime(ckpt / "model.safetensors", ns=(1, 1))  # another mtime, the same bytes: the same files
    assert fp.checkpoint_fingerprint([ckpt]) == a
    safetensors(ckpt / "model.safetensors", (4, 4), fill=7)  # other weights, same shapes, same path
    assert fp.checkpoint_fingerprint([ckpt]) != a
    (ckpt / ".git").mkdir()  # hidden: not part of the checkpoint
    (ckpt / ".git" / "index").write_text("x")
    b = fp.checkpoint_fingerprint([ckpt])
    (ckpt / "config.json").write_text('{"hidden_size": 5}')
    assert fp.checkpoint_fingerprint([ckpt]) != b


def test_large_files_use_size_mtime_and_the_safetensors_header(ckpt, monkeypatch):
    monkeypatch.setattr(fp, "SMALL_FILE", 0)  # every file counts as large
    w = ckpt / "model.safetensors"
    os.utime(w, ns=(10**18, 10**18))
    a = fp.checkpoint_fingerprint([ckpt])
    assert a.startswith("stat:")
    assert fp.checkpoint_fingerprint([ckpt]) == a  # nothing changed: the same key, nothing re-read
    safetensors(w, (4, 4), fill=7)  # rebuilt in place: same size and header, a new mtime
    assert fp.checkpoint_fingerprint([ckpt]) != a
    safetensors(w, (2, 8))  # other shapes, same size; mtime forced equal: the header tells them apart
    os.utime(w, ns=(10**18, 10**18))
    assert fp.checkpoint_fingerprint([ckpt]) != a
    safetensors(w, (4, 4), fill=9)  # same size, header and mtime, other bytes: only the full mode sees it
    os.utime(w, ns=(10**18, 10**18))
    assert fp.checkpoint_fingerprint([ckpt]) == a
    monkeypatch.setenv("MCH_FINGERPRINT", "full")
    full = fp.checkpoint_fingerprint([ckpt])
    assert full.startswith("sha256:") and full != a
    safetensors(w, (4, 4), fill=0)
    os.utime(w, ns=(10**18, 10**18))
    assert fp.checkpoint_fingerprint([ckpt]) != full


def test_hugging_face_cache_blobs_are_named_by_their_content(tmp_path, monkeypatch):
    """A snapshot links into blobs/ named by the hash of their content: the fingerprint reads
    the names (no byte read, the same on every machine that downloaded that revision)."""
    monkeypatch.setattr(fp, "SMALL_FILE", 0)
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    blob = repo / "blobs" / ("a" * 64)
    safetensors(blob, (4, 4))
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    a = fp.checkpoint_fingerprint([snap])
    assert a.startswith("sha256:")
    os.utime(blob, ns=(5, 5))
    assert fp.checkpoint_fingerprint([snap]) == a
    other = repo / "blobs" / ("b" * 64)  # a new revision's weights
    safetensors(other, (4, 4), fill=1)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(os.path.relpath(other, snap))
    assert fp.checkpoint_fingerprint([snap]) != a


def test_missing_paths_and_files(tmp_path, ckpt):
    assert fp.checkpoint_fingerprint([tmp_path / "nope"]) != fp.checkpoint_fingerprint([ckpt])
    assert fp.checkpoint_fingerprint([ckpt / "config.json"]).startswith("sha256:")  # a single file


def test_media_fingerprint(tmp_path, monkeypatch):
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.wav"
        f.write_bytes(bytes([i]) * 100)
        files.append(f)
    pairs = [(f"s{i}", [str(f)]) for i, f in enumerate(files)]
    assert fp.media_fingerprint([("a", []), ("b", [])]) is None  # media made in code
    a = fp.media_fingerprint(pairs)
    assert a.startswith("stat:") and fp.media_fingerprint(pairs) == a
    st0 = files[0].stat()
    os.utime(files[0], ns=(st0.st_atime_ns, st0.st_mtime_ns + 10**9))  # rewritten: a new mtime
    assert fp.media_fingerprint(pairs) != a
    os.utime(files[0], ns=(st0.st_atime_ns, st0.st_mtime_ns))
    assert fp.media_fingerprint(pairs) == a
    st = files[1].stat()
    files[1].write_bytes(b"\1" * 50)  # truncated in place
    assert fp.media_fingerprint(pairs) != a
    files[1].write_bytes(b"\2" * 100)  # edited in place, same size, mtime restored: only full sees it
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp.media_fingerprint(pairs) == a
    monkeypatch.setenv("MCH_FINGERPRINT", "full")
    full = fp.media_fingerprint(pairs)
    assert full.startswith("sha256:")
    files[1].write_bytes(b"\1" * 100)
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp.media_fingerprint(pairs) != full
    monkeypatch.delenv("MCH_FINGERPRINT")
    b = fp.media_fingerprint(pairs)
    files[2].unlink()
    assert fp.media_fingerprint(pairs) != b


def test_unknown_mode_is_one_sentence(monkeypatch, ckpt):
    monkeypatch.setenv("MCH_FINGERPRINT", "quick")
    with pytest.raises(MchError, match="MCH_FINGERPRINT='quick'.*fast.*full"):
        fp.checkpoint_fingerprint([ckpt])


def test_sockets_and_fifos_are_never_opened(tmp_path, ckpt):
    """`--checkpoint` on a directory holding a socket or a FIFO: opening the socket raised an
    OSError traceback, opening the FIFO blocked forever; they are named by their type instead."""
    import socket
    import threading

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(ckpt / "sock"))
    os.mkfifo(ckpt / "fifo")
    got: list = []
    t = threading.Thread(target=lambda: got.append(fp.checkpoint_fingerprint([ckpt])), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the thread ends, then fail
        with open(ckpt / "fifo", "wb"):
            pass
        pytest.fail("the fingerprint opened a FIFO")
    s.close()
    assert got and got[0].startswith("sha256:")


def test_an_unreadable_checkpoint_file_is_one_sentence(ckpt, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fp, "file_sha256", denied)
    fp._content.clear()
    with pytest.raises(MchError, match=r"checkpoint file .*config.json cannot be read \(Permission denied\)"):
        fp.checkpoint_fingerprint([ckpt])


def test_a_directory_that_is_not_a_checkpoint_is_refused_before_its_files_are_read(tmp_path, monkeypatch):
    """`--checkpoint /tmp`: the plugin's checkpoint shape is checked first (an HF model needs
    config.json at the top), so no file of the directory is hashed."""
    from mch.api import ModelSpec
    from mch.plugins.models.llava import Llava
    from mch.store_key import plugin_fingerprint

    spec = ModelSpec(
        name="llava", entry="mch.plugins.models.llava:Llava", modality="vision", checkpoint="llava-hf/llava-1.5-7b-hf"
    )
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "a.bin").write_bytes(b"x" * 10)
    monkeypatch.setattr(fp, "checkpoint_fingerprint", lambda paths: pytest.fail(f"hashed {paths}"))
    with pytest.raises(MchError, match=r"--checkpoint .*big is not a checkpoint directory \(no config.json"):
        plugin_fingerprint(Llava(spec, checkpoint=str(tmp_path / "big")))
