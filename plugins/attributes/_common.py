"""Shared machinery of the attribute datasets: finding the data, reading media, labels and
deterministic selection.

Every corpus module subclasses `Corpus`: it scans its split into `Record`s (sample id, text,
labels, groups, a lazy media loader) and declares its `Attribute`s; `Corpus.samples` then
validates labels against the declared classes, selects deterministically and builds
`Sample`s. A record that cannot be used (corrupt file, missing annotation, label outside
the classes) still becomes a sample, whose media loader raises `SampleError`, so the runner
decides whether to stop or to skip it (`--on-error skip`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mch.api import PROTOCOLS, Attribute, DatasetPlugin, DatasetSpec, MchError, Param, Sample, SampleError

# --------------------------------------------------------------------------- errors


def sample_error(sample_id: str, path: str | os.PathLike | None, problem: str) -> SampleError:
    """One sentence naming the sample and its file."""
    where = f" ({path})" if path is not None else ""
    return SampleError(f"sample {sample_id!r}{where}: {problem}", sample_id=sample_id,
                       path=None if path is None else str(path))


def _raiser(err: SampleError) -> Callable[[], Any]:
    def load() -> Any:
        raise err
    return load


# --------------------------------------------------------------------------- audio


def _check_wav_complete(path: str, sample_id: str) -> None:
    """libsndfile silently reads a truncated WAV up to its end; compare the data chunk the
    header declares with the bytes actually present."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return  # not a plain RIFF WAV (RF64, other): let the decoder judge
        order = "little" if head[:4] == b"RIFF" else "big"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            cid, clen = hdr[:4], int.from_bytes(hdr[4:8], order)
            if cid == b"data":
                avail = size - (pos + 8)
                if clen < 0x7FFF0000 and clen > avail:  # larger: a streamed file's "unknown" size
                    raise sample_error(sample_id, path, f"the WAV file is truncated (its header declares "
                                                        f"{clen} data bytes, {avail} are present)")
                return
            pos += 8 + clen + (clen & 1)


def resample(wave: Any, rate: int, target: int) -> Any:
    """Polyphase resampling (scipy.signal.resample_poly, its default Kaiser window)."""
    import numpy as np
    from scipy.signal import resample_poly

    if rate == target:
        return wave
    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, int(target) // g, int(rate) // g).astype(np.float32)


def read_audio(source: str | os.PathLike | bytes, sample_id: str, *, expected_rate: int | None = None,
               target_rate: int | None = None, display_path: str | None = None) -> tuple[Any, int]:
    """Decode one audio file (a path, or the file's bytes) to (float32 mono waveform, rate).

    Stereo is averaged to mono. `expected_rate` is the corpus's documented rate: another rate
    means the file is not what the corpus says it is. `target_rate` resamples. Every failure
    is a `SampleError` naming the sample and the file."""
    import numpy as np
    import soundfile as sf

    path = display_path or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        if len(source) == 0:
            raise sample_error(sample_id, path, "the audio file is empty")
        handle: Any = io.BytesIO(source)
    else:
        p = str(source)
        if not os.path.isfile(p):
            raise sample_error(sample_id, p, "the audio file does not exist")
        if os.path.getsize(p) == 0:
            raise sample_error(sample_id, p, "the audio file is empty")
        if p.lower().endswith(".wav"):
            _check_wav_complete(p, sample_id)
        handle = p
    try:
        info = sf.info(handle)
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        why = getattr(exc, "error_string", None) or str(exc)
        raise sample_error(sample_id, path, f"the audio file cannot be decoded ({why.strip()})") from None
    if data.shape[0] == 0:
        raise sample_error(sample_id, path, "the audio file is empty (no samples)")
    if 0 < data.shape[0] < info.frames:
        raise sample_error(sample_id, path, f"the audio file is truncated ({data.shape[0]} of "
                                            f"{info.frames} frames decoded)")
    if not np.isfinite(data).all():
        raise sample_error(sample_id, path, "the audio file is corrupt (it decodes to NaN or inf)")
    if expected_rate and rate != expected_rate:
        raise sample_error(sample_id, path, f"the audio is {rate} Hz but this corpus is {expected_rate} Hz "
                                            f"(pass native_rate=0 to accept any rate)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if target_rate and target_rate != rate:
        wave, rate = resample(wave, rate, target_rate), int(target_rate)
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


# --------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, sample_id: str, expected_size: tuple[int, int] | None = None) -> Any:
    """Open an image fully (so truncation shows now) as RGB; `expected_size` = (W, H) from the
    annotation: a different size means the labels do not describe this file."""
    from PIL import Image, UnidentifiedImageError

    p = str(path)
    if not os.path.isfile(p):
        raise sample_error(sample_id, p, "the image file does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise sample_error(sample_id, p, f"the image cannot be read ({exc})") from None
    if expected_size is not None and tuple(rgb.size) != tuple(expected_size):
        raise sample_error(sample_id, p, f"the image is {rgb.size[0]}x{rgb.size[1]} but its annotation says "
                                         f"{expected_size[0]}x{expected_size[1]}")
    return rgb


# --------------------------------------------------------------------------- text and lexical labels

# Function words removed by the default lexical rule (the reference claims a stop-word filter
# but has none). Written for this project; contractions are single tokens here.
STOP_WORDS = frozenset("""
a about above after again against all almost also am among an and another any anybody anyone anything
are aren't around as at away back be became because become been before being below beneath beside
besides between beyond both but by can can't cannot could couldn't did didn't do does doesn't doing done
don't down during each either else enough even ever every everybody everyone everything far few for
from further get gets getting go goes going gone got had hadn't has hasn't have haven't having he he'd
he'll he's her here here's hers herself him himself his how however i i'd i'll i'm i've if in into is
isn't it it'd it'll it's its itself just least less let let's like made make many may me might mine more
most much must mustn't my myself near neither never no nobody none nor not nothing now o of off often on
once one only onto or other others ought our ours ourselves out over own per perhaps quite rather really
s said same say says shall shan't she she'd she'll she's should shouldn't since so some somebody someone
something sometimes somewhat still such t than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've thing things this those though through thus till to
together too toward towards under until up upon us very was wasn't we we'd we'll we're we've well were
weren't what what's whatever when whenever where where's whether which while who who's whom whose why
will with within without won't would wouldn't yes yet you you'd you'll you're you've your yours yourself
yourselves
""".split())

_PAPER_TOKEN = re.compile(r"[a-z]+")
_CONTENT_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*")
LEXICAL_TOP_K = 50


def paper_tokens(text: str) -> list[str]:
    """The reference's tokens: lower-case, regex [a-z]+ ("don't" -> "don", "t")."""
    return _PAPER_TOKEN.findall(text.lower())


def content_tokens(text: str) -> list[str]:
    """Default tokens: contractions kept whole, possessive 's dropped, stop words removed."""
    out = []
    for tok in _CONTENT_TOKEN.findall(text.lower().replace("\u2019", "'")):
        if tok.endswith("'s") and tok not in STOP_WORDS:
            tok = tok[:-2]
        if tok in STOP_WORDS or len(tok) < 2:
            continue
        out.append(tok)
    return out


def first_top_k_labels(texts: Sequence[str], tokenize: Callable[[str], list[str]],
                       k: int = LEXICAL_TOP_K) -> tuple[list[str], list[str]]:
    """The "first top-k word" rule: count tokens over all texts, keep the k most frequent
    (ties in first-seen order, as Counter.most_common), label each text with its first token
    in that set ("" when none). Returns (labels, vocabulary in rank order)."""
    tokens = [tokenize(t) for t in texts]
    counts: Counter[str] = Counter()
    for toks in tokens:
        counts.update(toks)
    vocab = [w for w, _ in counts.most_common(k)]
    top = set(vocab)
    labels = [next((w for w in toks if w in top), "") for toks in tokens]
    return labels, vocab


def lexical_labels(texts: Sequence[str], protocol: str) -> tuple[list[str], list[str]]:
    tokenize = paper_tokens if protocol == "paper" else content_tokens
    return first_top_k_labels(texts, tokenize)


LEXICAL_RULES = {
    "paper": ("first top-50 word (reference script 03): lower-case, tokens [a-z]+, the 50 most frequent "
              "tokens over the whole split (ties in first-seen order), label = first token of the text "
              "in that set; no stop-word removal"),
    "default": ("first top-50 content word: lower-case, tokens [a-z]+('[a-z]+)*, possessive 's dropped, "
                "mch's English stop-word list removed, the 50 most frequent content words over the whole "
                "split (ties in first-seen order), label = first content word of the text in that set"),
}


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


def lexical_attribute(labels: Sequence[str], vocab: Sequence[str], protocol: str, query: str,
                      group_key: str, what: str) -> Attribute:
    classes = ordered_classes(labels, vocab)
    maj, rate = majority(labels)
    n_lab = sum(1 for x in labels if x)
    desc = (f"first top-50 {'word' if protocol == 'paper' else 'content word'} of the {what}; "
            f"{len(classes)} classes over {n_lab} labelled samples of the split, majority class "
            f"{maj!r} = {rate:.1%}")
    return Attribute(name="lexical", classes=classes, verbalizers={c: [c] for c in classes}, query=query,
                     group_key=group_key, text_describable=True, description=desc,
                     label_rule=dict(LEXICAL_RULES))


# --------------------------------------------------------------------------- selection


def _h(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def select(items: Sequence[Any], limit: int | None, seed: int, *, key: Callable[[Any], str],
           stratum: Callable[[Any], str] | None = None, group: Callable[[Any], str] | None = None) -> list[Any]:
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
        queues = [sorted(groups[g], key=lambda it: _h(seed, key(it)))
                  for g in sorted(groups, key=lambda g: _h(seed, "group:" + g))]
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

    Options (registry `options:` or the runner's `**options`): `split`; `synth` (a dict of
    `mch.plugins.attributes.synth.make` arguments: with no path, the corpus is generated once
    into $MCH_DATA/<name> or ~/.cache/mch/data/<name> and then read by the same loader)."""

    name = "corpus"
    modality = "speech"
    layout = ""
    option_specs = {
        "split": Param(str, help="the split used when none is passed"),
        "synth": Param(dict, nullable=True, help="generator arguments (`mch data make`): generate the corpus on first use"),
    }
    # the speech corpora's own options (docs/datasets.md)
    SPEECH_OPTIONS = {
        "sample_rate": Param(int, ge=0, help="resample to this rate (0: keep the file's)"),
        "native_rate": Param(int, ge=0, help="the rate a file must have (0: any)"),
    }
    default_split: str | None = None
    stratify: str | None = None
    synth_kind: str | None = None  # the synth.make name that writes this layout

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
        synth = self.options.get("synth")
        if synth is not None:
            return self._generated(dict(synth))
        env = os.environ.get("MCH_DATA")
        if env:
            p = Path(env).expanduser() / self.data_name
            if not p.exists():
                raise MchError(f"dataset {self.data_name!r}: $MCH_DATA/{self.data_name} ({p}) does not exist; {hint}")
            return p
        raise MchError(f"dataset {self.data_name!r} needs its data: {hint}")

    def _generated(self, kwargs: dict[str, Any]) -> Path:
        from . import synth

        env = os.environ.get("MCH_DATA")
        base = Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mch" / "data"
        out = base / self.data_name
        return synth.ensure(self.synth_kind or self.name, out, **kwargs)

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
        chosen = select(records, limit, seed, key=lambda r: r.sample_id,
                        stratum=(lambda r: r.labels.get(strat, "")) if strat else None,
                        group=(lambda r: r.groups.get(gkey, r.sample_id)) if gkey else None)
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
