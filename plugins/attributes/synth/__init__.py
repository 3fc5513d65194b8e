"""Offline corpora written on disk in the exact layout of the real ones, so that the real
loaders (and everything after them) run without downloading anything.

    from mch.plugins.attributes import synth
    synth.make("cremad", "/tmp/crema")        # -> /tmp/crema/AudioWAV/1001_IEO_ANG_XX.wav ...
    synth.make("coco", "/tmp/coco", counts=[7, 1, 12])

or `mch data make cremad --out /tmp/crema`. Every corpus is deterministic for a given seed
and parameters, takes about a second or less with the defaults, and carries a manifest
`mch_synth.json` (generator, parameters, engine, what was drawn). Generators:

| name        | layout written                                                           | default size |
|-------------|--------------------------------------------------------------------------|--------------|
| cremad      | AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav, 16 kHz                | 4 actors x 4 sentences x 6 emotions = 96 clips |
| esc50       | audio/{fold}-{src}-{take}-{target}.wav 44.1 kHz + meta/esc50.csv          | 6 classes x 5 folds = 30 clips of 5 s |
| librispeech | test-clean/{spk}/{chap}/{spk}-{chap}-{utt}.flac + .trans.txt, SPEAKERS.TXT | 4 speakers x 2 chapters x 4 utterances |
| voxceleb1   | wav/{id}/{video}/{nnnnn}.wav, vox1_meta.csv, iden_split.txt               | 4 speakers x 2 videos x 3 utterances |
| coco        | val2017/*.jpg + annotations/instances_val2017.json, captions_val2017.json | 24 scenes, 160x120 |
| gqa         | images/*.jpg + val_balanced_questions.json                                | 12 scenes x 5 questions |

Modules, by what they make: `voice` (the speech synthesiser), `speech` (the CREMA-D,
LibriSpeech and VoxCeleb1 writers), `sounds` (ESC-50), `scenes` (COCO, GQA), `writers` (the
table of writers, `make`, `ensure`) and `datasets` (the `synth-*` registry entries: the real
loaders reading a corpus generated on first use).
"""

from .writers import (
    CREATED_BY,
    DESCRIPTIONS,
    GENERATOR_PARAMS,
    GENERATORS,
    MANIFEST,
    check_args,
    ensure,
    make,
    read_manifest,
)

__all__ = [
    "CREATED_BY",
    "DESCRIPTIONS",
    "GENERATOR_PARAMS",
    "GENERATORS",
    "MANIFEST",
    "check_args",
    "ensure",
    "make",
    "read_manifest",
]
