"""The `synth-*` registry entries: each real loader, reading a corpus that its writer
generates on first use.

The loaders (`Corpus` subclasses) only read directories. These subclasses add the option
`synth` (the writer's arguments, a dict): with no --data-path, the corpus is written once into
$MCH_DATA/<name> (or ~/.cache/mch/data/<name>) by `writers.ensure`, reused while its manifest
matches, and read by the unchanged loader. `synth: null` reads $MCH_DATA/<name> as the
loader would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from mch.api import Param

from ..coco import COCO
from ..cremad import CremaD
from ..esc50 import ESC50
from ..gqa import GQA
from ..librispeech import LibriSpeech
from ..voxceleb1 import VoxCeleb1
from .writers import ensure

SYNTH_OPTION = Param(
    dict, nullable=True, help="generator arguments (`mch data make`): generate the corpus on first use"
)


def generated_root() -> Path:
    """Where generated corpora live: $MCH_DATA, else $XDG_CACHE_HOME/mch/data (~/.cache/mch/data)."""
    env = os.environ.get("MCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mch" / "data"


class Generated:
    """Mixin before a `Corpus` subclass: `writer` names its layout in `writers.GENERATORS`."""

    writer: ClassVar[str]
    options: dict[str, Any]
    path: str | None
    data_name: str

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.option_specs = {**cls.option_specs, "synth": SYNTH_OPTION}  # type: ignore[attr-defined]

    def _locate(self) -> Path:
        synth = self.options.get("synth")
        if self.path or synth is None:
            return super()._locate()  # type: ignore[misc]
        return ensure(self.writer, generated_root() / self.data_name, **dict(synth))


class SynthLibriSpeech(Generated, LibriSpeech):
    writer = "librispeech"


class SynthCremaD(Generated, CremaD):
    writer = "cremad"


class SynthESC50(Generated, ESC50):
    writer = "esc50"


class SynthVoxCeleb1(Generated, VoxCeleb1):
    writer = "voxceleb1"


class SynthCOCO(Generated, COCO):
    writer = "coco"


class SynthGQA(Generated, GQA):
    writer = "gqa"
