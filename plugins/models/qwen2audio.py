"""Qwen2-Audio (`Qwen/Qwen2-Audio-7B-Instruct`) through transformers' `Qwen2AudioForConditionalGeneration`.

Module tree (transformers 5) and the stages mapped onto it::

    Qwen2AudioForConditionalGeneration
    ├── model: Qwen2AudioModel                             (forward() runs this: no LM head)
    │   ├── audio_tower: Qwen2AudioEncoder   conv stem, layers, AvgPool1d(2)
    │   │   └── layer_norm              (B, 750, 1280)               `encoder`
    │   ├── multi_modal_projector       Linear 1280 -> 4096           `adapter`
    │   └── language_model: Qwen2Model
    │       ├── embed_tokens                                          `adapter` (text view)
    │       ├── layers.{0..31}                                        `llm.0` .. `llm.31`
    │       └── norm                                                  `llm.final`
    └── lm_head

The processor pads every clip to 30 s (3000 mel frames; longer audio is truncated), so the
encoder and projector always emit 750 rows, of which only the first
n = ((L - 1) // 2 + 1 - 2) // 2 + 1 (L = real mel frames, as the processor computes it)
are scattered into the LLM as `<|AUDIO|>` tokens. Default pooling at `encoder`/`adapter`
(span `modality`) uses only those n rows; span `all` (the paper protocol) averages all 750,
padding included (reference §7.3). Audio is resampled to the feature extractor's rate
(16 kHz) with `scipy.signal.resample_poly`.

Prompt (both protocols; the paper's, and also the model's own chat format): the
processor's chat template on one user turn with an audio item and the text "Describe this
audio." (default protocol: the model option `prompt`), plus the generation prompt:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\nDescribe this audio.<|im_end|>\\n
    <|im_start|>assistant\\n

(one string; no BOS). Text view: the same string with the paired transcript in place of
`<|AUDIO|>` (between the audio bos/eos markers); span `modality` = the transcript's tokens.
Scoring: the prompt, then the query as the start of the assistant's answer; continuations
follow with a leading space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mch.api import MchError, Sample, SampleError
from mch.model import ModelPlugin, Pool, Prepared, resolve_module

from ._hf_common import (
    HFPluginMixin,
    checkpoint_dir,
    load_processor,
    locate,
    mono_waveform,
    pad_id,
    positions,
    right_pad,
    span_mask,
    token_pool,
)

PAPER_INSTRUCTION = "Describe this audio."


def audio_tokens(mel_frames: int) -> int:
    """Rows of the encoder output that reach the LLM for L real mel frames (conv stride 2,
    then average pooling by 2), as Qwen2AudioProcessor counts them."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


from ._hf_common import HF_OPTIONS, Param  # noqa: E402 - option declarations


class Qwen2Audio(HFPluginMixin, ModelPlugin):
    hf_class = "Qwen2AudioForConditionalGeneration"
    modality = "speech"
    option_specs = {**HF_OPTIONS, "prompt": Param(str, help="the default protocol's instruction after the audio")}
    views = ("modal", "text")
    inner_path = "model"
    answer_sep = ""  # the answer starts right after "<|im_start|>assistant\n"

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        path = checkpoint_dir(self)
        self.processor = load_processor(self, AutoProcessor, path, "Qwen2-Audio processor")
        self.tokenizer = self.processor.tokenizer
        model = self._load_model(Qwen2AudioForConditionalGeneration, path, "Qwen2AudioForConditionalGeneration")
        self.audio_token_id = int(model.config.audio_token_id)
        self.sampling_rate = int(self.processor.feature_extractor.sampling_rate)
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _build_paths(self, model: torch.nn.Module) -> dict[str, str]:
        name = self.spec.name
        decoder = locate(model, ["model.language_model", "language_model.model"], "language model", name)
        self.n_layers = len(resolve_module(model, f"{decoder}.layers"))
        return {
            "encoder": locate(model, ["model.audio_tower.layer_norm", "audio_tower.layer_norm"], "audio encoder", name),
            "adapter": locate(model, ["model.multi_modal_projector", "multi_modal_projector"], "projector", name),
            "decoder": decoder,
            "embed": f"{decoder}.embed_tokens",
        }

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        return self._stages(view)

    def stage_dims(self, view: str = "modal") -> dict[str, int]:
        dims = {s: self.config.text_config.hidden_size for s in self.stage_map(view)}
        if view == "modal":
            dims["encoder"] = self.config.audio_config.d_model
        return dims

    # ------------------------------------------------------------------ prompts
    def render_prompt(
        self, protocol: str, view: str = "modal", text: str | None = None, query: str = ""
    ) -> tuple[str, tuple[int, int] | None]:
        """The prompt string and, in text view, the character span of the text in it."""
        instruction = self._instruction(protocol)
        conv = [
            {
                "role": "user",
                "content": [{"type": "audio", "audio_url": "placeholder"}, {"type": "text", "text": instruction}],
            }
        ]
        s = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        if not isinstance(s, str):
            s = s[0]
        s += query
        if view != "text":
            return s, None
        at = s.find(self.processor.audio_token)
        if at < 0:
            raise MchError(f"model {self.spec.name!r}: the chat template has no {self.processor.audio_token} slot")
        assert text is not None
        return s[:at] + text + s[at + len(self.processor.audio_token) :], (at, at + len(text))

    def _instruction(self, protocol: str) -> str:
        return PAPER_INSTRUCTION if protocol == "paper" else str(self.options.get("prompt", PAPER_INSTRUCTION))

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        return self.render_prompt(protocol, "modal", query=query)[0]

    # ------------------------------------------------------------------ inputs
    def _waveform(self, s: Sample) -> np.ndarray:
        return mono_waveform(s, self.spec.name, self.sampling_rate)

    def _prepare_inputs(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        suffix: Sequence[Sequence[int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self._require_loaded()
        seqs, inside, feats, fmasks, n_audio = [], [], [], [], []
        for s in samples:
            if view == "text":
                ids, mask = self._text_ids(s, protocol, query)
                seqs.append(ids)
                inside.append(mask)
                continue
            prompt, _ = self.render_prompt(protocol, "modal", query=query)
            enc = self.processor(
                text=prompt, audio=self._waveform(s), sampling_rate=self.sampling_rate, return_tensors="pt"
            )
            ids = enc["input_ids"][0]
            n = audio_tokens(int(enc["feature_attention_mask"].sum()))
            if int((ids == self.audio_token_id).sum()) != n:
                raise MchError(
                    f"model {self.spec.name!r}: the processor expanded the audio to "
                    f"{int((ids == self.audio_token_id).sum())} tokens, expected {n}"
                )
            if n < 2:  # a single audio token sends transformers down its legacy merge path
                raise SampleError(
                    f"sample {s.sample_id}: the clip is too short for Qwen2-Audio "
                    f"(it needs at least 7 mel frames, about 0.07 s)",
                    sample_id=s.sample_id,
                )
            seqs.append(ids.tolist())
            feats.append(enc["input_features"])
            fmasks.append(enc["feature_attention_mask"])
            n_audio.append(n)
        if suffix is not None:  # e.g. the paired text as the answer, for losses
            seqs = [list(q) + list(x) for q, x in zip(seqs, suffix, strict=True)]
        ids, att = right_pad(seqs, pad_id(self.tokenizer, getattr(self, "audio_token_id", None)))
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": att, "position_ids": positions(att)}
        if view == "modal":
            inputs["input_features"] = torch.cat(feats, 0).to(self.torch_dtype)
            inputs["feature_attention_mask"] = torch.cat(fmasks, 0).long()
            mod = (ids == self.audio_token_id) & att.bool()
        else:
            mod = span_mask(att, inside)
        inputs = {k: v.to(self.input_device) for k, v in inputs.items()}
        inputs["use_cache"] = False
        return inputs, {"modality_mask": mod, "attention_mask": att, "n_audio": n_audio}

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        inputs, info = self._prepare_inputs(samples, protocol, view)
        mod, real = info["modality_mask"], info["attention_mask"].bool()
        B = len(samples)
        owner = torch.arange(B)
        llm = token_pool(mod, real)
        pools = {"llm": llm}
        if view == "text":
            pools["adapter"] = llm
        else:
            rows = audio_tokens(inputs["input_features"].shape[-1])  # 750 for 3000 frames
            real_rows = torch.arange(rows)[None, :] < torch.tensor(info["n_audio"])[:, None]
            enc = Pool(owner, {"modality": real_rows, "all": torch.ones(B, rows, dtype=torch.bool)})
            pools.update(encoder=enc, adapter=enc)
        return Prepared(
            inputs=inputs,
            pools=pools,
            n=B,
            info={
                "protocol": protocol,
                "view": view,
                "n_tokens": real.sum(1).tolist(),
                "n_audio_tokens": info["n_audio"],
            },
        )
