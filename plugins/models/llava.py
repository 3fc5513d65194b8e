"""LLaVA-1.5 (`llava-hf/llava-1.5-7b-hf`) through transformers' `LlavaForConditionalGeneration`.

Module tree (transformers 5) and the stages mapped onto it::

    LlavaForConditionalGeneration
    ├── model: LlavaModel                                   (forward() runs this: no LM head)
    │   ├── vision_tower: CLIPVisionModel  (4.x: .vision_model level in between)
    │   │   ├── pre_layrnorm
    │   │   ├── encoder.layers.{0..23}
    │   │   │     layers[k] for hidden_states[vision_feature_layer]   `encoder` (default protocol)
    │   │   └── post_layernorm   (last layer's CLS only, 2-D)           `encoder` (paper protocol)
    │   ├── multi_modal_projector  Linear-GELU-Linear                    `adapter`
    │   └── language_model: LlamaModel
    │       ├── embed_tokens                                            `adapter` (text view)
    │       ├── layers.{0..31}                                          `llm.0` .. `llm.31`
    │       └── norm                                                    `llm.final`
    └── lm_head

Encoder stage. Default: the patch tokens the projector really receives, i.e. the output of
the vision block whose hidden state `vision_feature_layer` selects (-2: the penultimate
block), span `modality` = the rows the `vision_feature_select_strategy` keeps (`default`
drops CLS). Paper: the reference's hook, CLIP's `post_layernorm`, which only sees the last
layer's CLS (2-D) and is not what LLaVA feeds its projector (reference §7.4).

Prompts (one image per sample; the processor adds BOS and expands `<image>` to one token
per patch, 576 at 336 px):

    paper   "<image>\\nDescribe this image."                      (the reference, raw)
    default "USER: <image>\\nDescribe this image. ASSISTANT:"     (LLaVA-1.5's conversation format)

The default instruction can be changed with the model option `prompt`. Text view: the same
string with the paired caption in place of `<image>`; span `modality` = the caption's
tokens. Scoring (`score`, GMI): the protocol's prompt, a space, then the query; the
continuations follow with a leading space. Images go through the checkpoint's image
processor (its PIL variant when torchvision is missing: resize the shortest side, center
crop, CLIP mean/std).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mch.api import MchError, Sample, SampleError
from mch.model import ModelPlugin, Pool, Prepared, resolve_module

from ._hf_common import (
    HFPluginMixin,
    checkpoint_dir,
    load_processor,
    locate,
    pad_id,
    positions,
    right_pad,
    span_mask,
    token_pool,
)

PAPER_INSTRUCTION = "Describe this image."


from ._hf_common import HF_OPTIONS, Param  # noqa: E402 - option declarations


class Llava(HFPluginMixin, ModelPlugin):
    hf_class = "LlavaForConditionalGeneration"
    modality = "vision"
    option_specs = {**HF_OPTIONS, "prompt": Param(str, help="the default protocol's instruction after the image")}
    views = ("modal", "text")
    inner_path = "model"

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        path = checkpoint_dir(self)
        self.processor = load_processor(self, AutoProcessor, path, "LLaVA processor")
        self.tokenizer = self.processor.tokenizer
        model = self._load_model(LlavaForConditionalGeneration, path, "LlavaForConditionalGeneration")
        self.image_token_id = int(model.config.image_token_id)
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _build_paths(self, model: torch.nn.Module) -> dict[str, str]:
        name = self.spec.name
        cfg = model.config
        if not isinstance(cfg.vision_feature_layer, int):
            raise MchError(
                f"model {name!r}: vision_feature_layer {cfg.vision_feature_layer} concatenates several "
                f"layers; mch's encoder stage supports a single layer (LLaVA-1.5 uses -2)"
            )
        layers = locate(
            model,
            ["model.vision_tower.vision_model.encoder.layers", "model.vision_tower.encoder.layers"],
            "CLIP encoder layers",
            name,
        )
        vroot = layers[: -len(".encoder.layers")]
        n_vis = len(resolve_module(model, layers))
        idx = cfg.vision_feature_layer % (n_vis + 1)  # index into hidden_states (0 = embeddings)
        decoder = locate(model, ["model.language_model", "language_model.model"], "language model", name)
        paths = {
            "encoder": f"{vroot}.pre_layrnorm" if idx == 0 else f"{layers}.{idx - 1}",
            "encoder_paper": locate(model, [f"{vroot}.post_layernorm"], "CLIP post_layernorm", name),
            "adapter": locate(model, ["model.multi_modal_projector", "multi_modal_projector"], "projector", name),
            "decoder": decoder,
            "embed": f"{decoder}.embed_tokens",
        }
        self.n_layers = len(resolve_module(model, f"{decoder}.layers"))
        self.strategy = cfg.vision_feature_select_strategy
        return paths

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """The encoder stage depends on the protocol (module docstring)."""
        return self._stages(view, "encoder_paper" if protocol == "paper" else "encoder")

    def stage_dims(self, view: str = "modal") -> dict[str, int]:
        d = self.config.text_config.hidden_size
        dims = {s: d for s in self.stage_map(view)}
        if view == "modal":
            dims["encoder"] = self.config.vision_config.hidden_size
        return dims

    # ------------------------------------------------------------------ prompts
    def render_prompt(
        self, protocol: str, view: str = "modal", text: str | None = None, query: str = ""
    ) -> tuple[str, tuple[int, int] | None]:
        """The prompt string and, in text view, the character span of the text in it."""
        media = self.processor.image_token if view == "modal" else text
        if protocol == "paper":
            head, tail = "", f"\n{PAPER_INSTRUCTION}"
        else:
            head, tail = "USER: ", f"\n{self._instruction(protocol)} ASSISTANT:"
        s = head + media + tail
        if query:
            s += " " + query
        span = (len(head), len(head) + len(media)) if view == "text" else None
        return s, span

    def _instruction(self, protocol: str) -> str:
        return PAPER_INSTRUCTION if protocol == "paper" else str(self.options.get("prompt", PAPER_INSTRUCTION))

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        return self.render_prompt(protocol, "modal", query=query)[0]

    # ------------------------------------------------------------------ inputs
    def _image(self, s: Sample) -> Any:
        from PIL import Image

        img = s.media
        if not isinstance(img, Image.Image):
            raise SampleError(
                f"sample {s.sample_id}: model {self.spec.name!r} needs a PIL image, got {type(img).__name__}",
                sample_id=s.sample_id,
            )
        return img.convert("RGB")

    def _prepare_inputs(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        suffix: Sequence[Sequence[int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self._require_loaded()
        seqs, inside, pixels = [], [], []
        for s in samples:
            if view == "text":
                ids, mask = self._text_ids(s, protocol, query)
                seqs.append(ids)
                inside.append(mask)
            else:
                prompt, _ = self.render_prompt(protocol, "modal", query=query)
                enc = self.processor(images=[self._image(s)], text=[prompt], return_tensors="pt")
                seqs.append(enc["input_ids"][0].tolist())
                pixels.append(enc["pixel_values"])
        if suffix is not None:  # e.g. the paired text as the answer, for losses
            seqs = [list(q) + list(x) for q, x in zip(seqs, suffix, strict=True)]
        ids, att = right_pad(seqs, pad_id(self.tokenizer, self.image_token_id))
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": att, "position_ids": positions(att)}
        if view == "modal":
            inputs["pixel_values"] = torch.cat(pixels, 0).to(self.torch_dtype)
            mod = (ids == self.image_token_id) & att.bool()
        else:
            mod = span_mask(att, inside)
        inputs = {k: v.to(self.input_device) for k, v in inputs.items()}
        inputs["use_cache"] = False
        return inputs, {"modality_mask": mod, "attention_mask": att}

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
            k = int(mod[0].sum())  # image tokens per image = projector rows
            pools["adapter"] = Pool(
                owner, {"modality": torch.ones(B, k, dtype=torch.bool), "all": torch.ones(B, k, dtype=torch.bool)}
            )
            if protocol == "paper":  # post_layernorm: one pooled CLS row per image
                one = torch.ones(B, 1, dtype=torch.bool)
                pools["encoder"] = Pool(owner, {"modality": one, "all": one})
            else:
                drop = 1 if self.strategy == "default" else 0
                enc = torch.ones(B, k + drop, dtype=torch.bool)
                sel = enc.clone()
                sel[:, :drop] = False
                pools["encoder"] = Pool(owner, {"modality": sel, "all": enc})
        return Prepared(
            inputs=inputs, pools=pools, n=B, info={"protocol": protocol, "view": view, "n_tokens": real.sum(1).tolist()}
        )
