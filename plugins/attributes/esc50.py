"""ESC-50 (Piczak 2015): 2000 five-second environmental recordings, 50 classes x 40 clips,
in 5 official folds. Layout: `audio/{fold}-{src_file}-{take}-{target}.wav` (44.1 kHz mono)
and `meta/esc50.csv` with columns filename, fold, target, category, esc10, src_file, take.

Clips are resampled to 16 kHz in the loader (both speech front-ends of the paper need
16 kHz; the reference resampled with an unknown method): scipy.signal.resample_poly,
recorded in each sample's meta. Option `sample_rate` changes the target (0 keeps 44.1 kHz).
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

from mch.api import Attribute, MchError

from ._corpus import Corpus, Record, int_option, ordered_classes
from ._media import read_audio

NATIVE_RATE = 44100
TARGET_RATE = 16000
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")

# The 50 categories in target order 0..49, with the words a decoder would use after
# "This is the sound of".
VERBALIZERS = {
    "dog": ["a dog", "a dog barking", "barking"],
    "rooster": ["a rooster", "a rooster crowing"],
    "pig": ["a pig", "a pig grunting"],
    "cow": ["a cow", "a cow mooing"],
    "frog": ["a frog", "frogs croaking"],
    "cat": ["a cat", "a cat meowing"],
    "hen": ["a hen", "a chicken clucking"],
    "insects": ["insects", "buzzing insects"],
    "sheep": ["a sheep", "sheep bleating"],
    "crow": ["a crow", "a crow cawing"],
    "rain": ["rain", "rainfall"],
    "sea_waves": ["sea waves", "the ocean"],
    "crackling_fire": ["a crackling fire", "fire"],
    "crickets": ["crickets", "crickets chirping"],
    "chirping_birds": ["birds chirping", "birdsong"],
    "water_drops": ["water drops", "dripping water"],
    "wind": ["wind", "the wind blowing"],
    "pouring_water": ["pouring water", "water being poured"],
    "toilet_flush": ["a toilet flushing", "a flushing toilet"],
    "thunderstorm": ["a thunderstorm", "thunder"],
    "crying_baby": ["a crying baby", "a baby crying"],
    "sneezing": ["sneezing", "a sneeze"],
    "clapping": ["clapping", "applause"],
    "breathing": ["breathing", "heavy breathing"],
    "coughing": ["coughing", "a cough"],
    "footsteps": ["footsteps", "walking"],
    "laughing": ["laughing", "laughter"],
    "brushing_teeth": ["brushing teeth", "a toothbrush"],
    "snoring": ["snoring", "someone snoring"],
    "drinking_sipping": ["drinking", "sipping"],
    "door_wood_knock": ["knocking on a door", "a knock"],
    "mouse_click": ["a mouse click", "clicking"],
    "keyboard_typing": ["typing on a keyboard", "typing"],
    "door_wood_creaks": ["a creaking door", "a door creaking"],
    "can_opening": ["a can opening", "opening a can"],
    "washing_machine": ["a washing machine"],
    "vacuum_cleaner": ["a vacuum cleaner", "vacuuming"],
    "clock_alarm": ["an alarm clock", "an alarm"],
    "clock_tick": ["a ticking clock", "a clock ticking"],
    "glass_breaking": ["glass breaking", "breaking glass"],
    "helicopter": ["a helicopter"],
    "chainsaw": ["a chainsaw"],
    "siren": ["a siren"],
    "car_horn": ["a car horn", "honking"],
    "engine": ["an engine", "a motor"],
    "train": ["a train"],
    "church_bells": ["church bells", "bells ringing"],
    "airplane": ["an airplane", "a plane"],
    "fireworks": ["fireworks"],
    "hand_saw": ["a hand saw", "sawing"],
}
CATEGORIES = list(VERBALIZERS)  # target order
ESC10 = (
    "dog",
    "rooster",
    "rain",
    "sea_waves",
    "crackling_fire",
    "crying_baby",
    "sneezing",
    "clock_tick",
    "helicopter",
    "chainsaw",
)


class ESC50(Corpus):
    name = "esc50"
    modality = "speech"
    option_specs = {**Corpus.option_specs, **Corpus.SPEECH_OPTIONS}
    layout = "an ESC-50 checkout with audio/*.wav (44.1 kHz) and meta/esc50.csv"
    default_split = "all"
    stratify = "acoustic"

    def _find_root(self, path: Path) -> Path:
        for cand in (path, path / "ESC-50", path / "ESC-50-master"):
            if (cand / "meta" / "esc50.csv").is_file():
                return cand
        raise MchError(
            f"dataset {self.data_name!r}: {path / 'meta' / 'esc50.csv'} does not exist; expected {self.layout}"
        )

    def _norm_split(self, split: str | None) -> str | None:
        split = (split or self.default_split).replace(" ", "")
        if split in ("all", "esc10"):
            return split
        folds = [f[4:] if f.startswith("fold") else f for f in split.split(",")]
        if not folds or not all(f in "12345" and len(f) == 1 for f in folds):
            raise MchError(
                f"dataset {self.data_name!r}: split {split!r} must be 'all', 'esc10' or folds such as 'fold1' or '1,2'"
            )
        return ",".join(f"fold{f}" for f in sorted(set(folds)))

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        root = self.root()
        csv_path = root / "meta" / "esc50.csv"
        target = int_option(self.options, "sample_rate", TARGET_RATE) or None
        native = int_option(self.options, "native_rate", NATIVE_RATE) or None
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise MchError(f"dataset {self.data_name!r}: cannot read {csv_path} ({exc.strerror})") from None
        missing = [c for c in COLUMNS if rows and c not in rows[0]] or ([] if rows else list(COLUMNS))
        if missing:
            raise MchError(
                f"dataset {self.data_name!r}: {csv_path} lacks columns {missing} (expected {', '.join(COLUMNS)})"
            )
        # a category must have one target and a target one category
        cat_targets: dict[str, set[str]] = {}
        target_cats: dict[str, set[str]] = {}
        for row in rows:
            cat_targets.setdefault(row["category"], set()).add(row["target"])
            target_cats.setdefault(row["target"], set()).add(row["category"])
        records = []
        for i, row in enumerate(rows):
            fname = (row["filename"] or "").strip()
            sid = Path(fname).stem or f"row{i + 2}"
            f = root / "audio" / fname
            cat, fold = row["category"].strip(), row["fold"].strip()
            rec = Record(
                sid,
                "",
                {"acoustic": cat},
                {"fold": fold, "clip": sid},
                partial(read_audio, f, sid, expected_rate=native, target_rate=target),
                path=str(f),
                meta={
                    "target": row["target"],
                    "esc10": row["esc10"],
                    "src_file": row["src_file"],
                    "take": row["take"],
                    "native_rate": NATIVE_RATE,
                    "sample_rate": target or native,
                    "resampler": "scipy.signal.resample_poly" if target else None,
                },
            )
            if not fname:
                rec.fail(f"row {i + 2} of {csv_path} has no filename")
            elif fold not in ("1", "2", "3", "4", "5"):
                rec.fail(f"its fold {fold!r} in {csv_path} is not 1-5")
            elif not cat:
                rec.fail(f"it has no category in {csv_path}")
            elif len(cat_targets[cat]) > 1 or len(target_cats[row["target"]]) > 1:
                rec.fail(f"category {cat!r} and target {row['target']!r} disagree with other rows of {csv_path}")
            if split == "esc10" and str(row["esc10"]).strip().lower() not in ("true", "1"):
                continue
            if split.startswith("fold") and f"fold{fold}" not in split.split(","):
                continue
            records.append(rec)
        if not records:
            raise MchError(f"dataset {self.data_name!r}: split {split!r} selects no clip of {csv_path}")
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        cats = ordered_classes(r.labels["acoustic"] for r in records if r.error is None)
        verb = {c: VERBALIZERS.get(c, [c.replace("_", " ")]) for c in cats}
        return {
            "acoustic": Attribute(
                "acoustic",
                cats,
                verb,
                "This is the sound of",
                group_key="fold",
                description="the ESC-50 category; grouped by official fold (clips of one source recording share a fold)",
                label_rule={p: "category column of meta/esc50.csv" for p in ("default", "paper")},
            )
        }
