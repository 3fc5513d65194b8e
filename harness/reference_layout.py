"""The reference implementation's HDF5 layout in words: its hook names as mch's stages, its
label columns as mch's attributes (no I/O; `mch.reference` reads and writes the files)."""

from __future__ import annotations

import re

from .api import MchError

LAYOUT = "reference-hdf5"  # the `imported` value of an imported entry's store key
# the reference's label columns (script 01), by modality
SPEECH_COLUMNS = ("transcript", "speaker_id", "emotion", "sound_class")
VISION_COLUMNS = (
    "caption",
    "question",
    "answer",
    "object_category",
    "super_category",
    "question_type",
    "object_count",
    "avg_obj_size",
    "spatial_spread",
)
TEXT_COLUMNS = ("transcript", "caption", "question")  # lexical's field, in script 03's fallback order
# mch attribute -> the reference's column (script 03's info type -> H5 field)
ATTRIBUTE_COLUMNS = {
    "speaker": "speaker_id",
    "emotion": "emotion",
    "acoustic": "sound_class",
    **{c: c for c in VISION_COLUMNS if c not in ("caption", "question")},
}


def stage_of(name: str) -> str | None:
    """The reference's hook name as mch's stage: encoder_output -> encoder, adapter_output
    -> adapter, llm_hidden_16 -> llm.16, llm_final -> llm.final; None for other names."""
    if name == "encoder_output":
        return "encoder"
    if name == "adapter_output":
        return "adapter"
    if name == "llm_final":
        return "llm.final"
    m = re.fullmatch(r"llm_hidden_(\d+)", name)
    return f"llm.{int(m.group(1))}" if m else None


def reference_name(stage: str) -> str:
    """mch's stage as the reference's hook name (inverse of `stage_of`)."""
    if stage in ("encoder", "adapter"):
        return f"{stage}_output"
    if stage == "llm.final":
        return "llm_final"
    m = re.fullmatch(r"llm\.(\d+)", stage)
    if not m:
        raise MchError(f"stage {stage!r} has no name in the reference's HDF5 layout")
    return f"llm_hidden_{m.group(1)}"


def attribute_columns(columns: dict[str, list[str]]) -> dict[str, str]:
    """mch attribute -> the column it is read from (script 03's info types; other columns
    under their own name)."""
    out = {}
    text = next((c for c in TEXT_COLUMNS if c in columns), None)
    if text is not None and any(columns[text]):
        out["lexical"] = text
    known = set(SPEECH_COLUMNS) | set(VISION_COLUMNS)
    for attr, col in ATTRIBUTE_COLUMNS.items():
        if col in columns and any(columns[col]):
            out[attr] = col
    for col, vals in columns.items():
        if col not in known and col != "text" and any(vals):
            out[col] = col
    return out
