"""The table of writers, and the two ways to call one: `make` (a new directory) and `ensure`
(a directory reused while its manifest matches, else written afresh)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mch.api import MchError, Param
from mch.fsio import ensure_writable_dir

from .._synth_names import DESCRIPTIONS
from .scenes import SCENE_CATEGORIES, make_coco, make_gqa
from .sounds import SOUND_CLASSES, make_esc50
from .speech import make_cremad, make_librispeech, make_voxceleb1

MANIFEST = "mch_synth.json"
CREATED_BY = "mch.plugins.attributes.synth"  # the manifest's mark: `ensure` replaces only what it wrote

GENERATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "cremad": make_cremad,
    "esc50": make_esc50,
    "librispeech": make_librispeech,
    "voxceleb1": make_voxceleb1,
    "coco": make_coco,
    "gqa": make_gqa,
}


# Types and ranges of the generators' arguments beyond what their defaults say (mch.api.Param),
# checked before anything is written. Speech: the top formant band needs a rate above 8 kHz;
# ESC-50: rain's low-pass reaches 5 kHz (a rate above 10 kHz) and a bark lasts up to 0.25 s;
# images: icons need a few pixels.
_SPEECH = {"sample_rate": Param(int, gt=8000), "engine": Param(str, choices=("auto", "numpy", "espeak"))}
_IMAGES = {
    "images": Param(int, ge=1),
    "width": Param(int, ge=16),
    "height": Param(int, ge=16),
    "categories": Param((int, list), items=str, ge=1, le=len(SCENE_CATEGORIES), nullable=True),
}
GENERATOR_PARAMS: dict[str, dict[str, Param]] = {
    "cremad": {
        **_SPEECH,
        "actors": Param(int, ge=1),
        "sentences": Param((int, list), items=str, ge=1),
        "emotions": Param(list, items=str, nullable=True),
        "levels": Param(list, items=str, nullable=True),
    },
    "librispeech": {
        **_SPEECH,
        "speakers": Param(int, ge=1),
        "chapters": Param(int, ge=1),
        "utterances": Param(int, ge=1),
    },
    "voxceleb1": {**_SPEECH, "speakers": Param(int, ge=1), "videos": Param(int, ge=1), "utterances": Param(int, ge=1)},
    "esc50": {
        "classes": Param((int, list), items=str, ge=1, le=len(SOUND_CLASSES)),
        "folds": Param(int, ge=1, le=5),
        "clips_per_fold": Param(int, ge=1),
        "seconds": Param(float, ge=0.5),
        "sample_rate": Param(int, gt=10000),
    },
    "coco": {**_IMAGES, "counts": Param(list, items=int, ge=0, nullable=True)},
    "gqa": dict(_IMAGES),
}


def check_args(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Generator `name`'s keyword arguments in their types and ranges, or one sentence naming
    the bad one (or the unknown name); types come from each make_* signature's defaults."""
    import inspect

    from mch.api import check_values, param_table

    if name not in GENERATORS:
        raise MchError(f"unknown synthetic corpus {name!r}; choose one of {', '.join(GENERATORS)}")
    sig = inspect.signature(GENERATORS[name])
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    return check_values(f"synthetic corpus {name!r}", kw, param_table(defaults, GENERATOR_PARAMS.get(name)))


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, sort_keys=True, default=list))


def make(name: str, out_dir: str | os.PathLike, **kw: Any) -> Path:
    """Write corpus `name` (one of GENERATORS) into `out_dir`, which must be new or empty, and
    return its path. Keyword arguments are the generator's (see each make_* function); `seed`
    (default 0) makes it reproducible."""
    kw = check_args(name, kw)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MchError(f"{out} already exists and is not an empty directory; choose a new --out")
    ensure_writable_dir(out, "--out directory", "choose a writable --out")
    try:
        info = GENERATORS[name](out, **kw)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    manifest = {
        "generator": name,
        "params": _jsonable(kw),
        "created_by": CREATED_BY,
        "description": DESCRIPTIONS[name],
        **info,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def ensure(name: str, out_dir: str | os.PathLike, **kw: Any) -> Path:
    """`out_dir` holding corpus `name` with these parameters: reused when its manifest
    matches, otherwise generated (into a temporary sibling, then renamed, so a concurrent or
    interrupted run never leaves half a corpus)."""
    kw = check_args(name, kw)
    out = Path(out_dir).expanduser()
    m = read_manifest(out)
    if m is not None and m.get("generator") == name and m.get("params") == _jsonable(kw):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if m is None or m.get("created_by") != CREATED_BY:
            raise MchError(f"{out} exists and is not an mch synthetic corpus; move it or set MCH_DATA elsewhere")
    ensure_writable_dir(
        out.parent,
        "directory where synthetic corpora are generated ($MCH_DATA or ~/.cache/mch/data)",
        "set MCH_DATA to a writable directory",
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        make(name, tmp / "corpus", **kw)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp / "corpus", out)
        except OSError:
            if read_manifest(out) is None:  # someone else won the race with a complete corpus
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
