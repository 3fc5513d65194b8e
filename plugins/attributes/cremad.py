"""CREMA-D: 91 actors speaking 12 sentences in 6 emotions (Cao et al. 2014).

Point mch at the `AudioWAV` directory (or the checkout containing it). Every label comes from
the file name `{actor}_{sentence}_{emotion}_{level}.wav`, e.g. `1001_DFA_ANG_XX.wav`: actor
1001, sentence DFA ("Don't forget a jacket"), anger, level unspecified. Audio is 16 kHz mono.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from mch.api import Attribute, MchError

from ._corpus import Corpus, Record, int_option, ordered_classes
from ._lexical import content_tokens, lexical_attribute, lexical_labels
from ._media import read_audio

# The corpus's emotion codes and the label strings the reference loader stored.
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sadness"}
EMOTION_VERBALIZERS = {
    "anger": ["angry", "furious", "mad"],
    "disgust": ["disgusted", "revolted", "repulsed"],
    "fear": ["afraid", "scared", "fearful"],
    "happy": ["happy", "cheerful", "joyful"],
    "neutral": ["neutral", "calm", "flat"],
    "sadness": ["sad", "unhappy", "gloomy"],
}
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
FILE_RE = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
NATIVE_RATE = 16000


def sentence_verbalizers(codes: list[str]) -> dict[str, list[str]]:
    """Each sentence's content words that no other sentence in `codes` has (all of its
    content words if every one is shared)."""
    words = {c: content_tokens(SENTENCES[c]) for c in codes}
    out = {}
    for c in codes:
        others = {w for d in codes if d != c for w in words[d]}
        own = [w for w in words[c] if w not in others]
        out[c] = own or words[c] or [c.lower()]
    return out


class CremaD(Corpus):
    name = "cremad"
    modality = "speech"
    option_specs = {**Corpus.option_specs, **Corpus.SPEECH_OPTIONS}
    layout = "a CREMA-D AudioWAV directory of {actor}_{sentence}_{emotion}_{level}.wav files (16 kHz)"
    default_split = "all"
    stratify = "emotion"

    def _find_root(self, path: Path) -> Path:
        for cand in (path / "AudioWAV", path):
            if cand.is_dir() and any(cand.glob("*.wav")):
                return cand
        raise MchError(
            f"dataset {self.data_name!r}: no .wav files in {path} or {path / 'AudioWAV'}; expected {self.layout}"
        )

    def _norm_split(self, split: str | None) -> str | None:
        split = split or self.default_split
        if split != "all":
            raise MchError(f"dataset {self.data_name!r} has one split, 'all', not {split!r}")
        return split

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        root = self.root()
        native = int_option(self.options, "native_rate", NATIVE_RATE) or None
        target = int_option(self.options, "sample_rate", None)
        records = []
        for f in sorted(root.glob("*.wav")):
            sid = f.stem
            rec = Record(
                sid,
                "",
                {"emotion": "", "speaker": "", "lexical": ""},
                {"actor": "", "sentence": "", "utterance": sid},
                partial(read_audio, f, sid, expected_rate=native, target_rate=target),
                path=str(f),
            )
            try:
                name = parse_name(sid)
            except MchError:
                rec.fail("the file name does not follow {actor}_{sentence}_{emotion}_{level}.wav, so it has no labels")
                records.append(rec)
                continue
            actor, sent, level = name["actor"], name["sentence"], name["level_code"]
            rec.labels["emotion"] = name["emotion"]  # an unknown code fails the class check
            rec.labels["speaker"] = actor
            rec.groups.update(actor=actor, sentence=sent)
            rec.meta.update(level=name["level"], emotion_code=name["emotion_code"])
            if sent in SENTENCES:
                rec.text = SENTENCES[sent]
            else:
                rec.fail(f"sentence code {sent!r} is not one of CREMA-D's 12 sentences")
            if level not in LEVELS:
                rec.fail(f"intensity level {level!r} is not one of {', '.join(LEVELS)}")
            records.append(rec)
        usable = [r for r in records if r.error is None]
        if protocol == "paper":
            labels, self._extra(split, protocol)["vocab"] = lexical_labels([r.text for r in usable], "paper")
            for r, lab in zip(usable, labels, strict=True):
                r.labels["lexical"] = lab
        else:
            for r in usable:
                r.labels["lexical"] = r.groups["sentence"]
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        ok = [r for r in records if r.error is None]
        emotions = ordered_classes((r.labels["emotion"] for r in ok), list(EMOTIONS.values()))
        emotions = [e for e in emotions if e in EMOTION_VERBALIZERS]
        actors = ordered_classes(r.labels["speaker"] for r in ok)
        attrs = {
            "emotion": Attribute(
                "emotion",
                emotions,
                {e: EMOTION_VERBALIZERS[e] for e in emotions},
                "The speaker sounds",
                group_key="actor",
                description="the acted emotion, from the file name's emotion code",
                label_rule={
                    p: "file-name code ANG/DIS/FEA/HAP/NEU/SAD -> anger/disgust/fear/happy/neutral/sadness"
                    for p in ("default", "paper")
                },
            ),
            "speaker": Attribute(
                "speaker",
                actors,
                {a: [f"actor {a}"] for a in actors},
                "The speaker is",
                group_key="sentence",
                verbalizable=False,  # "actor 1001": no decoder can name it from a voice
                description="the actor id from the file name; grouped by sentence (every actor speaks every sentence)",
                label_rule={p: "actor id = first field of the file name" for p in ("default", "paper")},
            ),
        }
        if protocol == "paper":
            attrs["lexical"] = lexical_attribute(
                [r.labels["lexical"] for r in ok],
                self._extra(self._split, protocol)["vocab"],
                "paper",
                "The speaker says the word",
                "actor",
                "transcript",
            )
        else:
            codes = ordered_classes((r.labels["lexical"] for r in ok), list(SENTENCES))
            attrs["lexical"] = Attribute(
                "lexical",
                codes,
                sentence_verbalizers(codes),
                "The speaker says the word",
                group_key="actor",
                text_describable=True,
                description="which of the 12 fixed sentences is spoken, verbalized by its own content words",
                label_rule={
                    "default": "sentence code from the file name (12 classes, e.g. DFA = \"Don't forget "
                    "a jacket.\"); verbalizers are the sentence's content words that no other "
                    "sentence has (stop words removed)",
                    "paper": "first top-50 word of the sentence text (reference script 03)",
                },
            )
        return attrs


def parse_name(stem: str) -> dict[str, Any]:
    """The one reader of CREMA-D file names: `1001_DFA_ANG_XX` -> {'actor': '1001', 'sentence':
    'DFA', 'emotion': 'anger', 'level': 'unspecified', 'emotion_code': 'ANG', 'level_code': 'XX'}
    (an unknown code is kept as its own label)."""
    m = FILE_RE.match(stem)
    if not m:
        raise MchError(f"{stem!r} is not a CREMA-D file name ({{actor}}_{{sentence}}_{{emotion}}_{{level}})")
    actor, sent, emo, level = m.groups()
    return {
        "actor": actor,
        "sentence": sent,
        "emotion": EMOTIONS.get(emo, emo),
        "level": LEVELS.get(level, level),
        "emotion_code": emo,
        "level_code": level,
    }
