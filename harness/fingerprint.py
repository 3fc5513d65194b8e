"""Fingerprints of the files a run reads: a checkpoint's weights and configs, each sample's
media. Store keys hold them, so a checkpoint rebuilt in place (other weights, same path) or a
media file edited in place makes the next run re-extract instead of returning old vectors;
result records carry them as provenance (`model.checkpoint_fingerprint`,
`dataset.media_fingerprint`).

What identifies one file:

- checkpoint files (every regular file under the checkpoint's directories, hidden ones
  aside, symbolic links followed):
  - a Hugging Face cache blob: its blob name, the hash of its content the Hub gave it;
  - a file of at most 8 MiB (configs, tokenizers, small weights): the SHA-256 of its content;
  - a larger file: its size and modification time, plus the SHA-256 of its header when it is
    a `.safetensors` file (names, dtypes, shapes, offsets);
- media files: size and modification time.

`MCH_FINGERPRINT=full` hashes the whole content of every file instead (slow: it reads every
byte of a 7B checkpoint and of the corpus, on every run; switching it on or off changes the
keys of entries whose fingerprints involved a modification time, which are then extracted
again once).

A fingerprint reads `sha256:<hex>` when it derives from content alone (the same files give
the same string on any machine) and `stat:<hex>` when a modification time went in (local to
this machine: copying or re-downloading the same bytes changes it; different bytes never keep
it, short of a rewrite that keeps size, mtime and header).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from .api import MchError

SMALL_FILE = 8 << 20  # checkpoint files up to this size are hashed whole even in the fast mode
# sha256 of files already read by this process, by (realpath, size, mtime, ctime, inode): every
# write changes ctime, which no utime() can set back
_content: dict[tuple, str] = {}


def mode() -> str:
    """ "fast" (default) or "full", from $MCH_FINGERPRINT."""
    m = os.environ.get("MCH_FINGERPRINT", "").strip().lower() or "fast"
    if m not in ("fast", "full"):
        raise MchError(
            f"MCH_FINGERPRINT={os.environ['MCH_FINGERPRINT']!r} is not a fingerprint mode; "
            f"use fast (size + mtime, the default) or full (hash every byte)"
        )
    return m


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_file(path: str, st: os.stat_result) -> str:
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _content:
        _content[key] = file_sha256(path)
    return _content[key]


def _readable_sha256(path: str, st: os.stat_result) -> str:
    """`_sha256_file` of a checkpoint file, an unreadable one being one MchError."""
    try:
        return _sha256_file(path, st)
    except OSError as exc:
        raise MchError(
            f"checkpoint file {path} cannot be read ({exc.strerror or exc}); fix its permissions or pass "
            f"--checkpoint with the model's own directory"
        ) from None


def _safetensors_header(path: str) -> str | None:
    """SHA-256 of a safetensors file's JSON header, None if the file is not one."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100 << 20:
                return None
            return hashlib.sha256(f.read(n)).hexdigest()
    except OSError:
        return None


def _hf_blob(path: str) -> str | None:
    """The blob name of a file in a Hugging Face cache snapshot (a link into `blobs/`)."""
    if not os.path.islink(path):
        return None
    real = Path(os.path.realpath(path))
    return real.name if real.parent.name == "blobs" and len(real.name) >= 40 else None


def _files(root: Path) -> list[tuple[str, str]]:
    """(path relative to root, path) of every regular file under root (root itself if a file),
    sorted; hidden files and directories (.git, .cache) skipped; links followed once."""
    if root.is_file():
        return [(root.name, str(root))]
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                p = os.path.join(dirpath, name)
                out.append((os.path.relpath(p, root), p))
    return sorted(out)


def checkpoint_fingerprint(paths: Sequence[Path | str]) -> str:
    """The fingerprint of the files under `paths` (directories or files), as described above."""
    full = mode() == "full"
    h = hashlib.sha256()
    portable = True
    for i, root in enumerate(paths):
        root = Path(root).expanduser()
        if not root.exists():
            h.update(f"{i}\0absent\n".encode())
            continue
        for rel, p in _files(root):
            try:
                st = os.stat(p)
            except OSError:  # a dangling link
                h.update(f"{i}\0{rel}\0absent\n".encode())
                continue
            blob = _hf_blob(p)
            if not stat.S_ISREG(st.st_mode):  # a socket, FIFO or device: never opened (a FIFO blocks)
                ident = f"special:{stat.S_IFMT(st.st_mode):o}"
            elif blob is not None:
                ident = f"blob:{blob}"
            elif full or st.st_size <= SMALL_FILE:
                ident = f"sha256:{_readable_sha256(p, st)}"
            else:
                portable = False
                ident = f"mtime:{st.st_mtime_ns}"
                if p.endswith(".safetensors"):
                    ident += f":header:{_safetensors_header(p)}"
            h.update(f"{i}\0{rel}\0{st.st_size}\0{ident}\n".encode())
    return f"{'sha256' if portable else 'stat'}:{h.hexdigest()[:20]}"


def media_fingerprint(samples: Iterable[tuple[str, Sequence[str]]]) -> str | None:
    """The fingerprint of each sample's media files, given (sample id, files) pairs in sample
    order; None when no sample names a file (media made in code, e.g. the toy world). A file
    that does not exist counts as such, so one that appears or goes changes the fingerprint."""
    full = mode() == "full"
    h = hashlib.sha256()
    any_file = False
    for sid, files in samples:
        for f in files:
            any_file = True
            try:
                st = os.stat(f)
                ident = _sha256_file(f, st) if full and stat.S_ISREG(st.st_mode) else str(st.st_mtime_ns)
                h.update(f"{sid}\0{os.path.basename(f)}\0{st.st_size}\0{ident}\n".encode())
            except OSError:
                h.update(f"{sid}\0{os.path.basename(f)}\0absent\n".encode())
    if not any_file:
        return None
    return f"{'sha256' if full else 'stat'}:{h.hexdigest()[:20]}"


def texts_sha256(texts: Iterable[str]) -> str:
    """The paired texts (what the text view reads) of the samples, in order."""
    h = hashlib.sha256()
    for t in texts:
        h.update((t or "").encode())
        h.update(b"\0")
    return h.hexdigest()[:20]
