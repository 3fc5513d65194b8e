"""The types every plugin speaks: samples, attributes, the three plugin kinds and their specs.

Light on purpose: importing this module imports neither torch nor numpy, so specs can be
registered and listed by `mch list` without touching heavy dependencies. Plugin *objects*
(the classes a spec's `entry` names) are imported only when used.

The specs and the analysis output are plain data in mch.api_data, imported here: every name
is found in mch.api. Words come from `shared/design/science.md`: stage, span, protocol,
attribute, verbalizer, group key, text baseline.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# the specs and the analysis output: plain data in their own module, found here as always
from .api_data import AnalysisOutput, AnalysisSpec, DatasetSpec, Metric, ModelSpec  # noqa: F401

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
        obj = getattr(module, attr)
    except AttributeError:
        raise MchError(f"module {mod_name!r} has no attribute {attr!r} (plugin entry {entry!r})") from None
    missing = sorted(getattr(obj, "__abstractmethods__", ())) if isinstance(obj, type) else []
    if missing:  # found now, not mid-run when the method is first called
        raise MchError(
            f"plugin entry {entry!r}: class {obj.__name__} does not implement {', '.join(missing)}, "
            f"which its base class requires"
        )
    return obj


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
    never reads every file; `labels[attribute]` is a class name, `groups[key]` a group value;
    `meta["path"]` (or `meta["media_files"]`, a list) names the file(s) the media comes from."""

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

    @property
    def media_files(self) -> list[str]:
        """The files `media` is read from: `meta["media_files"]` when the dataset sets it, else
        `meta["path"]`; none when the media is made in code. The runner fingerprints them (size
        and mtime) into the store key, so a file edited in place is extracted again."""
        files = self.meta.get("media_files")
        if files is None:
            files = [self.meta["path"]] if self.meta.get("path") else []
        return [str(f) for f in files]


# --------------------------------------------------------------------------- plugin bases


class DatasetPlugin(abc.ABC):
    """Base for attribute datasets. Subclasses set `name`, `modality` and implement
    `attributes()` and `samples()` (abstract); both must be deterministic for the same arguments."""

    name = "dataset"
    modality = "speech"
    # the options this dataset takes (registry `options:`, --data-option), checked before any
    # work; None: undeclared, passed unchecked
    option_specs: ClassVar[dict[str, Param] | None] = None
    # the only models that can read these samples (None: any model of the dataset's modality)
    models: ClassVar[tuple[str, ...] | None] = None
    # whether it reads --data-path; False (samples made in code): the flag is refused, not ignored
    reads_path: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, path: str | None = None, **options: Any) -> None:
        self.spec = spec
        self.path = path
        self.options = check_options("dataset", spec.name, self.option_specs, {**spec.options, **options})

    @abc.abstractmethod
    def attributes(self, protocol: str) -> dict[str, Attribute]:
        """The attributes this dataset labels under `protocol`, by name."""

    @abc.abstractmethod
    def samples(self, split: str | None, limit: int | None, seed: int, protocol: str) -> list[Sample]:
        """The samples of `split` (None: the dataset's default), the first `limit` of them."""


def check_param_keys(analysis: str, given: Any, takes: Any) -> None:
    """A misspelled `--param` must not be silently ignored: every key of `given` must be one
    the analysis declares (`takes`, its default parameters)."""
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise MchError(f"analysis {analysis!r} has no parameter {unknown[0]!r}; it takes: {', '.join(sorted(takes))}")


# --------------------------------------------------------------------------- parameters and options

_MISSING: Any = object()
STAGE_PATTERN = r"encoder|adapter|llm\.(\d+|final)"  # a stage name (science.md, Vocabulary)
_TYPE_WORDS = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    list: ("a list", "lists"),
    dict: ("a JSON object", "JSON objects"),
}


def _type_of(value: Any) -> Any:
    for t in (bool, int, float, str, dict):  # bool before int: True is an int to Python
        if isinstance(value, t):
            return t
    return list if isinstance(value, (list, tuple)) else None


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Param:
    """The type and range of one analysis parameter, model option or dataset option, checked
    before any work.

    Declare only what the default cannot say. A parameter declared by its default value alone
    takes the default's type (an integer accepts integral numbers, a number any number, a
    list a list or "a,b"); a number whose default is >= 0 must be >= 0 (counts, sizes,
    tolerances and seeds are never negative; declare `Param(ge=-math.inf)` otherwise); a None
    default accepts anything. Options have no default: declare their type.

        Param(int, ge=2)                       an integer >= 2
        Param(float, gt=0, lt=1)               a number in (0, 1)
        Param(str, choices=("sum", "mean"))    one of these strings
        Param(list, items=str, choices=(...))  a list whose items are among these
        Param(int, ge=1, nullable=True)        an integer >= 1, or null
        Param((int, list), items=str)          an integer or a list of strings
    """

    type: Any = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    items: Any = None
    nullable: bool | None = None
    pattern: str | None = None
    help: str = ""

    @property
    def types(self) -> tuple[Any, ...]:
        if self.type is None:
            return ()
        return tuple(self.type) if isinstance(self.type, (tuple, list)) else (self.type,)

    def resolved(self, default: Any = _MISSING) -> Param:
        """This declaration completed from the parameter's default value."""
        import dataclasses

        if default is _MISSING:
            return dataclasses.replace(self, nullable=bool(self.nullable))
        typ = self.type if self.type is not None else _type_of(default)
        items = self.items
        if items is None and isinstance(default, (list, tuple)) and default:
            kinds = {_type_of(v) for v in default}
            items = kinds.pop() if len(kinds) == 1 else None
        bounded = any(b is not None for b in (self.ge, self.gt, self.le, self.lt))
        ge = self.ge
        if not bounded and typ in (int, float) and _type_of(default) in (int, float) and default >= 0:
            ge = 0
        nullable = self.nullable if self.nullable is not None else default is None
        return dataclasses.replace(self, type=typ, items=items, ge=ge, nullable=nullable)

    # -- words
    def _range(self) -> str:
        lo = (
            f">= {_num(self.ge)}"
            if self.ge is not None and self.ge > -math.inf
            else (f"> {_num(self.gt)}" if self.gt is not None else "")
        )
        hi = (
            f"<= {_num(self.le)}"
            if self.le is not None and self.le < math.inf
            else (f"< {_num(self.lt)}" if self.lt is not None else "")
        )
        return " and ".join(x for x in (lo, hi) if x)

    def describe(self) -> str:
        """What a value must be, in words: 'an integer >= 2', 'one of sum, mean'."""
        if self.choices is not None and list not in self.types:
            names = [str(c) for c in self.choices]
            text = " or ".join(names) if len(names) <= 2 else "one of " + ", ".join(names)
        else:
            words = []
            for t in self.types or (None,):
                if t is None:
                    words.append("any value")
                elif t is list:
                    item = _TYPE_WORDS.get(self.items, ("", "values"))[1]
                    w = f"a list of {item}" if self.items else "a list"
                    if self.choices is not None:
                        w += " from " + ", ".join(map(str, self.choices))
                    words.append(w + " (or 'a,b')")
                else:
                    words.append(_TYPE_WORDS.get(t, (getattr(t, "__name__", str(t)),))[0])
            text = " or ".join(words)
            rng = self._range()
            if rng:
                text += (" with items " if self.types == (list,) else " ") + rng
            if self.pattern:
                text += " (a stage name)" if self.pattern == STAGE_PATTERN else f" matching {self.pattern}"
        return text + (", or null" if self.nullable else "")

    # -- checking
    def check(self, value: Any, where: str) -> Any:
        """`value` in this parameter's type (integral numbers to int, numbers to float, "a,b"
        to a list), or one sentence naming `where` and what it must be."""
        if value is None:
            if self.nullable or not self.types:
                return None
            raise MchError(f"{where} must be {self.describe()}, not null")
        if not self.types:
            return value
        for t in sorted(self.types, key=lambda t: _type_of_rank(value, t)):
            ok, v = _coerce(value, t, self.items)
            if ok:
                bad = self._bad_part(v)
                if bad is None:
                    return v
                raise MchError(f"{where} must be {self.describe()}, not {value!r}{bad}")
        raise MchError(f"{where} must be {self.describe()}, not {value!r}")

    def _bad_part(self, v: Any) -> str | None:
        """None when `v` (already of the right type) is in range; else a short reason."""
        import re

        values = list(v) if isinstance(v, list) else [v]
        # choices name a list's items; for (int, list) they do not apply to the integer
        choose = self.choices is not None and (isinstance(v, list) or list not in self.types)
        for x in values:
            if choose and x not in self.choices:  # type: ignore[operator]
                return "" if not isinstance(v, list) else f" ({x!r} is not one of them)"
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if (
                    (self.ge is not None and not x >= self.ge)
                    or (self.gt is not None and not x > self.gt)
                    or (self.le is not None and not x <= self.le)
                    or (self.lt is not None and not x < self.lt)
                ):
                    return "" if not isinstance(v, list) else f" ({x!r} is out of range)"
            if self.pattern and isinstance(x, str) and not re.fullmatch(self.pattern, x):
                return "" if not isinstance(v, list) else f" ({x!r} does not match)"
        return None


def _type_of_rank(value: Any, t: Any) -> int:
    """Try first the declared type the value already has (a list for [1, 2], an int for 3)."""
    return 0 if _type_of(value) is t or (t is float and _type_of(value) is int) else 1


def _coerce(value: Any, t: Any, items: Any = None) -> tuple[bool, Any]:
    if t is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, int) and value in (0, 1):
            return True, bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return True, value.strip().lower() in ("true", "yes", "1")
        return False, None
    if t is int:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            try:
                return True, int(value.strip())
            except ValueError:
                return False, None
        return False, None
    if t is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return False, None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return True, float(value)  # not inf: a record stores it as null, so it would not say what ran
        return False, None
    if t is str:
        if isinstance(value, str):
            return True, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)  # a JSON-parsed command-line value such as a revision 1234567
        return False, None
    if t is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, None
        if items is None:
            return True, list(value)
        out = []
        for v in value:
            ok, c = _coerce(v, items)
            if not ok:
                return False, None
            out.append(c)
        return True, out
    if t is dict:
        return (True, dict(value)) if isinstance(value, dict) else (False, None)
    return (True, value) if isinstance(value, t) else (False, None)


def param_table(defaults: Mapping[str, Any], declared: Mapping[str, Param] | None = None) -> dict[str, Param]:
    """Each parameter of `defaults` with its complete declaration (type from the default where
    `declared` says nothing)."""
    declared = declared or {}
    return {k: declared.get(k, Param()).resolved(v) for k, v in defaults.items()}


def check_values(
    owner: str, given: Mapping[str, Any], takes: Mapping[str, Param], what: str = "parameter"
) -> dict[str, Any]:
    """`given` checked against `takes` (complete declarations): an unknown key or a value of the
    wrong type or range is one sentence naming `owner` ("analysis 'probe'", "model 'llava'");
    returns the values in their declared types."""
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise MchError(f"{owner} has no {what} {unknown[0]!r}; it takes: {', '.join(sorted(takes)) or 'none'}")
    return {k: takes[k].check(v, f"{owner} {what} {k}") for k, v in given.items()}


def check_options(
    kind: str, name: str, declared: Mapping[str, Param] | None, given: Mapping[str, Any]
) -> dict[str, Any]:
    """A model's or dataset's options (registry `options:` and --model-option/--data-option)
    against what its plugin class declares in `option_specs`; a plugin that declares nothing
    (None) gets its options unchecked."""
    if declared is None:
        return dict(given)
    takes = dict(declared)
    if kind == "model":
        takes = {**MODEL_OPTIONS, **takes}
    return check_values(f"{kind} {name!r}", given, {k: p.resolved() for k, p in takes.items()}, "option")


# Options every model takes (set in its registry entry).
MODEL_OPTIONS = {"default_dataset": Param(str, help="the dataset `mch bench` reads without --dataset")}


class Analysis(abc.ABC):
    """Base for analyses (`run` is abstract). `needs_model` says whether `run` may touch `ctx.model` (a lazy
    handle: the model is only loaded if something is not cached). `default_params(protocol)`
    gives the parameters, which the user may override with `--param key=value`."""

    name = "analysis"
    needs_model = False
    # types and ranges of parameters (`Param`) where the default value does not say enough
    param_specs: ClassVar[dict[str, Param]] = {}

    def __init__(self, spec: AnalysisSpec) -> None:
        self.spec = spec

    def default_params(self, protocol: str) -> dict[str, Any]:
        return {}

    def preflight(  # noqa: B027 - an optional hook; by default every sample set passes
        self, params: dict[str, Any], protocol: str, samples: list[Sample], attributes: dict[str, Attribute]
    ) -> None:
        """Called by the runner once the samples are chosen, before any extraction: raise an
        `MchError` for parameters that cannot work on these samples (optional)."""

    @abc.abstractmethod
    def run(self, ctx: Any) -> AnalysisOutput:
        """The analysis on `ctx` (a `mch.context.AnalysisContext`): metrics, summary, notes."""
