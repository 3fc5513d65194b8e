"""The types every plugin speaks: samples, attributes, the three plugin kinds and their specs.

Light on purpose: importing this module imports neither torch nor numpy, so specs can be
registered and listed by `mch list` without touching heavy dependencies. Plugin *objects*
(the classes a spec's `entry` names) are imported only when used.

Words come from `shared/design/science.md`: stage, span, protocol, attribute, verbalizer,
group key, text baseline.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

PROTOCOLS = ("default", "paper")
SPANS = ("modality", "all", "text", "last")
VIEWS = ("modal", "text")  # modal input, or the paired text through the same model's LLM


def stage_sort_key(stage: str) -> tuple[int, int]:
    """Forward order: encoder, adapter, llm.0 ... llm.N, llm.final."""
    import re

    if stage == "encoder":
        return (0, 0)
    if stage == "adapter":
        return (1, 0)
    if stage == "llm.final":
        return (2, 10**9)
    m = re.fullmatch(r"llm\.(\d+)", stage)
    if m:
        return (2, int(m.group(1)))
    return (3, 0)


class MchError(Exception):
    """An error the user can fix. The CLI prints its message as one sentence, no traceback."""


class SampleError(MchError):
    """One sample cannot be used (corrupt file, missing annotation, label outside the classes).
    Under `--on-error skip` the runner records it and goes on; otherwise it stops the run."""

    def __init__(self, message: str, sample_id: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id
        self.path = path


def load_entry(entry: str) -> Any:
    """Import `package.module:attr` lazily, with a clear error when it is wrong."""
    mod_name, _, attr = entry.partition(":")
    if not attr:
        raise MchError(f"plugin entry {entry!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise MchError(f"cannot import {mod_name!r} for plugin entry {entry!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise MchError(f"module {mod_name!r} has no attribute {attr!r} (plugin entry {entry!r})") from None


# --------------------------------------------------------------------------- data


@dataclass
class Attribute:
    """A labelled property of a sample (science.md, Vocabulary).

    `verbalizers[c]` are the words a text decoder would use for class c (first is canonical);
    `query` is the text that precedes a verbalizer when the decoder is asked about it (GMI);
    `group_key` names the `Sample.groups` entry that must stay on one side of a split;
    `text_describable` says whether the attribute is in the paired text (lexical, content);
    `verbalizable` says whether a text decoder could name the classes from the input (emotion
    words, sound classes: yes; arbitrary ids such as "reader 1089": no, and GMI leaves them out);
    `cluster_key` names a `Sample.groups` entry whose groups the CIs resample when the
    clusters differ from the split groups (None: the group key; science.md §8).
    """

    name: str
    classes: list[str]
    verbalizers: dict[str, list[str]]
    query: str
    group_key: str
    text_describable: bool = False
    description: str = ""
    verbalizable: bool = True
    cluster_key: str | None = None
    label_rule: dict[str, str] = field(default_factory=dict)  # protocol -> rule, recorded in results

    def __post_init__(self) -> None:
        missing = [c for c in self.classes if not self.verbalizers.get(c)]
        if missing:
            raise MchError(f"attribute {self.name!r} has no verbalizer for classes {missing}")


@dataclass
class Sample:
    """One input. `media` is loaded on first access through `loader` so that listing a corpus
    never reads every file; `labels[attribute]` is a class name, `groups[key]` a group value."""

    sample_id: str
    text: str
    labels: dict[str, str]
    groups: dict[str, str]
    loader: Callable[[], Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _media: Any = None

    @property
    def media(self) -> Any:
        if self._media is None and self.loader is not None:
            self._media = self.loader()
        return self._media


# --------------------------------------------------------------------------- specs


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


# --------------------------------------------------------------------------- plugin bases


class DatasetPlugin:
    """Base for attribute datasets. Subclasses set `name`, `modality` and implement
    `attributes()` and `samples()`; both must be deterministic for the same arguments."""

    name = "dataset"
    modality = "speech"

    def __init__(self, spec: DatasetSpec, path: str | None = None, **options: Any) -> None:
        self.spec = spec
        self.path = path
        self.options = {**spec.options, **options}

    def attributes(self, protocol: str) -> dict[str, Attribute]:
        raise NotImplementedError  # pragma: no cover - abstract

    def samples(self, split: str | None, limit: int | None, seed: int, protocol: str) -> list[Sample]:
        raise NotImplementedError  # pragma: no cover - abstract


def check_param_keys(analysis: str, given: Any, takes: Any) -> None:
    """A misspelled `--param` must not be silently ignored: every key of `given` must be one
    the analysis declares (`takes`, its default parameters)."""
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise MchError(f"analysis {analysis!r} has no parameter {unknown[0]!r}; it takes: {', '.join(sorted(takes))}")


class Analysis:
    """Base for analyses. `needs_model` says whether `run` may touch `ctx.model` (a lazy
    handle: the model is only loaded if something is not cached). `default_params(protocol)`
    gives the parameters, which the user may override with `--param key=value`."""

    name = "analysis"
    needs_model = False

    def __init__(self, spec: AnalysisSpec) -> None:
        self.spec = spec

    def default_params(self, protocol: str) -> dict[str, Any]:
        return {}

    def run(self, ctx: "Any") -> "AnalysisOutput":
        raise NotImplementedError  # pragma: no cover - abstract


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
