"""Any transformers multimodal LLM whose architecture is in the family table (`hf_families`).

The checkpoint's `config.architectures` picks the table row; this module does the rest for
every family: loading (offline, PIL image processors, no video processor without
torchvision), the prompt (the checkpoint's own chat template with one media item and the
instruction, plus the generation prompt; `prompt` option = the instruction), `prepare`
(the processor on the whole batch, right padding), capture (hook points from the row),
scoring, losses and the LoRA target.

Stages: `encoder` = what the adapter receives (the adapter's input, or the row's point),
`adapter` = the adapter's output, `llm.i` = decoder block i, `llm.final` = the final norm.
Text view: the paired text in place of the media marker of the same prompt; `adapter` =
the decoder's token embeddings; span `modality` = the text's tokens.

Spans: `llm.*` pool over the modality tokens (the positions the media fill) or all real
tokens; `encoder`/`adapter` outputs are flattened to rows and split over the samples in
proportion to their modality tokens (LLaVA-NeXT / OneVision: to their anyres tiles).

Positions: batches are right-padded, so every model computes its own positions for the
real tokens (0..n-1, or M-RoPE's 3-axis ids from its rope index) exactly as for a sample
alone. Scoring runs the prompt + query through the whole model once (media, masks, deepstack
as the model does them), reads the position ids at the decoder's entry, and continues every
continuation from one past the largest position of the prompt (text after an image under
M-RoPE), reusing the prompt's KV cache (`mch.scoring.score_after_prefix`).

Both protocols use the model's own prompt (there is no reference prompt for these models);
they differ in the span the runner pools (paper: `all`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mch.api import MchError, Sample, SampleError
from mch.hooks import Trace
from mch.model import ModelPlugin, Pool, Prepared, Scores, resolve_module

from ._hf_common import (
    HFPluginMixin,
    _one_line,
    checkpoint_dir,
    decoder_call,
    locate,
    mono_waveform,
    pad_id,
    right_pad,
    span_mask,
    token_pool,
)
from ._hf_processors import load_processor_any, torchvision_usable
from .hf_families import FAMILIES, Family, family_for

if TYPE_CHECKING:
    from mch.model import ScoreParts

_torchvision_usable = torchvision_usable  # the name tests/test_models_hf_generic.py imports

NO_CHECKPOINT = "(--checkpoint)"  # the registry's generic `hf` entry: the user names the checkpoint
DEFAULT_INSTRUCTION = {"vision": "Describe this image.", "speech": "Describe this audio."}


# --------------------------------------------------------------------------- the plugin


class HFModel(HFPluginMixin, ModelPlugin):
    """The generic plugin (module docstring). `self.family` is the table row."""

    views = ("modal", "text")
    answer_sep = ""  # the answer starts right after the generation prompt (and the query)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._family: Family | None = None
        self.modality = self.spec.modality  # until the checkpoint's family says

    # ------------------------------------------------------------------ the table row
    def _read_config(self) -> Any:
        from transformers import AutoConfig

        if self.checkpoint == NO_CHECKPOINT:
            raise MchError(
                f"model {self.spec.name!r} needs --checkpoint (a local directory or a Hugging Face id of a "
                f"transformers checkpoint whose architecture is in mch's family table)"
            )
        path = checkpoint_dir(self)
        try:
            return AutoConfig.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=self.trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001
            raise MchError(
                f"model {self.spec.name!r}: cannot read the config in {path} ({_one_line(exc)[:200]}); "
                f"pass --checkpoint with a transformers checkpoint directory"
            ) from None

    @property
    def family(self) -> Family:
        if self._family is None:
            cfg = self._read_config()
            fam = family_for(getattr(cfg, "architectures", None))
            if fam is None:
                known = ", ".join(a for f in FAMILIES for a in f.architectures)
                raise MchError(
                    f"model {self.spec.name!r}: architecture {getattr(cfg, 'architectures', None)} is not "
                    f"in mch's family table ({known}); add a row to mch/plugins/models/hf_families.py "
                    f"(docs/contributing-a-model.md)"
                )
            self._family = fam
            self.hf_class = next(a for a in cfg.architectures if a in fam.architectures)
            self.modality = fam.modality
        return self._family

    def _build_paths(self, model: torch.nn.Module) -> dict[str, str]:
        fam, name = self.family, self.spec.name
        decoder = locate(model, fam.decoder, "language model", name)
        self.n_layers = len(resolve_module(model, f"{decoder}.layers"))
        return {
            "encoder": locate(model, fam.encoder, "encoder output", name),
            "adapter": locate(model, fam.adapter, "adapter", name),
            "decoder": decoder,
            "embed": f"{decoder}.embed_tokens",
        }

    def _ensure_paths(self) -> dict[str, str]:
        _ = self.family  # sets hf_class
        return super()._ensure_paths()

    def lora_target(self) -> str:
        return self._ensure_paths()["decoder"]

    # ------------------------------------------------------------------ loading
    def missing_requirements(self) -> list[str]:
        import importlib.util

        def usable(mod: str) -> bool:
            return torchvision_usable() if mod == "torchvision" else importlib.util.find_spec(mod) is not None

        return [mod for mod in self.family.requires if not usable(mod)]

    def load(self) -> None:
        import transformers

        fam = self.family
        missing = self.missing_requirements()
        if missing:
            raise MchError(
                f"model {self.spec.name!r} ({fam.name}): transformers' processor for it needs "
                f"{', '.join(missing)}, which is not installed (pip install {' '.join(missing)})"
            )
        cfg = self._read_config()
        path = checkpoint_dir(self)
        self.processor = load_processor_any(self.spec.name, path, cfg.model_type, self.trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "right"
        model = self._load_model(getattr(transformers, self.hf_class), path, self.hf_class)
        self.inner_path = fam.inner
        ids = [getattr(model.config, a, None) for a in fam.token_id]
        ids = [i for i in ids if isinstance(i, int)]
        if not ids:
            raise MchError(
                f"model {self.spec.name!r}: the config has none of {list(fam.token_id)} (the modality token id)"
            )
        self.token_id = ids[0]
        if fam.modality == "speech":
            self.sampling_rate = int(self.processor.feature_extractor.sampling_rate)
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        return self._stages(view)

    # ------------------------------------------------------------------ prompts
    def _instruction(self, protocol: str) -> str:
        default = self.family.instruction or DEFAULT_INSTRUCTION[self.family.modality]
        return str(self.options.get("prompt", default))

    def _marker(self) -> str:
        ph = self.family.placeholder
        if ph.startswith("="):
            return ph[1:]
        marker = getattr(self.processor, ph, None)
        if not isinstance(marker, str):
            raise MchError(f"model {self.spec.name!r}: the processor has no {ph!r} (the media marker of its prompt)")
        return marker

    def render_prompt(
        self, protocol: str, view: str = "modal", text: str | None = None, query: str = ""
    ) -> tuple[str, tuple[int, int] | None]:
        """The prompt string and, in text view, the character span of the text in it."""
        instruction, marker = self._instruction(protocol), self._marker()
        if getattr(self.processor, "chat_template", None):
            kind = "image" if self.family.modality == "vision" else "audio"
            conv = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": instruction}]}]
            s = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            if not isinstance(s, str):
                s = s[0]
        else:
            s = self.family.prompt.format(media=marker, instruction=instruction)
        s += query
        if view != "text":
            return s, None
        at = s.find(marker)
        if at < 0:
            raise MchError(f"model {self.spec.name!r}: its prompt has no media marker {marker!r}")
        assert text is not None
        return s[:at] + text + s[at + len(marker) :], (at, at + len(text))

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        return self.render_prompt(protocol, "modal", query=query)[0]

    # ------------------------------------------------------------------ inputs
    def _media(self, s: Sample) -> Any:
        if self.family.modality == "vision":
            from PIL import Image

            if not isinstance(s.media, Image.Image):
                raise SampleError(
                    f"sample {s.sample_id}: model {self.spec.name!r} needs a PIL image, got {type(s.media).__name__}",
                    sample_id=s.sample_id,
                )
            return s.media.convert("RGB")
        return mono_waveform(s, self.spec.name, self.sampling_rate)

    def _prepare_inputs(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        suffix: Sequence[Sequence[int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Right-padded inputs for the whole batch (the processor batches the media); `suffix`
        token ids go after each prompt (loss targets)."""
        self._require_loaded()
        if view == "modal":
            prompt = self.render_prompt(protocol, "modal", query=query)[0]
            media = [self._media(s) for s in samples]
            kw: dict[str, Any] = {self.family.media_arg: [[x] for x in media] if self.family.media_nested else media}
            if self.family.modality == "speech":
                kw["sampling_rate"] = self.sampling_rate
            enc = dict(
                self.processor(
                    text=[prompt] * len(samples), return_tensors="pt", padding=True, padding_side="right", **kw
                )
            )
            att = enc["attention_mask"]
            if bool((att[:, 1:] > att[:, :-1]).any()):  # some processors default to left padding
                raise MchError(f"model {self.spec.name!r}: the processor did not pad on the right")
            inside = None
        elif view == "text":
            seqs, inside = [], []
            for s in samples:
                ids, mask = self._text_ids(s, protocol, query)
                seqs.append(ids)
                inside.append(mask)
            enc = self._collate(seqs)
        else:
            raise MchError(f"model {self.spec.name!r} has no view {view!r}; use modal or text")
        ids, att = enc["input_ids"], enc["attention_mask"]
        if suffix is not None:
            enc = self._append(enc, suffix)
            ids, att = enc["input_ids"], enc["attention_mask"]
        if view == "modal":
            mod = (ids == self.token_id) & att.bool()
        else:
            mod = span_mask(att, inside or [])
        inputs = {k: (v.to(self.input_device) if isinstance(v, torch.Tensor) else v) for k, v in enc.items()}
        for k in ("pixel_values", "input_features", "pixel_values_videos"):
            if isinstance(inputs.get(k), torch.Tensor) and inputs[k].is_floating_point():
                inputs[k] = inputs[k].to(self.torch_dtype)
        inputs["use_cache"] = False
        return inputs, {"modality_mask": mod, "attention_mask": att.cpu(), "encoding": enc}

    def _collate(self, seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        ids, att = right_pad(seqs, pad_id(self.tokenizer))
        return {"input_ids": ids, "attention_mask": att}

    def _append(self, enc: dict[str, Any], suffix: Sequence[Sequence[int]]) -> dict[str, Any]:
        """`suffix[i]` after row i's real tokens, re-padded on the right; every other per-token
        tensor (token types) is carried along, 0 (text) on the suffix."""
        ids, att = enc["input_ids"], enc["attention_mask"].bool()
        n = att.sum(1).tolist()
        rows = [ids[i, : n[i]].tolist() + list(suffix[i]) for i in range(len(n))]
        out = {**enc, **self._collate(rows)}
        L = out["input_ids"].shape[1]
        for k, v in enc.items():
            if k in ("input_ids", "attention_mask") or not isinstance(v, torch.Tensor) or v.shape != ids.shape:
                continue
            new = torch.zeros(len(n), L, dtype=v.dtype)
            for i in range(len(n)):
                new[i, : n[i]] = v[i, : n[i]]
            out[k] = new
        return out

    def _rows_per_sample(self, enc: dict[str, Any], mod: torch.Tensor) -> torch.Tensor:
        if self.family.rows == "anyres":  # tiles per image, as the model counts them
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

            cfg = self.config
            patch = cfg.vision_config.image_size
            return torch.tensor(
                [
                    image_size_to_num_patches(
                        image_size=tuple(int(x) for x in size),
                        grid_pinpoints=cfg.image_grid_pinpoints,
                        patch_size=patch,
                    )
                    for size in enc["image_sizes"]
                ]
            )
        return mod.sum(1)

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        inputs, info = self._prepare_inputs(samples, protocol, view)
        mod, real = info["modality_mask"], info["attention_mask"].bool()
        B = len(samples)
        llm = token_pool(mod, real)
        pools = {"llm": llm}
        if view == "text":
            pools["adapter"] = llm
        else:
            if bool((mod.sum(1) == 0).any()):
                raise MchError(f"model {self.spec.name!r}: a prompt has no modality token (id {self.token_id})")
            rows = Pool.proportional(self._rows_per_sample(info["encoding"], mod))
            pools.update(encoder=rows, adapter=rows)
        return Prepared(
            inputs=inputs,
            pools=pools,
            n=B,
            info={
                "protocol": protocol,
                "view": view,
                "n_tokens": real.sum(1).tolist(),
                "n_modality_tokens": mod.sum(1).tolist(),
            },
        )

    # ------------------------------------------------------------------ scoring
    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        from mch.scoring import cache_of, next_positions, score_after_prefix

        self._require_loaded()
        conts = self._continuations(protocol, view, query, continuations)
        bs = int(self.options.get("batch_size", self.batch_size_default))
        rows = []
        for i in range(0, len(samples), bs):
            inputs, info = self._prepare_inputs(samples[i : i + bs], protocol, view, query)
            att = inputs["attention_mask"]
            last = att.sum(1) - 1  # right padding: each prompt's last real token
            seen: dict[str, Any] = {}
            with torch.inference_mode():
                with Trace(
                    self.module,
                    {"dec": f"{self.decoder_path}:input"},
                    fn=lambda f: seen.setdefault("pos", f.kwargs.get("position_ids")),
                ):
                    out = self.module(**{**inputs, "use_cache": True}, logits_to_keep=last[:, None])
                logits = out.logits  # some models (the Omni thinker) ignore logits_to_keep
                first = logits[:, 0] if logits.shape[1] == 1 else logits[torch.arange(len(last)), last]
                pos = seen.get("pos")
                if view == "modal" and self.family.positions == "mrope" and (pos is None or pos.dim() != 3):
                    raise MchError(
                        f"model {self.spec.name!r}: the decoder did not receive the model's M-RoPE "
                        f"position ids; this transformers version computes them elsewhere"
                    )
                if pos is None:  # the decoder counted 0..P-1 itself
                    pos = torch.arange(att.shape[1], device=att.device).expand_as(att)
                start = next_positions(pos, att)
                axes = pos.shape[0] if pos.dim() == 3 else None
                logp, _ = score_after_prefix(self.module, first, cache_of(out), att, start, conts, axes)
            rows.append(logp)
        logp = torch.cat(rows, 0) if rows else torch.zeros(0, len(conts))
        return Scores(logp=logp.numpy(), n_tokens=np.array([len(c) for c in conts]))

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> ScoreParts:
        from mch.model import ScoreParts

        self._require_loaded()
        if view == "modal" and not self.family.decoder_input_complete:
            raise MchError(
                f"model {self.spec.name!r} ({self.family.name}): its decoder reads more than its input "
                f"embeddings ({self.family.note}), so the decoder-input parts this analysis needs "
                f"would not reproduce the model"
            )
        conts = self._continuations(protocol, view, query, continuations)
        inputs, _ = self._prepare_inputs(samples, protocol, view, query)
        with torch.enable_grad() if grad else torch.no_grad():
            x, kw = decoder_call(self.inner(), self.decoder_path.removeprefix(f"{self.inner_path}."), inputs)
        att = inputs["attention_mask"].bool()
        pos = kw.get("position_ids")
        prefixes = [x[i][att[i]] for i in range(x.shape[0])]
        positions = None
        if pos is not None:
            positions = [pos[i][att[i]] if pos.dim() == 2 else pos[:, i][:, att[i]] for i in range(x.shape[0])]
        return ScoreParts(self.module, prefixes, conts, positions)
