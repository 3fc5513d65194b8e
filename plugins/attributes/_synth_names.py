"""The offline corpora by name, and what each writes: the one table both the writers and
`mch data` read. A leaf, so that `mch data` (loaded at every start of `mch`) imports no writer."""

DESCRIPTIONS = {
    "cremad": "CREMA-D layout: synthetic actors x sentences x emotions (16 kHz WAV)",
    "esc50": "ESC-50 layout: synthetic sound classes in 5 folds (44.1 kHz WAV + meta/esc50.csv)",
    "librispeech": "LibriSpeech layout: synthetic readers, chapters and transcripts (16 kHz FLAC)",
    "voxceleb1": "VoxCeleb1 layout: synthetic speakers x videos x utterances (16 kHz WAV + vox1_meta.csv)",
    "coco": "COCO layout: rendered scenes with known objects (val2017 JPEG + instances/captions JSON)",
    "gqa": "GQA layout: rendered scenes with questions and answers (images + val_balanced_questions.json)",
}
