"""The plain data of mch.api (found there too): the specs a plugin registers without importing
its code, and the output an analysis returns. No behaviour, no imports beyond the standard
library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    """What `mch list models` shows, registered without importing the model code.

    `entry` names a `ModelPlugin` subclass; `checkpoint` is an HF id or a local path (or
    `builtin:NAME` for weights shipped in the package); `text_baseline` names the separate
    text-only checkpoint of the paper protocol."""

    name: str
    entry: str
    modality: str
    checkpoint: str
    revision: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    text_baseline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"


@dataclass
class DatasetSpec:
    name: str
    entry: str
    modality: str
    attributes: tuple[str, ...]
    description: str = ""
    source_hint: str = ""  # what a user points mch at (shown when it is missing)
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"


@dataclass
class AnalysisSpec:
    name: str
    entry: str
    needs_model: bool = False
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"


@dataclass
class Metric:
    """One number of a result: at a stage (or None for attribute-level numbers), for an
    attribute (or None), with its uncertainty when it is an estimate."""

    metric: str
    value: float | None
    stage: str | None = None
    attribute: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    n_groups: int | None = None  # how many groups the CI's resamples drew from (science.md §8)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "n_groups" or v is not None}


@dataclass
class AnalysisOutput:
    metrics: list[Metric] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # per-resample values that later analyses of the same run reuse (science.md §8: ratios from
    # the same draws), keyed (metric, stage, attribute); never written to the record
    replicates: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
