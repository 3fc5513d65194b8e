"""The speech corpora: CREMA-D, LibriSpeech and VoxCeleb1 layouts, spoken by `voice`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mch.api import MchError

from .._media import write_audio
from ..cremad import SENTENCES
from ._seed import hash_seed
from .voice import EMOTION_PROSODY, LEVEL_SCALE, SPEECH_RATE, make_voices, speech_engine

# -- text for the readers (LibriSpeech, VoxCeleb1)

_TOPICS = {
    "sea": ["ship", "sailor", "harbor", "storm", "island", "captain", "wave", "anchor"],
    "forest": ["tree", "wolf", "hunter", "river", "path", "cabin", "fox", "moss"],
    "city": ["street", "market", "carriage", "merchant", "tower", "bridge", "lamp", "crowd"],
    "home": ["kitchen", "mother", "table", "fire", "window", "garden", "letter", "bread"],
    "war": ["soldier", "horse", "general", "battle", "sword", "camp", "flag", "cannon"],
    "court": ["king", "queen", "castle", "knight", "crown", "servant", "throne", "hall"],
}
_VERBS = ["saw", "found", "carried", "watched", "followed", "remembered", "opened", "crossed", "heard", "loved"]
_ADJS = ["old", "dark", "quiet", "little", "bright", "cold", "strange", "golden"]
_TEMPLATES = [
    "the {a} {n1} {v} the {n2}",
    "he {v} a {a} {n1} near the {n2}",
    "and then the {n1} {v} her {n2} again",
    "she {v} the {n1} by the {a} {n2}",
    "in the morning the {n1} {v} the {a} {n2}",
]


def _sentence(rng: Any, topic: str) -> str:
    nouns = _TOPICS[topic]
    n1, n2 = rng.choice(nouns, size=2, replace=False)
    tpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return tpl.format(a=rng.choice(_ADJS), n1=n1, n2=n2, v=rng.choice(_VERBS))


# -- generators


def make_cremad(
    out: Path,
    *,
    seed: int = 0,
    actors: int = 4,
    sentences: int | list[str] = 4,
    emotions: list[str] | None = None,
    levels: list[str] | None = None,
    sample_rate: int = SPEECH_RATE,
    engine: str = "auto",
) -> dict[str, Any]:
    """AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav, actors from 1001."""
    codes = list(SENTENCES)[:sentences] if isinstance(sentences, int) else list(sentences)
    emotions = list(emotions or EMOTION_PROSODY)
    levels = list(levels or ["XX"])
    bad = (
        [c for c in codes if c not in SENTENCES]
        + [e for e in emotions if e not in EMOTION_PROSODY]
        + [lv for lv in levels if lv not in LEVEL_SCALE]
    )
    if bad:
        raise MchError(f"cremad generator: unknown sentence/emotion/level codes {bad}")
    engine, synth = speech_engine(engine)
    voices = make_voices(actors, seed)
    n = 0
    for a, voice in enumerate(voices):
        actor = str(1001 + a)
        for code in codes:
            for emo in emotions:
                for lv in levels:
                    pros = EMOTION_PROSODY[emo].scaled(LEVEL_SCALE[lv])
                    y = synth(SENTENCES[code], voice, pros, sample_rate, seed=hash_seed(seed, actor, code, emo, lv))
                    write_audio(out / "AudioWAV" / f"{actor}_{code}_{emo}_{lv}.wav", y, sample_rate)
                    n += 1
    return {"engine": engine, "files": n, "voices": [asdict(v) for v in voices]}


def make_librispeech(
    out: Path,
    *,
    seed: int = 0,
    speakers: int = 4,
    chapters: int = 2,
    utterances: int = 4,
    split: str = "test-clean",
    sample_rate: int = SPEECH_RATE,
    engine: str = "auto",
) -> dict[str, Any]:
    """{split}/{speaker}/{chapter}/{speaker}-{chapter}-{nnnn}.flac + {speaker}-{chapter}.trans.txt,
    SPEAKERS.TXT; each chapter reads from one topic, so its words are its own."""
    import numpy as np

    engine, synth = speech_engine(engine)
    rng = np.random.default_rng([seed, 7002])
    voices = make_voices(speakers, seed)
    spk_ids = sorted(int(x) for x in rng.choice(np.arange(100, 9000), size=speakers, replace=False))
    topics = list(_TOPICS)
    lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    truth = []
    n = 0
    for si, (spk, voice) in enumerate(zip(spk_ids, voices, strict=True)):
        lines.append(f"{spk:<5}| {'F' if si % 2 else 'M'} | {split:<17}| 10.00 | Synthetic Reader {si + 1}")
        for ci in range(chapters):
            chap = int(rng.integers(1000, 300000))
            topic = topics[(si * chapters + ci) % len(topics)]
            cdir = out / split / str(spk) / str(chap)
            trans = []
            for u in range(utterances):
                uid = f"{spk}-{chap}-{u:04d}"
                text = _sentence(rng, topic).upper()
                y = synth(text, voice, EMOTION_PROSODY["NEU"], sample_rate, seed=hash_seed(seed, uid))
                write_audio(cdir / f"{uid}.flac", y, sample_rate)
                trans.append(f"{uid} {text}")
                truth.append({"id": uid, "speaker": str(spk), "chapter": str(chap), "text": text})
                n += 1
            (cdir / f"{spk}-{chap}.trans.txt").write_text("\n".join(trans) + "\n")
    (out / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
    return {"engine": engine, "files": n, "utterances": truth}


def make_voxceleb1(
    out: Path,
    *,
    seed: int = 0,
    speakers: int = 4,
    videos: int = 2,
    utterances: int = 3,
    first_id: int = 10270,
    sample_rate: int = SPEECH_RATE,
    engine: str = "auto",
) -> dict[str, Any]:
    """wav/id{n}/{video}/{nnnnn}.wav + vox1_meta.csv (Set: test for id10270-id10309, else dev)
    + iden_split.txt."""
    import numpy as np

    engine, synth = speech_engine(engine)
    rng = np.random.default_rng([seed, 7003])
    voices = make_voices(speakers, seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    split_lines = []
    n = 0
    topics = list(_TOPICS)
    for si, voice in enumerate(voices):
        spk = f"id{first_id + si}"
        meta.append(
            f"{spk}\tSynth_Voice_{si + 1:02d}\t{'f' if si % 2 else 'm'}\tNowhere\t"
            f"{'test' if 10270 <= first_id + si <= 10309 else 'dev'}"
        )
        for vi in range(videos):
            video = "".join(rng.choice(alphabet, size=11))
            for u in range(utterances):
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                pros = EMOTION_PROSODY[["NEU", "HAP", "NEU", "SAD"][(vi + u) % 4]].scaled(0.4)
                y = synth(
                    _sentence(rng, topics[(si + vi) % len(topics)]), voice, pros, sample_rate, seed=hash_seed(seed, rel)
                )
                write_audio(out / "wav" / rel, y, sample_rate)
                split_lines.append(f"{1 + (u % 3)} {rel}")
                n += 1
    (out / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    (out / "iden_split.txt").write_text("\n".join(split_lines) + "\n")
    return {"engine": engine, "files": n}
