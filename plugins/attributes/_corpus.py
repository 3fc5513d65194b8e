"""The base of the file-based attribute datasets: scanning a split into records, the classes
of an attribute, deterministic selection, and the corpus options.

Every corpus module subclasses `Corpus`: it scans its split into `Record`s (sample id, text,
labels, groups, a lazy media loader) and declares its `Attribute`s; `Corpus.samples` then
validates labels against the declared classes, selects deterministically and builds
`Sample`s. A record that cannot be used (corrupt file, missing annotation, label outside
the classes) still becomes a sample, whose media loader raises `SampleError`, so the runner
decides whether to stop or to skip it (`--on-error skip`).

A `Corpus` reads a directory that exists; writing one (the offline corpora) is the caller's
job: `mch data make`, or the `synth-*` registry entries (`synth.datasets`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mch.api import PROTOCOLS, Attribute, DatasetPlugin, DatasetSpec, MchError, Param, Sample, SampleError

from ._media import sample_error


def _raiser(err: SampleError) -> Callable[[], Any]:
    def load() -> Any:
        raise err

    return load


# --------------------------------------------------------------------------- classes


def majority(labels: Iterable[str]) -> tuple[str, float]:
    """Most frequent non-empty label and its rate among labelled samples."""
    counts = Counter(x for x in labels if x)
    if not counts:
        return "", 0.0
    label, n = counts.most_common(1)[0]
    return label, n / sum(counts.values())


def ordered_classes(labels: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """Classes present among `labels`: in `order` when given (unknown ones appended sorted),
    otherwise sorted (the reference's LabelEncoder order)."""
    present = {x for x in labels if x}
    if order is None:
        return sorted(present)
    known = [c for c in order if c in present]
    return known + sorted(present - set(known))


# --------------------------------------------------------------------------- selection


def _h(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def select(
    items: Sequence[Any],
    limit: int | None,
    seed: int,
    *,
    key: Callable[[Any], str],
    stratum: Callable[[Any], str] | None = None,
    group: Callable[[Any], str] | None = None,
) -> list[Any]:
    """Deterministic, group-aware selection.

    No limit (or limit >= len): every item, sorted by `key` (the sample id). Otherwise items
    are taken round-robin over strata (the classes of the main attribute) and, inside each
    stratum, round-robin over groups, so a small selection still covers many classes and many
    groups (grouped splits need both). All orders come from SHA-256 of (seed, id): the same
    on every machine and Python version, and independent of file-listing order. The chosen
    items are returned sorted by `key`."""
    ordered = sorted(items, key=key)
    if limit is None or limit >= len(ordered):
        return ordered
    if limit <= 0:
        raise MchError(f"--limit must be a positive number of samples, not {limit}")
    stratum = stratum or (lambda _x: "")
    group = group or key
    strata: dict[str, dict[str, list[Any]]] = {}
    for it in ordered:
        strata.setdefault(stratum(it), {}).setdefault(group(it), []).append(it)

    def stream(groups: dict[str, list[Any]]):
        queues = [
            sorted(groups[g], key=lambda it: _h(seed, key(it)))
            for g in sorted(groups, key=lambda g: _h(seed, "group:" + g))
        ]
        depth = 0
        while True:
            alive = False
            for q in queues:
                if depth < len(q):
                    alive = True
                    yield q[depth]
            if not alive:
                return
            depth += 1

    streams = [stream(strata[s]) for s in sorted(strata, key=lambda s: _h(seed, "stratum:" + s))]
    chosen: list[Any] = []
    while streams and len(chosen) < limit:
        alive = []
        for st in streams:
            if len(chosen) >= limit:
                break
            it = next(st, None)
            if it is not None:
                chosen.append(it)
                alive.append(st)
        streams = alive
    return sorted(chosen, key=key)


# --------------------------------------------------------------------------- corpus base


@dataclass
class Record:
    """One sample of a scanned split, before selection."""

    sample_id: str
    text: str
    labels: dict[str, str]
    groups: dict[str, str]
    load: Callable[[], Any]
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: SampleError | None = None

    def fail(self, problem: str) -> None:
        """Mark the record unusable; the first problem found is the one reported."""
        if self.error is None:
            self.error = sample_error(self.sample_id, self.path, problem)


def data_root_hint(name: str, layout: str) -> str:
    return f"pass --data-path DIR (or set MCH_DATA so that $MCH_DATA/{name} exists); expected layout: {layout}"


class Corpus(DatasetPlugin):
    """Base of the file-based attribute datasets.

    Subclasses set `name`, `modality`, `layout` (one phrase: what DIR must contain),
    `default_split`, `stratify` (the attribute balanced by `--limit`), and implement
    `_find_root(path)`, `_scan(split, protocol) -> list[Record]` and
    `_declare(records, protocol) -> dict[str, Attribute]`.

    Options (registry `options:` or the runner's `**options`): `split`, and the speech
    corpora's `SPEECH_OPTIONS`. The data is `--data-path`, else $MCH_DATA/<name> (`_locate`)."""

    name = "corpus"
    modality = "speech"
    layout = ""
    option_specs = {
        "split": Param(str, help="the split used when none is passed"),
    }
    # the speech corpora's own options (docs/datasets.md)
    SPEECH_OPTIONS = {
        "sample_rate": Param(int, ge=0, help="resample to this rate (0: keep the file's)"),
        "native_rate": Param(int, ge=0, help="the rate a file must have (0: any)"),
    }
    default_split: str | None = None
    stratify: str | None = None

    def __init__(self, spec: DatasetSpec, path: str | None = None, **options: Any) -> None:
        super().__init__(spec, path, **options)
        self._root: Path | None = None
        self._split: str | None = None  # resolved on first use (the default may depend on the data)
        self._handed: dict[str, dict[str, Attribute]] = {}
        self._records: dict[tuple[str | None, str], list[Record]] = {}
        self._attrs: dict[tuple[str | None, str], dict[str, Attribute]] = {}
        self._extras: dict[tuple[str | None, str], dict[str, Any]] = {}

    def _extra(self, split: str | None, protocol: str) -> dict[str, Any]:
        """Per-(split, protocol) values a scan computes for its declaration (e.g. a vocabulary)."""
        return self._extras.setdefault((split, protocol), {})

    # -- locating the data
    @property
    def data_name(self) -> str:
        return self.spec.name

    def root(self) -> Path:
        if self._root is None:
            self._root = self._find_root(self._locate())
        return self._root

    def _locate(self) -> Path:
        hint = data_root_hint(self.data_name, self.layout)
        if self.path:
            p = Path(self.path).expanduser()
            if not p.exists():
                raise MchError(f"dataset {self.data_name!r}: data path {p} does not exist; {hint}")
            return p
        env = os.environ.get("MCH_DATA")
        if env:
            p = Path(env).expanduser() / self.data_name
            if not p.exists():
                raise MchError(f"dataset {self.data_name!r}: $MCH_DATA/{self.data_name} ({p}) does not exist; {hint}")
            return p
        raise MchError(f"dataset {self.data_name!r} needs its data: {hint}")

    def _find_root(self, path: Path) -> Path:
        return path

    # -- splits
    def _norm_split(self, split: str | None) -> str | None:
        return split if split else self._default_split()

    def _default_split(self) -> str | None:
        return self.default_split

    def current_split(self) -> str | None:
        """The split `attributes()` describes: the last `samples()` split, else the `split`
        option, else the dataset's default."""
        if self._split is None:
            self._split = self._norm_split(self.options.get("split"))
        return self._split

    # -- to implement
    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        raise NotImplementedError  # pragma: no cover - abstract

    # -- the DatasetPlugin interface
    def _index(self, split: str | None, protocol: str) -> list[Record]:
        if protocol not in PROTOCOLS:
            raise MchError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        key = (split, protocol)
        if key not in self._records:
            self._records[key] = self._scan(split, protocol)
        return self._records[key]

    def attributes(self, protocol: str) -> dict[str, Attribute]:
        """The attributes of the current split; classes are those seen in the whole split, so
        they never depend on --limit. The same dict and Attribute objects are returned on
        every call for a protocol and updated in place when `samples()` moves to another
        split, so a caller that asked before choosing the split still sees the right classes."""
        split = self.current_split()
        key = (split, protocol)
        if key not in self._attrs:
            self._attrs[key] = self._declare(self._index(split, protocol), protocol)
        handed = self._handed.setdefault(protocol, {})
        for name, a in self._attrs[key].items():
            if name in handed:
                handed[name].__dict__.update(copy.deepcopy(a.__dict__))
            else:
                handed[name] = copy.deepcopy(a)
        return handed

    def samples(self, split: str | None, limit: int | None, seed: int, protocol: str) -> list[Sample]:
        self._split = self._norm_split(split or self.options.get("split"))
        records = self._index(self._split, protocol)
        attrs = self.attributes(protocol)
        for r in records:
            for a, value in r.labels.items():
                if value and a in attrs and value not in attrs[a].classes:
                    r.fail(f"label {value!r} of attribute {a!r} is outside its declared classes")
        strat = self.stratify if self.stratify in attrs else None
        gkey = attrs[strat].group_key if strat else None
        chosen = select(
            records,
            limit,
            seed,
            key=lambda r: r.sample_id,
            stratum=(lambda r: r.labels.get(strat, "")) if strat else None,
            group=(lambda r: r.groups.get(gkey, r.sample_id)) if gkey else None,
        )
        return [self._sample(r, protocol) for r in chosen]

    def _sample(self, r: Record, protocol: str) -> Sample:
        meta = {"path": r.path, "protocol": protocol, "split": self._split, **r.meta}
        if r.error is not None:
            meta["error"] = str(r.error)
            labels = {a: "" for a in r.labels}  # a broken record teaches nothing
            return Sample(r.sample_id, r.text, labels, dict(r.groups), loader=_raiser(r.error), meta=meta)
        return Sample(r.sample_id, r.text, dict(r.labels), dict(r.groups), loader=r.load, meta=meta)


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MchError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise MchError(f"{what} {path} cannot be read as JSON ({exc})") from None


def int_option(options: dict[str, Any], name: str, default: int | None) -> int | None:
    value = options.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MchError(f"option {name}={value!r} must be an integer") from None
