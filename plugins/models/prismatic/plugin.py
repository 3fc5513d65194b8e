"""`PrismaticModel`: the mch model plugin (loading in `loading.py`; see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mch.api import PROTOCOLS, VIEWS, MchError, Param, Sample, SampleError
from mch.model import Pool, Prepared, Scores

from .._hf_common import decoder_stage_paths
from .loading import PrismaticLoader, _load_tensors, _one_line
from .modeling import LLMBackbone, PrismaticVLM, make_projector
from .prompt import PAPER_MESSAGE, vicuna_v15_prompt

IGNORE = -100


class PrismaticModel(PrismaticLoader):
    """`prismatic_dinov2` and `prismatic_siglip`: the TRI-ML release format, loaded here."""

    modality = "vision"
    option_specs = {
        "variant": Param(str, help="the run directory in the release, e.g. dinov2-224px+7b"),
        "vision_family": Param(str, choices=("dinov2", "siglip"), help="the vision backbone the run must use"),
        "llm": Param(str, help="Vicuna-7B-v1.5 config + tokenizer: local directory or cached HF id"),
        "llm_revision": Param(str, help="revision of `llm`"),
        "vision": Param(str, help="the timm backbone checkpoint: local directory or cached HF id"),
        "vision_revision": Param(str, help="revision of `vision`"),
        "message": Param(str, help="the default protocol's user message"),
        "batch_size": Param(int, ge=1, help="samples per score() call (GMI), default 8"),
    }
    views = ("modal", "text")
    supports_device_map = True  # built in code, then placed by accelerate (ModelPlugin.place)

    # -- loading: the parts found and built by PrismaticLoader, put together here
    def load(self) -> None:
        run = self._run_dir()
        try:
            cfg = json.loads((run / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MchError(f"model {self._name()!r}: {run}/config.json cannot be read ({exc})") from None
        cfg = cfg.get("model", cfg)
        missing = [k for k in ("vision_backbone_id", "llm_backbone_id", "arch_specifier") if k not in cfg]
        if missing:
            raise MchError(
                f"model {self._name()!r}: {run}/config.json has no model.{missing[0]}; "
                f"is this a Prismatic run directory?"
            )
        ck = _load_tensors(self._checkpoint_file(run), self.trust_remote_code, "Prismatic checkpoint")
        ck_model = ck.get("model") if isinstance(ck, dict) else None
        if not isinstance(ck_model, dict) or "projector" not in ck_model or "llm_backbone" not in ck_model:
            raise MchError(
                f"model {self._name()!r}: {self._checkpoint_file(run)} has no model.projector and "
                f"model.llm_backbone; is it a Prismatic checkpoint?"
            )
        vision, transform = self._load_vision(run, cfg, ck_model)
        lm, tok = self._load_llm(run, cfg, dict(ck_model["llm_backbone"]))
        projector, self.adapter_path = make_projector(cfg["arch_specifier"], vision.embed_dim, lm.config.hidden_size)
        try:
            projector.load_state_dict(dict(ck_model["projector"]))
        except RuntimeError as exc:
            raise MchError(
                f"model {self._name()!r}: the checkpoint's projector does not fit a "
                f"{cfg['arch_specifier']} projector {vision.embed_dim} -> {lm.config.hidden_size} "
                f"({_one_line(exc)})"
            ) from None
        if self.adapter:
            from mch.checkpoints import load_lora_adapter

            try:
                lm = load_lora_adapter(lm, self.adapter, merge=True)
            except RuntimeError as exc:  # shape mismatches surface from load_state_dict
                raise MchError(
                    f"--adapter {self.adapter}: its weights do not fit this model's LLM ({_one_line(exc)})"
                ) from None
        module = PrismaticVLM(vision, projector, LLMBackbone(lm))
        exact = {name: b.detach().float().clone() for name, b in module.named_buffers() if name.endswith("inv_freq")}
        self.module = self.place(module.to(self.torch_dtype)).eval()  # --device, or split by --device-map
        # rotary frequencies: `.to(dtype)` rounds them to the model dtype, as the release's
        # `vlm.to(device, dtype=bfloat16)` did (cos off by up to 0.36 below position 300 in bf16);
        # `default` keeps them in float32 like the other plugins, `paper` reproduces the cast
        where = {name: b.device for name, b in self.module.named_buffers() if name in exact}
        self._rope = {
            name: {"default": f.to(where[name]), "paper": f.to(where[name], self.torch_dtype)}
            for name, f in exact.items()
        }
        self._rope_protocol: str | None = None
        self._use_rope("default")
        self.tokenizer = tok
        self.transform = transform
        self.run_config = cfg
        self.n_layers = int(lm.config.num_hidden_layers)
        self.num_patches = vision.num_patches
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _use_rope(self, protocol: str) -> None:
        """Put the protocol's rotary frequencies in place (see `load`); every entry point that
        runs the LLM calls it first (a run uses one protocol)."""
        if self.module is None or protocol == getattr(self, "_rope_protocol", None):
            return
        for name, variants in self._rope.items():
            owner, _, buf = name.rpartition(".")
            self.module.get_submodule(owner).register_buffer(buf, variants[protocol], persistent=False)
        self._rope_protocol = protocol

    def fidelity(self, protocol: str) -> list[str]:
        """Where this plugin's computation follows or departs from the released code (recorded
        with the model in every result)."""
        notes = [
            "vision backbone from the pretrained timm weights, never from a checkpoint's vision_backbone, "
            "as Prismatic's loader (prismatic.load) does"
        ]
        if self.dtype_name not in ("float32", "fp32"):
            notes.append(
                f"rotary frequencies cast to {self.dtype_name} with the model, as the release's vlm.to(dtype) does"
                if protocol == "paper"
                else f"rotary frequencies kept in float32 (the release casts them to {self.dtype_name} with the "
                f"model; the paper protocol reproduces that)"
            )
        return notes

    def identity(self) -> dict[str, Any]:
        # a new value when the computation changes for the same weights and inputs, so that
        # store entries of the earlier computation are not reused
        return {**super().identity(), "computation": "prismatic-release-2"}

    # -- stages
    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """The same hook points under both protocols."""
        stages = decoder_stage_paths("llm_backbone.llm.model", getattr(self, "n_layers", 32))
        if view == "text":
            stages["adapter"] = "llm_backbone.llm.model.embed_tokens"
        else:
            stages["encoder"] = "vision_backbone"
            stages["adapter"] = getattr(self, "adapter_path", "projector.projector.2")
        return stages

    def stage_dims(self, view: str = "modal") -> dict[str, int]:
        """Width of each stage's output."""
        assert self.module is not None
        d = self.module.lm.config.hidden_size
        dims = {s: d for s in self.stage_map(view)}
        if view == "modal":
            dims["encoder"] = self.module.vision_backbone.embed_dim
        return dims

    @property
    def lm(self) -> nn.Module:
        """The causal LM (with head), e.g. for scoring and LoRA."""
        assert self.module is not None
        return self.module.lm

    @property
    def adapter_module(self) -> nn.Module:
        """The module whose output is the decoder input of the patches (interventions hook it)."""
        from mch.model import resolve_module

        assert self.module is not None
        return resolve_module(self.module, self.adapter_path)

    # -- prompts and tokens
    def prompt_text(self, protocol: str) -> str:
        """The prompt after the patches, as a string (the tokenizer adds BOS in front)."""
        self._check(protocol, "modal")
        message = PAPER_MESSAGE if protocol == "paper" else str(self.options.get("message", PAPER_MESSAGE))
        return vicuna_v15_prompt(message)

    @staticmethod
    def _check(protocol: str, view: str) -> None:
        if protocol not in PROTOCOLS:
            raise MchError(f"unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
        if view not in VIEWS:
            raise MchError(f"unknown view {view!r}; use {' or '.join(VIEWS)}")

    def _ids(self, text: str, bos: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=bos)["input_ids"])

    def _text_ids(self, sample: Sample) -> list[int]:
        text = (sample.text or "").strip()
        ids = self._ids(text, bos=False) if text else []
        if not ids:
            raise SampleError(
                f"sample {sample.sample_id} has no paired text, which the text view needs", sample_id=sample.sample_id
            )
        return ids

    def _pixels(self, samples: Sequence[Sample]) -> torch.Tensor:
        from PIL import Image

        arrays = []
        for s in samples:
            img = s.media
            if not isinstance(img, Image.Image):
                raise SampleError(
                    f"sample {s.sample_id}: model {self._name()!r} needs a PIL image, got {type(img).__name__}",
                    sample_id=s.sample_id,
                )
            arrays.append(self.transform(img))
        return torch.from_numpy(np.stack(arrays))

    def _layouts(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str | None,
        suffixes: Sequence[Sequence[int]] | None = None,
    ) -> list[tuple[list[int], list[int]]]:
        """Per sample: LLM token ids (patch slots = -1) and the role of each position
        (0 = template/BOS, 1 = modality, i.e. patches or the paired text, 2 = suffix, the answer
        a loss scores), optionally with `suffixes[i]` appended after the prompt."""
        bos = self.tokenizer.bos_token_id
        tail = self.prompt_text(protocol) + (" " + query.strip() if query and query.strip() else "")
        out = []
        for i, s in enumerate(samples):
            if view == "modal":
                t = self._ids(tail, bos=True)
                assert t[0] == bos, "checked at load time: the tokenizer adds BOS"
                n = self.num_patches
                seq, role = [t[0]] + [-1] * n + t[1:], [0] + [1] * n + [0] * (len(t) - 1)
            elif protocol == "paper":  # raw text with BOS, no template
                text = self._text_ids(s)
                q = self._ids(query.strip(), bos=False) if query and query.strip() else []
                seq, role = [bos] + text + q, [0] + [1] * len(text) + [0] * len(q)
            else:
                text = self._text_ids(s)
                t = self._ids(tail, bos=True)
                seq, role = [bos] + text + t[1:], [0] + [1] * len(text) + [0] * (len(t) - 1)
            if suffixes is not None:
                seq, role = seq + list(suffixes[i]), role + [2] * len(suffixes[i])
            out.append((seq, role))
        return out

    def _batch(self, layouts: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Left-padded (B, L) ids (pad at patch slots), attention mask, positions, role and
        labels (the token id at each position, -100 at patches and padding)."""
        B, L = len(layouts), max(len(ids) for ids, _ in layouts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((B, L), pad, dtype=torch.long)
        att = torch.zeros(B, L, dtype=torch.long)
        role = torch.full((B, L), -1, dtype=torch.long)
        labels = torch.full((B, L), IGNORE, dtype=torch.long)
        for i, (seq, r) in enumerate(layouts):
            s = L - len(seq)  # left padding: every prompt ends in the last column
            t = torch.tensor(seq)
            ids[i, s:] = t.masked_fill(t < 0, pad)
            att[i, s:] = 1
            role[i, s:] = torch.tensor(r)
            labels[i, s:] = t.masked_fill(t < 0, IGNORE)
        return {
            "input_ids": ids,
            "attention_mask": att,
            "position_ids": (att.cumsum(-1) - 1).clamp(min=0),
            "role": role,
            "labels": labels,
        }

    # -- capture
    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        self._require_loaded()
        self._check(protocol, view)
        self._use_rope(protocol)
        b = self._batch(self._layouts(samples, protocol, view, None))
        B = len(samples)
        mod = b["role"] == 1
        real = b["attention_mask"].bool()
        owner = torch.arange(B)
        llm_pool = Pool(owner, {"modality": mod, "all": real, "text": real & ~mod})
        dev = self.input_device
        inputs: dict[str, Any] = {k: b[k].to(dev) for k in ("input_ids", "attention_mask", "position_ids")}
        pools = {"llm": llm_pool}
        if view == "modal":
            inputs["pixel_values"] = self._pixels(samples).to(dev, self.torch_dtype)
            inputs["image_mask"] = mod.to(dev)  # in the modal view the modality positions are the patch slots
            ones = torch.ones(B, self.num_patches, dtype=torch.bool)
            pools["encoder"] = pools["adapter"] = Pool(owner, {"modality": ones, "all": ones})
        else:
            pools["adapter"] = llm_pool
        info = {
            "view": view,
            "protocol": protocol,
            "labels": b["labels"],
            "prompt": self.prompt_text(protocol) if (view == "modal" or protocol == "default") else "",
        }
        return Prepared(inputs=inputs, pools=pools, n=B, info=info)

    def forward(self, prepared: Prepared) -> Any:
        assert self.module is not None
        self._use_rope(prepared.info.get("protocol", "default"))
        return self.module(**prepared.inputs)

    def prompt_id(self, protocol: str, view: str) -> str:
        """What identifies the prompt in store keys (known before the model loads)."""
        message = PAPER_MESSAGE if protocol == "paper" else str(self.options.get("message", PAPER_MESSAGE))
        return f"{protocol}/{view}/vicuna_v15/{message}"

    def lora_target(self) -> str:
        return "llm_backbone.llm"  # where --adapter is merged (the LlamaForCausalLM)

    def _require_loaded(self) -> None:
        if self.module is None:
            raise MchError(f"model {self._name()!r} is not loaded")

    # -- scoring and losses
    def prompt_embeds(
        self, samples: Sequence[Sample], query: str, view: str = "modal", protocol: str = "default", grad: bool = False
    ) -> list[torch.Tensor]:
        """Per-sample decoder input (P_i, D) of a scoring prompt: [BOS, patches (or the text),
        prompt, query], i.e. exactly what the LLM receives. With `grad`, the graph through the
        vision backbone and projector is kept."""
        self._require_loaded()
        self._check(protocol, view)
        layouts = self._layouts(samples, protocol, view, query)
        with torch.enable_grad() if grad else torch.no_grad():
            emb = self.module.lm.get_input_embeddings()
            patches = None
            if view == "modal":
                patches = self.module.project(self._pixels(samples).to(self.input_device, self.torch_dtype))
            out = []
            for i, (seq, _role) in enumerate(layouts):
                t = torch.tensor(seq, device=emb.weight.device)
                e = emb(t.clamp(min=0))
                if patches is not None:
                    e = e.masked_scatter((t < 0)[:, None], patches[i].to(e.device, e.dtype))
                out.append(e)
        return out

    def continuation_ids(self, context: str, continuations: Sequence[str]) -> list[list[int]]:
        """Ids of each continuation (with a leading space) as it tokenizes right after `context`."""
        if not context:
            return [self._ids(c.strip(), bos=False) for c in continuations]
        base = self._ids(context, bos=False)
        out = []
        for c in continuations:
            full = self._ids(context + " " + c.strip(), bos=False)
            if full[: len(base)] != base or len(full) == len(base):
                raise MchError(
                    f"model {self._name()!r}: continuation {c!r} does not tokenize as a separate "
                    f"suffix after {context[-30:]!r}"
                )
            out.append(full[len(base) :])
        return out

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        """The text the continuations follow (in the paper text view: the raw text, then the query)."""
        q = query.strip()
        if view == "text" and protocol == "paper":
            return q
        return self.prompt_text(protocol) + (" " + q if q else "")

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> Any:
        from mch.model import ScoreParts

        self._require_loaded()
        self._check(protocol, view)
        self._use_rope(protocol)  # the caller runs the LM on these parts
        conts = self.continuation_ids(self._score_context(protocol, view, query), continuations)
        return ScoreParts(self.module.lm, self.prompt_embeds(samples, query, view, protocol, grad=grad), conts)

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        from mch.scoring import left_pad, score_shared_prefix

        self._require_loaded()
        self._check(protocol, view)
        self._use_rope(protocol)
        conts = self.continuation_ids(self._score_context(protocol, view, query), continuations)
        bs = int(self.options.get("batch_size", 8))
        rows = []
        for i in range(0, len(samples), bs):
            with torch.inference_mode():
                x, m = left_pad(self.prompt_embeds(samples[i : i + bs], query, view, protocol))
                logp, _ = score_shared_prefix(self.module.lm, x, m, conts)
            rows.append(logp)
        logp = torch.cat(rows, 0) if rows else torch.zeros(0, len(conts))
        return Scores(logp=logp.numpy(), n_tokens=np.array([len(c) for c in conts]))

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> Any:
        """Logits and aligned targets for the causal tests, on Prismatic's layout
        [BOS, patches, prompt (, answer)]: `logits[:, p]` predicts `targets[:, p]`.
        `default`: the paired text as the assistant's answer after the modal prompt, scored on
        its own tokens. `paper`: the prompt's own input ids (the reference's quantity), each
        scored at its position in the multimodal sequence (the reference read the logits of the
        BOS and patch positions instead, B2); patch positions are not scored."""
        from mch.model import LossTerms

        self._require_loaded()
        self._check(protocol, "modal")
        self._use_rope(protocol)
        if protocol == "paper":
            b = self._batch(self._layouts(samples, "paper", "modal", None))
            targets = b["labels"]
        else:
            context = self.prompt_text("default")
            suffixes = []
            for s in samples:
                text = (s.text or "").strip()
                if not text:
                    raise SampleError(
                        f"sample {s.sample_id} has no paired text, which the content-token loss needs",
                        sample_id=s.sample_id,
                    )
                suffixes.append(self.continuation_ids(context, [text])[0])
            b = self._batch(self._layouts(samples, "default", "modal", None, suffixes))
            targets = b["labels"].masked_fill(b["role"] != 2, IGNORE)
        dev = self.input_device
        with torch.enable_grad() if grad else torch.inference_mode():
            emb = self.module.embed(
                b["input_ids"].to(dev), self._pixels(samples).to(dev, self.torch_dtype), (b["role"] == 1).to(dev)
            )
            logits = self.module.lm(
                inputs_embeds=emb, attention_mask=b["attention_mask"].to(dev), position_ids=b["position_ids"].to(dev)
            ).logits
        return LossTerms(logits[:, :-1], targets[:, 1:].to(dev))
