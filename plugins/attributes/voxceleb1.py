"""VoxCeleb1 (Nagrani et al. 2017): celebrity speech from YouTube, 16 kHz WAV.

Layout: `[wav/]{speaker id}/{video id}/{nnnnn}.wav` (e.g. `wav/id10270/5r0dWxy17C8/00001.wav`),
optionally `vox1_meta.csv` (tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality,
Set) beside `wav/` or one level up; its names become the speaker verbalizers and its Set
column defines the splits `dev` and `test` (the 40 test speakers). Split `all` (default)
takes every speaker under `wav/`.

Selection (the reference's 40 speakers x 100 utterances; which ones it took is unknown):
the first `n_speakers` speaker ids in sorted order, and per speaker `samples_per_speaker`
utterances taken round-robin over its videos in sorted order (video 1 utt 1, video 2 utt 1,
...), so every speaker spans as many sessions as possible. Both options accept 0 = all.
"""

from __future__ import annotations

import csv
import re
from functools import partial
from pathlib import Path

from mch.api import Attribute, MchError, Param

from ._corpus import Corpus, Record, int_option, ordered_classes
from ._media import read_audio

NATIVE_RATE = 16000
_SPK = re.compile(r"^id\d+$")


def read_meta(root: Path) -> dict[str, dict[str, str]]:
    for cand in (root / "vox1_meta.csv", root.parent / "vox1_meta.csv"):
        if cand.is_file():
            with open(cand, newline="", encoding="utf-8", errors="replace") as f:
                rows = list(csv.reader(f, delimiter="\t"))
            out = {}
            for row in rows[1:]:
                row = [c.strip() for c in row]
                if len(row) >= 5 and _SPK.match(row[0]):
                    out[row[0]] = {
                        "name": row[1].replace("_", " "),
                        "gender": row[2],
                        "nationality": row[3],
                        "set": row[4],
                    }
            return out
    return {}


class VoxCeleb1(Corpus):
    name = "voxceleb1"
    modality = "speech"
    option_specs = {
        **Corpus.option_specs,
        **Corpus.SPEECH_OPTIONS,
        "n_speakers": Param(int, ge=0, help="speakers used (0: all; default 40)"),
        "samples_per_speaker": Param(int, ge=0, help="utterances per speaker (0: all; default 100)"),
    }
    layout = "a VoxCeleb1 directory holding wav/{speaker id}/{video id}/*.wav (16 kHz), optionally vox1_meta.csv"
    default_split = "all"
    stratify = "speaker"

    def _find_root(self, path: Path) -> Path:
        for cand in (path / "wav", path):
            if cand.is_dir() and any(p.is_dir() and _SPK.match(p.name) for p in cand.iterdir()):
                return cand
        raise MchError(
            f"dataset {self.data_name!r}: no speaker directories (id10001, ...) in {path} or "
            f"{path / 'wav'}; expected {self.layout}"
        )

    def _norm_split(self, split: str | None) -> str | None:
        split = split or self.default_split
        if split not in ("all", "dev", "test"):
            raise MchError(f"dataset {self.data_name!r}: split must be 'all', 'dev' or 'test', not {split!r}")
        return split

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        root = self.root()
        meta = read_meta(root)
        self._meta = meta
        speakers = sorted(p.name for p in root.iterdir() if p.is_dir() and _SPK.match(p.name))
        if split in ("dev", "test"):
            if not meta:
                raise MchError(
                    f"dataset {self.data_name!r}: split {split!r} needs vox1_meta.csv beside {root}; "
                    f"use split 'all' without it"
                )
            speakers = [s for s in speakers if meta.get(s, {}).get("set") == split]
        n_spk = int_option(self.options, "n_speakers", 40) or None
        per_spk = int_option(self.options, "samples_per_speaker", 100) or None
        native = int_option(self.options, "native_rate", NATIVE_RATE) or None
        target = int_option(self.options, "sample_rate", None)
        records = []
        for spk in speakers[:n_spk]:
            videos = sorted(p for p in (root / spk).iterdir() if p.is_dir())
            queues = [sorted(v.glob("*.wav")) for v in videos]
            picked: list[Path] = []
            depth = 0
            while any(depth < len(q) for q in queues) and (per_spk is None or len(picked) < per_spk):
                for q in queues:
                    if depth < len(q) and (per_spk is None or len(picked) < per_spk):
                        picked.append(q[depth])
                depth += 1
            for f in picked:
                sid = f"{spk}/{f.parent.name}/{f.stem}"
                records.append(
                    Record(
                        sid,
                        "",
                        {"speaker": spk},
                        {"speaker": spk, "video": f"{spk}/{f.parent.name}"},
                        partial(read_audio, f, sid, expected_rate=native, target_rate=target),
                        path=str(f),
                        meta={"video": f.parent.name},
                    )
                )
        if not records:
            raise MchError(f"dataset {self.data_name!r}: split {split!r} has no utterances under {root}")
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        speakers = ordered_classes(r.labels["speaker"] for r in records if r.error is None)
        meta = getattr(self, "_meta", {})
        verb = {s: [meta[s]["name"]] if meta.get(s, {}).get("name") else [f"speaker {s}"] for s in speakers}
        return {
            "speaker": Attribute(
                "speaker",
                speakers,
                verb,
                "The speaker is",
                group_key="video",
                # celebrities' names can be known to a decoder; bare ids ("speaker id10001") cannot
                verbalizable=all(meta.get(s, {}).get("name") for s in speakers),
                description="the VoxCeleb1 speaker id; grouped by video (session)",
                label_rule={
                    p: "speaker id = top directory; first n_speakers ids (sorted), samples_per_speaker "
                    "utterances each, round-robin over videos"
                    for p in ("default", "paper")
                },
            )
        }
