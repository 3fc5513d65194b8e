"""LibriSpeech (Panayotov et al. 2015): read English audiobooks, 16 kHz FLAC.

Sources, in order:
- a local LibriSpeech directory: `[LibriSpeech/]test-clean/{speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac`
  with one `{speaker}-{chapter}.trans.txt` per chapter (and optionally `SPEAKERS.TXT` beside
  the split directories, whose reader names become the speaker verbalizers);
- a directory written by `datasets.Dataset.save_to_disk` with the `librispeech_asr` columns
  (`audio`, `text`, `speaker_id`, `chapter_id`, `id`);
- a Hugging Face `datasets` id (e.g. `openslr/librispeech_asr`), read from the local cache
  only unless the option `download=true` is given (`--data-option download=true`): offline,
  a missing cache is one clear error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from mch.api import Attribute, MchError, Param

from ._corpus import Corpus, Record, int_option, ordered_classes
from ._lexical import lexical_attribute, lexical_labels
from ._media import read_audio, sample_error

NATIVE_RATE = 16000
# our split names -> (HF config, HF split) of librispeech_asr
HF_SPLITS = {
    "test-clean": ("clean", "test"),
    "dev-clean": ("clean", "validation"),
    "train-clean-100": ("clean", "train.100"),
    "train-clean-360": ("clean", "train.360"),
    "test-other": ("other", "test"),
    "dev-other": ("other", "validation"),
    "train-other-500": ("other", "train.500"),
}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def sentence_case(text: str) -> str:
    """LibriSpeech transcripts are upper case; the default protocol feeds decoders ordinary
    sentence case ("HE HOPED" -> "He hoped"; the pronoun I stays upper case)."""
    t = re.sub(r"\bi\b", "I", text.strip().lower())
    return t[:1].upper() + t[1:]


def read_speakers(path: Path) -> dict[str, str]:
    """SPEAKERS.TXT: `ID | SEX | SUBSET | MINUTES | NAME` lines, ';' comments."""
    names: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return names
    for line in lines:
        if line.startswith(";") or "|" not in line:
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 5 and parts[0].isdigit() and parts[4]:
            names[parts[0]] = parts[4]
    return names


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """`datasets` retries the Hub for ~30 s before failing even with local_files_only; the
    offline constants make a cache miss fail at once."""
    if not offline:
        yield
        return
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = (dc.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE)
    dc.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE = saved


class LibriSpeech(Corpus):
    name = "librispeech"
    modality = "speech"
    option_specs = {
        **Corpus.option_specs,
        **Corpus.SPEECH_OPTIONS,
        "download": Param(bool, help="a Hugging Face id may be downloaded (default: local cache only)"),
        "hf_config": Param(str, help="the Hugging Face dataset config"),
        "hf_split": Param(str, help="the Hugging Face split"),
        "revision": Param(str, help="the Hugging Face dataset revision"),
    }
    layout = (
        "a LibriSpeech directory holding test-clean/{speaker}/{chapter}/*.flac and "
        "{speaker}-{chapter}.trans.txt (or a Hugging Face datasets id / save_to_disk directory)"
    )
    default_split = "test-clean"
    stratify = "speaker"

    def _locate(self) -> Path:
        if self.path and not Path(self.path).expanduser().exists() and _HF_ID.match(self.path):
            self._hf_id = self.path
            return Path(self.path)
        return super()._locate()

    def _find_root(self, path: Path) -> Path:
        if getattr(self, "_hf_id", None):
            return path
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            self._hf_disk = True
            return path
        if (path / "LibriSpeech").is_dir():
            path = path / "LibriSpeech"
        return path

    def _default_split(self) -> str | None:
        """test-clean, or the only split a local directory holds."""
        root = self.root()
        if getattr(self, "_hf_id", None) or getattr(self, "_hf_disk", False):
            return self.default_split
        if (root / self.default_split).is_dir() or root.name == self.default_split:
            return self.default_split
        if any(root.glob("*/*/*.trans.txt")):  # root is itself a split directory
            return root.name
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/*/*.trans.txt")))
        return have[0] if len(have) == 1 else self.default_split

    # -- filesystem layout
    def _split_dir(self, split: str) -> Path:
        root = self.root()
        if (root / split).is_dir():
            return root / split
        if root.name == split or (split == self._default_split() and any(root.glob("*/*/*.trans.txt"))):
            return root
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise MchError(
            f"dataset {self.data_name!r}: split {split!r} is not in {root} (found: "
            f"{', '.join(have) or 'nothing'}); expected {self.layout}"
        )

    def _scan_dir(self, split: str) -> list[Record]:
        sdir = self._split_dir(split)
        native = int_option(self.options, "native_rate", NATIVE_RATE) or None
        target = int_option(self.options, "sample_rate", None)
        self._names = read_speakers(sdir.parent / "SPEAKERS.TXT")
        trans: dict[str, tuple[str, Path]] = {}
        for tf in sorted(sdir.glob("*/*/*.trans.txt")):
            for line in tf.read_text(encoding="utf-8", errors="replace").splitlines():
                uid, _, text = line.strip().partition(" ")
                if uid:
                    trans[uid] = (text.strip(), tf)
        audio = {f.stem: f for f in sdir.glob("*/*/*.flac")}
        if not audio and not trans:
            raise MchError(
                f"dataset {self.data_name!r}: no .flac files or transcripts under {sdir}; expected {self.layout}"
            )
        records = []
        for uid in sorted(set(audio) | set(trans)):
            spk, chap = (uid.split("-") + ["", ""])[:2]
            f = audio.get(uid)
            path = f if f is not None else trans[uid][1].parent / f"{uid}.flac"
            rec = Record(
                uid,
                trans.get(uid, ("", None))[0],
                {"speaker": spk, "lexical": ""},
                {"speaker": spk, "chapter": f"{spk}-{chap}", "utterance": uid},
                partial(read_audio, path, uid, expected_rate=native, target_rate=target),
                path=str(path),
            )
            if uid not in trans:
                rec.fail(f"no transcript line for it in {spk}-{chap}.trans.txt")
            elif not rec.text:
                rec.fail(f"its transcript line in {spk}-{chap}.trans.txt is empty")
            records.append(rec)
        return records

    # -- Hugging Face datasets
    def _hf_dataset(self, split: str) -> Any:
        try:
            import datasets
        except ImportError:  # pragma: no cover - a dependency
            raise MchError("reading LibriSpeech from Hugging Face needs the `datasets` package") from None
        if getattr(self, "_hf_disk", False):
            try:
                ds = datasets.load_from_disk(str(self.root()))
            except Exception as exc:  # noqa: BLE001 - any failure is the user's directory
                raise MchError(
                    f"dataset {self.data_name!r}: cannot load the datasets directory {self.root()} ({exc})"
                ) from None
            if isinstance(ds, datasets.DatasetDict):
                hf_split = self.options.get("hf_split") or HF_SPLITS.get(split, (None, split))[1]
                if hf_split not in ds:
                    raise MchError(f"dataset {self.data_name!r}: {self.root()} has splits {list(ds)}, not {hf_split!r}")
                ds = ds[hf_split]
        else:
            config, hf_split = HF_SPLITS.get(split, (None, split))
            config = self.options.get("hf_config", config)
            hf_split = self.options.get("hf_split", hf_split)
            download = str(self.options.get("download", "false")).lower() in ("1", "true", "yes")
            try:
                with _hub_offline(not download):
                    ds = datasets.load_dataset(
                        self._hf_id, config, split=hf_split, revision=self.options.get("revision")
                    )
            except Exception as exc:  # noqa: BLE001 - offline, missing, wrong config: one sentence
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MchError(
                    f"dataset {self.data_name!r}: {self._hf_id!r} is neither a local directory nor a "
                    f"Hugging Face dataset (config {config!r}, split {hf_split!r}) in the local cache "
                    f"({why}); pass --data-path DIR with a LibriSpeech directory, or download it "
                    f"first (--data-option download=true, online)"
                ) from None
        need = {"audio", "text", "speaker_id", "chapter_id", "id"}
        missing = need - set(ds.column_names)
        if missing:
            raise MchError(
                f"dataset {self.data_name!r}: the Hugging Face dataset lacks columns {sorted(missing)} "
                f"(expected the librispeech_asr columns {sorted(need)})"
            )
        return ds.cast_column("audio", datasets.Audio(decode=False))

    def _scan_hf(self, split: str) -> list[Record]:
        ds = self._hf_dataset(split)
        self._names = {}
        target = int_option(self.options, "sample_rate", None)
        native = int_option(self.options, "native_rate", NATIVE_RATE) or None
        meta = ds.remove_columns("audio")
        rows = meta.to_dict()

        def load(i: int, uid: str) -> Any:
            a = ds[i]["audio"]
            src = a.get("bytes") or a.get("path")
            if not src:
                raise sample_error(uid, a.get("path"), "the dataset row has no audio bytes or path")
            return read_audio(src, uid, expected_rate=native, target_rate=target, display_path=a.get("path") or uid)

        # the Arrow files hold the audio bytes: their size and mtime fingerprint every row
        arrow = [f["filename"] for f in getattr(ds, "cache_files", None) or [] if f.get("filename")]
        records = []
        for i, uid in enumerate(rows["id"]):
            spk, chap = str(rows["speaker_id"][i]), str(rows["chapter_id"][i])
            rec = Record(
                str(uid),
                str(rows["text"][i] or ""),
                {"speaker": spk, "lexical": ""},
                {"speaker": spk, "chapter": f"{spk}-{chap}", "utterance": str(uid)},
                partial(load, i, str(uid)),
                path=f"{getattr(self, '_hf_id', None) or self.root()}[{i}]",
                meta={"media_files": arrow},
            )
            if not rec.text:
                rec.fail("its transcript is empty")
            records.append(rec)
        return records

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        assert split is not None
        self.root()
        hf = getattr(self, "_hf_id", None) or getattr(self, "_hf_disk", False)
        records = self._scan_hf(split) if hf else self._scan_dir(split)
        usable = [r for r in records if r.error is None]
        labels, vocab = lexical_labels([r.text for r in usable], protocol)
        self._extra(split, protocol)["vocab"] = vocab
        for r, lab in zip(usable, labels, strict=True):
            r.labels["lexical"] = lab
            r.meta["transcript"] = r.text
            if protocol == "default":
                r.text = sentence_case(r.text)
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        ok = [r for r in records if r.error is None]
        speakers = ordered_classes(r.labels["speaker"] for r in ok)
        names = getattr(self, "_names", {})
        return {
            "speaker": Attribute(
                "speaker",
                speakers,
                {s: [names[s]] if s in names else [f"reader {s}"] for s in speakers},
                "The speaker is",
                group_key="utterance",
                verbalizable=False,  # "reader 1089": no decoder can name it
                description="the reader (speaker id); not grouped beyond the utterance, because several "
                "test-clean readers have a single chapter",
                label_rule={p: "speaker id = first field of the utterance id" for p in ("default", "paper")},
            ),
            "lexical": lexical_attribute(
                [r.labels["lexical"] for r in ok],
                self._extra(self._split, protocol)["vocab"],
                protocol,
                "The speaker says the word",
                "chapter",
                "transcript",
            ),
        }
