"""Ultravox (fixie-ai) as an mch model plugin, implemented here: no `trust_remote_code`.

The released model is Hub remote code; this module re-implements its architecture from
transformers' own parts and loads the released weights into it.

    UltravoxModel
    ├── audio_tower              Whisper encoder (transformers WhisperEncoder, our forward:
    │   │                        accepts < 30 s of mel frames, masks keys past audio_len)
    │   └── layer_norm           stage `encoder`   (chunks, ceil(mel/2), d_audio)
    ├── multi_modal_projector    stack 8 frames -> RMSNorm -> Linear (no bias) -> SwiGLU
    │                            -> ln_mid (RMSNorm, v0.5+) -> Linear -> ln_post (Identity
    │                            v0.5+, RMSNorm v0.4)
    │                            stage `adapter`   (chunks, ceil(mel/16), d_llm)
    └── language_model           LlamaForCausalLM (any AutoModelForCausalLM)
        ├── model.embed_tokens   text view: stage `adapter` (the decoder input of the text)
        ├── model.layers.{i}     stages `llm.i`
        └── model.norm           stage `llm.final`

Audio (as the Ultravox processor does it): resample to 16 kHz; Whisper log-mel features
of each clip alone (128 bins, hop 160, padded to a multiple of the hop, never truncated);
clips over 3000 mel frames (30 s) are cut into 30 s chunks, the last chunk zero-padded to
30 s; each chunk gives ceil(frames/16) audio tokens (encoder stride 2 x stack 8), written
in place of that many copies of the tokenizer's EOS token at the `<|audio|>` placeholder,
all chunks of a clip one after the other.

Prompts (the tokenizer's own chat template; the stock Llama-3.1-Instruct one inserts the
system block with "Cutting Knowledge Date: December 2023" / "Today Date: 26 Jul 2024"):
- `paper`: one user message whose content is exactly `<|audio|>`, with the generation
  prompt (extraction-and-labels.md §3.1). With the stock template this renders as
  `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date:
  December 2023\\nToday Date: 26 Jul 2024\\n\\n<|eot_id|><|start_header_id|>user<|end_header_id|>
  \\n\\n<|audio|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`.
- `default`: one user message `Describe this audio.\\n\\n<|audio|>` (option
  `user_template`, which must contain `<|audio|>` once), with the generation prompt: the
  instruction comes first, as in Ultravox's own training prompts, so the tokens before the
  audio are the same for every sample.
- GMI (`score`): the same prompt, then the query as the start of the assistant's answer,
  then each continuation with a leading space.
- Causal-test losses (`loss_terms`): `default` scores the paired text as the assistant's
  answer after the default prompt, on its own tokens; `paper` scores every next input id of
  the bare prompt, the EOS placeholders of the audio span included, as the reference did.
- Text view: `default` = the same template with the paired text in place of `<|audio|>`
  (span `modality` = the text's own tokens); `paper` = BOS + the raw text, no template
  (the reference's text-baseline format through this model's own LLM; the paper protocol's
  text baseline itself comes from the separate text-only model, the runner's `text_plan`).

The audio computation is the released model's (fixie-ai/ultravox `ultravox_model.py` and
`ultravox_processing.py`) at batch 1, under both protocols, checked token for token against
it (tests/test_models_ultravox.py): the encoder masks attention keys past each chunk's real
length; a continuation chunk (the 2nd, 3rd ... 30 s of a long clip) runs zero-padded to 30 s
as the release's processor makes it, so its convolutions and its last stacked token read
encoder outputs at padded positions, as in the release (mch once zeroed them under
`default`: 2.6% change of the pooled `adapter` vector of a 35 s clip on a tiny checkpoint);
a first chunk runs unpadded at batch 1, so frames past its length are zeroed before the
stride-2 convolution and before frame stacking, which keeps every vector independent of the
batch. `audio_latency_block_size` in config.json (the release's streaming mask: encoder
position i attends to key j only if j // block <= i // block) is applied; a value the
release would reject is one error.

Pooling: `default` pools every chunk of a long clip together (the pool's owner maps each
chunk row to its clip); `paper` keeps the reference's stored vector for clips over 30 s,
which is chunk 1 only at `encoder` and `adapter` (§7 item 11). Encoder/adapter `modality`
= the frames/tokens the LLM receives; `all` = every row position the clip has when run
alone (the last chunk of a long clip includes its zero padding).

Checkpoints: a directory (or HF id in the local cache) with `config.json` (`model_type`
"ultravox"; `audio_model_id`/`text_model_id` naming base checkpoints, or embedded
`audio_config`/`text_config`; `stack_factor`, `projector_act`, `projector_ln_mid`,
`hidden_size`, `norm_init`), safetensors weights named `multi_modal_projector.*`,
`audio_tower.*`, `language_model.*` (one file or an index of shards), and the tokenizer.
Weights missing from it are read from the named base checkpoints (Whisper keys
`model.encoder.*`, causal-LM keys as saved by transformers); options `audio_model` and
`text_model` point those at local copies. The release's config.json names its remote code
(`auto_map`); mch never runs it and passes --trust-remote-code through to transformers only
for the tokenizer (so a custom tokenizer needs the flag; nothing ever prompts).

Modules: `modeling` (the architecture), `transforms` (audio -> log-mel chunks), `loading`
(config, weights from the checkpoint and its base checkpoints, tokenizer, feature extractor,
adapter), `convert` (the reference's LoRA file as a PEFT adapter) and `plugin` (`Ultravox`).
"""

from __future__ import annotations

from .modeling import ProjectorShape, UltravoxProjector
from .plugin import Ultravox

__all__ = ["ProjectorShape", "Ultravox", "UltravoxProjector"]
