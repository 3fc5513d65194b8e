"""Writing files safely: atomic writes that honour the umask, writability checks made before
any work, and a per-entry lock that vanishes with its process.

Every file mch writes (result records, store chunks, matrices and manifests, leaderboard
entries, the page's JSON) goes through `atomic_write`: a temporary file in the same
directory, renamed over the target once complete, so a reader never sees half a file. The
temporary file is created with mode 0666 and the process umask applied by the kernel (what
`open()` does), not 0600 as `tempfile.mkstemp` would: shared stores and served pages stay
readable by the group or the world when the umask says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .api import MchError


class LockBusy(MchError):
    """Another process holds the lock and we were asked not to wait."""


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], object], replace: bool = True) -> None:
    """Write `path` atomically: `write(f)` fills a temporary binary file beside it, which is
    synced and renamed over `path`. The directory must exist or is created. With
    `replace=False` an existing `path` is never overwritten (FileExistsError), even by a
    process racing for the same name: the file is hard-linked into place, which fails if the
    name is taken (where the filesystem has no hard links: checked, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:  # pragma: no cover - a random-name collision
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # FileExistsError when another writer took the name first
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_json(path: Path | str, obj: Any, replace: bool = True) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data), replace)


def _under_a_file(path: Path) -> Path | None:
    """The first ancestor of `path` (or `path` itself) that exists and is not a directory."""
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def ensure_writable_dir(path: Path | str, what: str, fix: str) -> Path:
    """Create directory `path` if needed and prove that a file can be written in it, by writing
    one (os.access says yes to root on a read-only mount and on a mode-0500 directory). Any
    failure is one sentence naming `what` (e.g. "results directory") and `fix`."""
    path = Path(path).expanduser()
    blocker = _under_a_file(path)
    if blocker is not None:
        where = "is a file" if blocker == path else f"is under {blocker}, which is a file"
        raise MchError(f"the {what} {path} {where}, not a directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mch-write-test.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MchError(f"the {what} {path} is not writable ({_why(exc)}); {fix}") from None
    return path


def ensure_writable_file(path: Path | str, flag: str = "--out") -> Path:
    """Check, before any work, that file `path` can be written: not a directory, and its
    directory creatable and writable. A failure is one sentence naming `flag`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MchError(f"{flag} {path} is a directory; pass the path of the file to write (in it or elsewhere)")
    ensure_writable_dir(path.parent, f"directory of {flag}", f"pass {flag} with a file in a writable directory")
    return path


def _why(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def locked(
    lock_path: Path,
    what: str,
    log: Callable[[str], None] = lambda s: None,
    wait: bool | None = None,
    busy_hint: str = "wait for it to finish or stop it",
) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `lock_path` (created if needed) for the block. The
    kernel drops the lock when its process dies, even by SIGKILL, so no lock is ever stale.

    When another process holds it: wait (saying so once, through `log`), or with `wait`
    False (default: $MCH_STORE_WAIT=0) fail at once with one sentence naming its pid. The lock
    file stays in place: deleting a lock file that another process waits on would let a third
    one lock a new file beside it."""
    import fcntl

    if wait is None:
        wait = os.environ.get("MCH_STORE_WAIT", "1").strip().lower() not in ("0", "no", "false")
        if not wait:
            busy_hint += ", or unset MCH_STORE_WAIT to wait for it"
    said = False
    while True:
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # its directory was removed while we waited: make it again
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise MchError(f"cannot lock {what} ({lock_path}: {_why(exc)})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                if not wait:
                    raise LockBusy(f"another mch process is writing {what} (pid {pid}); {busy_hint}") from None
                if not said:
                    log(f"waiting for another mch process (pid {pid}) that is writing {what}")
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # `mch store rm` may have removed the file while we waited: lock the one now at the path
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote into the lock file ("unknown" if not yet written)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def is_locked(lock_path: Path) -> str | None:
    """The pid holding `lock_path`, or None when no process holds it (used by `mch store rm`)."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
