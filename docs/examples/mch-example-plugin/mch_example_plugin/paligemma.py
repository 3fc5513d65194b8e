"""PaliGemma (`google/paligemma-3b-pt-224`) as an mch model plugin: the worked example of
docs/contributing-a-model.md.

Module tree (transformers 5, `PaliGemmaForConditionalGeneration`) and the stages::

    PaliGemmaForConditionalGeneration
    ├── model: PaliGemmaModel                 forward() runs this one: no LM head
    │   ├── vision_tower: SiglipVisionModel
    │   │   └── post_layernorm                (B, 256, 1152)  `encoder`: what the projector reads
    │   ├── multi_modal_projector (Linear)    (B, 256, 2048)  `adapter`: what enters the LLM
    │   └── language_model: GemmaModel
    │       ├── embed_tokens                  (scaled by sqrt(d) inside)  `adapter` in the text view
    │       ├── layers.{0..17}                `llm.0` .. `llm.17`
    │       └── norm                          `llm.final`
    └── lm_head

Prompt: PaliGemma's own format, `<image>` x 256, BOS, the task prefix ("caption en", model
option `prompt`), a newline; the processor builds it. PaliGemma is a prefix LM: the image
and the prefix attend to each other both ways, the answer causally. We pass
`token_type_ids` (0 = prefix, 1 = answer) so the model runs as it was trained. The paper
never studied PaliGemma, so both protocols use this prompt (they differ in the span the
runner pools: `modality` by default, `all` under `paper`). Text view: BOS, the paired text,
a newline, the task prefix, a newline; span `modality` = the text's tokens. Scoring: the
query and each continuation form the answer (token type 1) after the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mch.api import MchError, Param, Sample, SampleError
from mch.checkpoints import load_lora_adapter, resolve_checkpoint
from mch.model import ModelPlugin, Pool, Prepared, Scores

DECODER = "model.language_model"


class PaliGemma(ModelPlugin):
    modality = "vision"
    views = ("modal", "text")
    # the options it takes (--model-option KEY=VALUE), checked before any work
    option_specs = {"prompt": Param(str, help="PaliGemma's task prefix, default 'caption en'")}

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

        path = resolve_checkpoint(self.checkpoint, self.revision, self.spec.name)  # one clear error offline
        # trust_remote_code always explicit: left as None, transformers asks on stdin whether to
        # run a checkpoint's own code (and runs it on "y"); mch runs it only with --trust-remote-code
        trust = bool(self.trust_remote_code)
        try:
            self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                str(path), dtype=self.torch_dtype, local_files_only=True, trust_remote_code=trust
            )
        except Exception as exc:  # noqa: BLE001 - a broken directory is a user error
            raise MchError(
                f"model {self.spec.name!r}: cannot load {path} as a PaliGemma checkpoint ({type(exc).__name__})"
            ) from None
        if self.adapter:  # --adapter: a PEFT LoRA made on the LLM, merged so stage paths stay valid
            model.model.language_model = load_lora_adapter(model.model.language_model, self.adapter, merge=True)
        self.module = model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self.config = model.config
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _text_config(self) -> Any:
        if self.module is not None:
            return self.config.text_config
        from transformers import AutoConfig  # before load: the config alone names the layers

        path = resolve_checkpoint(self.checkpoint, self.revision, self.spec.name)
        return AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=bool(self.trust_remote_code)
        ).text_config

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        n = self._text_config().num_hidden_layers
        stages = {f"llm.{i}": f"{DECODER}.layers.{i}" for i in range(n)}
        stages["llm.final"] = f"{DECODER}.norm"
        if view == "text":
            stages["adapter"] = f"{DECODER}.embed_tokens"
        else:
            stages["encoder"] = "model.vision_tower.post_layernorm"
            stages["adapter"] = "model.multi_modal_projector"
        return stages

    def stage_dims(self, view: str = "modal") -> dict[str, int]:
        dims = {s: self.config.text_config.hidden_size for s in self.stage_map(view)}
        if view == "modal":
            dims["encoder"] = self.config.vision_config.hidden_size
        return dims

    def lora_target(self) -> str:
        return DECODER

    def prompt_id(self, protocol: str, view: str) -> str:
        return f"{view}/{self.options.get('prompt', 'caption en')}"

    # ------------------------------------------------------------------ inputs
    def _sequence(self, sample: Sample, view: str) -> tuple[list[int], list[bool], Any]:
        """Token ids, which of them are the modality span, and the pixels (modal view)."""
        task = str(self.options.get("prompt", "caption en"))
        if view == "modal":
            from PIL import Image

            if not isinstance(sample.media, Image.Image):
                raise SampleError(f"sample {sample.sample_id}: PaliGemma needs a PIL image", sample.sample_id)
            enc = self.processor(images=[sample.media.convert("RGB")], text=["<image>" + task], return_tensors="pt")
            ids = enc["input_ids"][0].tolist()
            return ids, [i == self.config.image_token_id for i in ids], enc["pixel_values"]
        text = (sample.text or "").strip()
        if not text:
            raise SampleError(f"sample {sample.sample_id} has no paired text for the text view", sample.sample_id)
        bos = self.tokenizer.bos_token
        enc = self.tokenizer(f"{bos}{text}\n{task}\n", add_special_tokens=False, return_offsets_mapping=True)
        start, end = len(bos), len(bos) + len(text)
        inside = [s < end and e > start for s, e in enc["offset_mapping"]]
        return enc["input_ids"], inside, None

    def _batch(self, seqs: Sequence[list[int]], answers: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ids, mask, positions and token types (answer tokens = 1, causal)."""
        answers = answers or [[] for _ in seqs]
        full = [list(q) + list(a) for q, a in zip(seqs, answers, strict=True)]
        L = max(map(len, full))
        ids = torch.full((len(full), L), self.tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        types = torch.ones_like(ids)
        for i, (q, f) in enumerate(zip(seqs, full, strict=True)):
            ids[i, : len(f)] = torch.tensor(f)
            att[i, : len(f)] = 1
            types[i, : len(q)] = 0
        pos = (att.cumsum(-1) - 1).clamp(min=0)  # right padding + explicit positions: no batch effects
        return {"input_ids": ids, "attention_mask": att, "position_ids": pos, "token_type_ids": types}

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        rows = [self._sequence(s, view) for s in samples]
        inputs = self._batch([r[0] for r in rows])
        real = inputs["attention_mask"].bool()
        mod = torch.zeros_like(real)
        for i, (_, inside, _) in enumerate(rows):
            mod[i, : len(inside)] = torch.tensor(inside)
        owner = torch.arange(len(samples))
        llm = Pool(owner, {"modality": mod, "all": real, "text": real & ~mod})
        pools = {"llm": llm}
        if view == "modal":
            inputs["pixel_values"] = torch.cat([r[2] for r in rows]).to(self.torch_dtype)
            n_patches = int(mod[0].sum())  # every image gives the same number of patches
            patches = Pool(owner, {"modality": torch.ones(len(samples), n_patches, dtype=torch.bool)})
            pools.update(encoder=patches, adapter=patches)
        else:
            pools["adapter"] = llm
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return Prepared(inputs=inputs, pools=pools, n=len(samples), info={"protocol": protocol, "view": view})

    def forward(self, prepared: Prepared) -> Any:
        return self.module.model(**prepared.inputs, use_cache=False)  # no LM head

    # ------------------------------------------------------------------ scoring
    def _answer_ids(self, query: str, continuation: str) -> tuple[list[int], int]:
        """Ids of `query + " " + continuation` and how many of them are the continuation."""
        q = self.tokenizer(query, add_special_tokens=False)["input_ids"] if query else []
        full = self.tokenizer((query + " " if query else " ") + continuation.strip(), add_special_tokens=False)[
            "input_ids"
        ]
        k = 0
        while k < min(len(q), len(full)) and q[k] == full[k]:
            k += 1
        if k == len(full):
            raise MchError(f"continuation {continuation!r} tokenizes to nothing")
        return full, len(full) - k

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        """log p(continuation | image + prefix, query), one forward per continuation: simple
        and exact for a prefix LM (mch.scoring's shared-prefix scorer assumes a causal prompt)."""
        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        rows = [self._sequence(s, view) for s in samples]
        logp = torch.zeros(len(samples), len(continuations))
        n_tokens = []
        for k, c in enumerate(continuations):
            answer, n = self._answer_ids(query, c)
            n_tokens.append(n)
            inputs = self._batch([r[0] for r in rows], [answer] * len(rows))
            if view == "modal":
                inputs["pixel_values"] = torch.cat([r[2] for r in rows]).to(self.torch_dtype)
            inputs = {key: v.to(self.device) for key, v in inputs.items()}
            with torch.inference_mode():
                lp = torch.log_softmax(self.module(**inputs, use_cache=False).logits.float(), -1)
            ends = inputs["attention_mask"].sum(1)
            for i in range(len(samples)):
                pos = torch.arange(int(ends[i]) - n - 1, int(ends[i]) - 1, device=lp.device)  # t predicts t+1
                tgt = inputs["input_ids"][i, pos + 1]
                logp[i, k] = lp[i, pos, tgt].sum().cpu()
        return Scores(logp=logp.numpy(), n_tokens=torch.tensor(n_tokens).numpy())
