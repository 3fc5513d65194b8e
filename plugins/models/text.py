"""The paper protocol's text-only baselines: `llama` (meta-llama/Llama-3.1-8B, base) and
`vicuna` (lmsys/vicuna-7b-v1.5), as model plugins of modality `text`.

Module tree (`AutoModelForCausalLM`, Llama family) and stages::

    LlamaForCausalLM
    ├── model: LlamaModel                  (forward() runs this: no LM head)
    │   ├── embed_tokens                   `adapter` (the decoder input of the text)
    │   ├── layers.{0..31}                 `llm.0` .. `llm.31`
    │   └── norm                           `llm.final`
    └── lm_head

View `text` only. Input, exactly as the reference's script 02: the raw transcript/caption,
tokenized with the model's own special tokens (BOS: `<|begin_of_text|>` for Llama-3.1,
`<s>` for Vicuna), no template, truncated at 512 tokens. Span `modality` = the text's own
tokens (BOS excluded); `all` = every token including BOS (the paper's pooling). Scoring:
the text, a newline, then the query; continuations follow with a leading space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mch.api import MchError, Sample
from mch.model import ModelPlugin, Prepared, resolve_module

from ._hf_common import (
    HF_OPTIONS,
    HFPluginMixin,
    checkpoint_dir,
    continuation_ids,
    decoder_stage_paths,
    load_processor,
    locate,
    pad_id,
    positions,
    require_text,
    right_pad,
    span_mask,
    token_pool,
)

if TYPE_CHECKING:
    from mch.model import LossTerms, ScoreParts

MAX_TOKENS = 512


class TextBaseline(HFPluginMixin, ModelPlugin):
    modality = "text"
    option_specs = dict(HF_OPTIONS)
    views = ("text",)

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = checkpoint_dir(self)
        self.tokenizer = load_processor(self, AutoTokenizer, path, "tokenizer")
        self._load_model(AutoModelForCausalLM, path, "AutoModelForCausalLM")
        self.inner_path = self.decoder_path  # no LM-head-less wrapper: the decoder runs the inputs
        self.validate_stage_map("text")

    def _build_paths(self, model: torch.nn.Module) -> dict[str, str]:
        decoder = locate(model, ["model"], "decoder (model.layers)", self.spec.name)
        self.n_layers = len(resolve_module(model, f"{decoder}.layers"))
        return {"decoder": decoder, "embed": f"{decoder}.embed_tokens"}

    def _check_view(self, view: str) -> None:
        if view != "text":
            raise MchError(f"model {self.spec.name!r} is a text-only baseline: it has only the text view, not {view!r}")

    def stage_map(self, view: str = "text", protocol: str = "default") -> dict[str, str]:
        """The same hook points under both protocols."""
        self._check_view(view)
        p = self._ensure_paths()
        stages = decoder_stage_paths(p["decoder"], self.n_layers)
        stages["adapter"] = p["embed"]
        return stages

    def stage_dims(self, view: str = "text") -> dict[str, int]:
        return {s: self.config.hidden_size for s in self.stage_map(view)}

    def render_prompt(
        self, protocol: str, view: str = "text", text: str | None = None, query: str = ""
    ) -> tuple[str, tuple[int, int] | None]:
        self._check_view(view)
        t = text or ""
        return t + (f"\n{query}" if query else ""), (0, len(t))

    def _instruction(self, protocol: str) -> str:
        return f"raw text with BOS, no template, truncated at {MAX_TOKENS} tokens"

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        return self.render_prompt(protocol, "text", "", query)[0]

    def _prepare_inputs(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        suffix: Sequence[Sequence[int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self._check_view(view)
        self._require_loaded()
        seqs, content = [], []
        for s in samples:
            text = require_text(s)
            if query:  # scoring: the text is truncated first so the query always fits
                ids = self.tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
                ids = ids + self.tokenizer("\n" + query, add_special_tokens=False)["input_ids"]
                special = [0] * len(ids)
            else:
                enc = self.tokenizer(text, truncation=True, max_length=MAX_TOKENS, return_special_tokens_mask=True)
                ids, special = enc["input_ids"], enc["special_tokens_mask"]
            seqs.append(ids)
            content.append([not x for x in special])
        ids, att = right_pad(seqs, pad_id(self.tokenizer))
        mod = span_mask(att, content)
        inputs = {"input_ids": ids, "attention_mask": att, "position_ids": positions(att)}
        inputs = {k: v.to(self.input_device) for k, v in inputs.items()}
        inputs["use_cache"] = False
        return inputs, {"modality_mask": mod, "attention_mask": att}

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "text") -> Prepared:
        inputs, info = self._prepare_inputs(samples, protocol, view)
        mod, real = info["modality_mask"], info["attention_mask"].bool()
        pool = token_pool(mod, real)
        return Prepared(
            inputs=inputs,
            pools={"llm": pool, "adapter": pool},
            n=len(samples),
            info={"protocol": protocol, "view": view, "n_tokens": real.sum(1).tolist()},
        )

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> LossTerms:
        """The text's own tokens after BOS (its content, and the prompt's own ids: both
        protocols agree for a text-only model)."""
        from mch.model import LossTerms

        self._require_loaded()
        with torch.enable_grad() if grad else torch.inference_mode():
            inputs, _ = self._prepare_inputs(samples, protocol, "text")
            logits = self.module(**inputs).logits[:, :-1]
            targets = inputs["input_ids"][:, 1:].masked_fill(inputs["attention_mask"][:, 1:] == 0, -100)
        return LossTerms(logits, targets)

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "text",
        grad: bool = False,
    ) -> ScoreParts:
        from mch.model import ScoreParts

        self._check_view(view)
        self._require_loaded()
        conts = continuation_ids(self.tokenizer, self._score_context(protocol, view, query), continuations)
        inputs, _ = self._prepare_inputs(samples, protocol, view, query)
        emb = resolve_module(self.module, self._paths["embed"])  # type: ignore[index]
        with torch.enable_grad() if grad else torch.no_grad():
            x = emb(inputs["input_ids"])
        att = inputs["attention_mask"].bool()
        return ScoreParts(self.module, [x[i][att[i]] for i in range(x.shape[0])], conts)

    def prompt_embeds(
        self, samples: Sequence[Sample], query: str, view: str = "text", protocol: str = "default", grad: bool = False
    ) -> list[torch.Tensor]:
        inputs, _ = self._prepare_inputs(samples, protocol, view, query)
        emb = resolve_module(self.module, self._paths["embed"])  # type: ignore[index]
        att = inputs["attention_mask"].bool()
        with torch.enable_grad() if grad else torch.no_grad():
            x = emb(inputs["input_ids"])
        return [x[i][att[i]] for i in range(x.shape[0])]

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "text"
    ) -> Any:
        self._check_view(view)
        return super().score(samples, query, continuations, protocol, view)
