"""`Ultravox`: the mch model plugin (loading in `loading.py`; see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mch.api import MchError, Param, Sample, SampleError
from mch.model import Pool, Prepared, Scores

from .._hf_common import decoder_stage_paths
from .loading import UltravoxLoader, _latency_block, _positive, _read_config
from .modeling import ENCODER_STRIDE, ProjectorShape, UltravoxModel
from .transforms import log_mel, mel_chunks, waveform

AUDIO_PLACEHOLDER = "<|audio|>"
DEFAULT_USER_TEMPLATE = "Describe this audio.\n\n<|audio|>"


class Ultravox(UltravoxLoader):
    """mch model plugin for Ultravox checkpoints (v0.4 to v0.6 projector layouts)."""

    option_specs = {
        "audio_model": Param(str, help="local copy of the Whisper checkpoint the config names (audio_model_id)"),
        "text_model": Param(str, help="local copy of the LLM checkpoint the config names (text_model_id)"),
        "user_template": Param(str, help="the default protocol's user message; <|audio|> marks the audio"),
    }

    modality = "speech"
    supports_device_map = True  # built in code, then placed by accelerate (ModelPlugin.place)

    # -- loading: the parts read by UltravoxLoader, put together here
    def load(self) -> None:
        from mch.checkpoints import resolve_checkpoint

        name = self.spec.name
        root = resolve_checkpoint(self.checkpoint, self.revision, name)
        cfg = _read_config(root)
        if cfg.get("model_type", "ultravox") != "ultravox":
            raise MchError(
                f"model {name!r}: {root}/config.json has model_type {cfg.get('model_type')!r}, "
                f"not 'ultravox'; pass --checkpoint with an Ultravox checkpoint"
            )
        self.root = root
        self._bases: dict[str, Path] = {}
        self.config = cfg
        audio_config = self._sub_config("audio", "whisper")
        text_config = self._sub_config("text", "llama")
        if getattr(audio_config, "model_type", "whisper") != "whisper":
            raise MchError(
                f"model {name!r}: only Whisper audio towers are supported, this checkpoint names "
                f"a {audio_config.model_type!r} one"
            )
        try:
            shape = ProjectorShape(
                d_audio=audio_config.d_model,
                d_llm=text_config.hidden_size,
                hidden_size=_positive(cfg.get("hidden_size", text_config.hidden_size), "hidden_size"),
                stack_factor=_positive(cfg.get("stack_factor", 8), "stack_factor"),
                projector_act=str(cfg.get("projector_act", "swiglu")),
                projector_ln_mid=bool(cfg.get("projector_ln_mid", False)),
                norm_init=float(cfg.get("norm_init", 0.4)),
            )
        except (TypeError, ValueError) as exc:
            raise MchError(
                f"model {name!r}: {root}/config.json has a malformed projector setting ({exc}); fix config.json"
            ) from None
        latency_block = _latency_block(cfg, audio_config.max_source_positions * ENCODER_STRIDE, root)
        self.stack_factor = shape.stack_factor
        self.n_layers = int(text_config.num_hidden_layers)
        self.widths = {"encoder": audio_config.d_model, "llm": text_config.hidden_size}
        dev = torch.device(self.device if self.device_map is None else "cpu")  # --device-map: placed after loading
        try:
            with torch.device("meta"):
                module = UltravoxModel(audio_config, text_config, shape, latency_block)
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
            raise MchError(
                f"model {name!r}: the architecture {root}/config.json describes cannot be built "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                f"fix config.json"
            ) from None
        self._load_weights(module, dev)
        self.text_config = text_config
        self.audio_config = audio_config
        self.max_chunk = audio_config.max_source_positions * ENCODER_STRIDE
        self.module = self.place(module).eval()
        self.module.requires_grad_(False)
        self.tokenizer = self._load_tokenizer()
        self.feature_extractor = self._load_feature_extractor(audio_config.num_mel_bins)
        if self.adapter:
            self._apply_adapter(Path(self.adapter))
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def identity(self) -> dict[str, Any]:
        # a new value when the computation changes for the same weights and inputs (here: the
        # release's continuation chunks and streaming mask), so older store entries are not reused
        return {**super().identity(), "computation": "ultravox-release-2"}

    def fidelity(self, protocol: str) -> list[str]:
        """Where this plugin's computation follows or departs from the released code (recorded
        with the model in every result)."""
        notes = [
            "the released Ultravox computation at batch 1, implemented by mch (the checkpoint's remote code "
            "never runs); clips over 30 s run as 30 s chunks, continuation chunks zero-padded to 30 s as the "
            "release's processor makes them"
        ]
        cfg = getattr(self, "config", None)
        if cfg is None:  # not loaded (the store had the vectors): read config.json alone
            try:
                from mch.checkpoints import resolve_checkpoint

                cfg = _read_config(
                    resolve_checkpoint(self.checkpoint, self.revision, self.spec.name, allow_patterns=["config.json"])
                )
            except MchError:
                cfg = {}
        block = cfg.get("audio_latency_block_size")
        if block is not None:
            notes.append(f"audio_latency_block_size {block}: the release's streaming mask on the encoder, applied")
        if protocol == "paper":
            notes.append(
                "encoder and adapter vectors of clips over 30 s: the first chunk only, as the reference "
                "stored them (its writer overwrote the other chunks' rows)"
            )
        return notes

    # -- stages
    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """The same hook points under both protocols (`paper` pools chunk 1 of a long clip, in `prepare`)."""
        stages = decoder_stage_paths("language_model.model", getattr(self, "n_layers", 32))
        if view == "text":
            stages["adapter"] = "language_model.model.embed_tokens"
        else:
            stages["encoder"] = "audio_tower.layer_norm"
            stages["adapter"] = "multi_modal_projector"
        return stages

    def stage_dims(self, view: str = "modal") -> dict[str, int]:
        """Width D of each stage's output."""
        return {st: self.widths["encoder"] if st == "encoder" else self.widths["llm"] for st in self.stage_map(view)}

    # -- prompts
    def render_prompt(self, protocol: str, view: str = "modal") -> str:
        """The prompt string with `<|audio|>` where the audio (or, in the text view, the
        text) goes, before the GMI query."""
        if view == "text" and protocol == "paper":
            return (self.tokenizer.bos_token or "") + AUDIO_PLACEHOLDER
        content = AUDIO_PLACEHOLDER if protocol == "paper" else self.options.get("user_template", DEFAULT_USER_TEMPLATE)
        if content.count(AUDIO_PLACEHOLDER) != 1:
            raise MchError(
                f"model {self.spec.name!r}: option user_template must contain {AUDIO_PLACEHOLDER} exactly "
                f"once, got {content!r}"
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise MchError(f"model {self.spec.name!r}: the tokenizer of {self.root} has no chat template")
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- audio
    def _features(self, wave: np.ndarray) -> np.ndarray:
        """(n_mels, L) log-mel of one clip alone, L = ceil(samples / hop)."""
        return log_mel(self.feature_extractor, wave)

    # -- batches
    def _build(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        answers: Sequence[list[int]] | None = None,
    ) -> dict[str, Any]:
        """Token ids, audio chunks and every index the pools and the embedding merge need;
        `answers[i]` (token ids) follow sample i's prompt when given."""
        if protocol not in ("default", "paper"):
            raise MchError(f"unknown protocol {protocol!r}; use default or paper")
        if view not in ("modal", "text"):
            raise MchError(f"unknown view {view!r}; use modal or text")
        template = self.render_prompt(protocol, view)
        before, after = template.split(AUDIO_PLACEHOLDER)
        pre, post = self._ids(before), self._ids(after + query)
        seqs, spans = [], []
        chunks: list[tuple[np.ndarray, int, int]] = []  # (mel, real frames, sample)
        owner_rows: list[int] = []
        if view == "text":
            for s in samples:
                text = (s.text or "").strip()
                if not text:
                    raise SampleError(
                        f"sample {s.sample_id} has no paired text for the text view", sample_id=s.sample_id
                    )
                mid = self._ids(text)
                seqs.append(pre + mid + post)
                spans.append((len(pre), len(mid)))
        else:
            eos = self.tokenizer.eos_token_id
            for i, s in enumerate(samples):
                n_tok = 0
                for m, real in mel_chunks(self._features(waveform(s, self.spec.name)), self.max_chunk):
                    chunks.append((m, real, i))
                    owner_rows.append(i)
                    n_tok += -(-real // (ENCODER_STRIDE * self.stack_factor))
                seqs.append(pre + [eos] * n_tok + post)
                spans.append((len(pre), n_tok))
        answer_spans = []
        for i, a in enumerate(answers or []):
            answer_spans.append((len(seqs[i]), len(a)))
            seqs[i] = seqs[i] + list(a)
        return {"seqs": seqs, "spans": spans, "chunks": chunks, "owner": owner_rows, "answers": answer_spans}

    def _tensors(self, built: dict[str, Any], protocol: str) -> tuple[dict[str, Any], dict[str, Pool]]:
        seqs, spans = built["seqs"], built["spans"]
        B, T = len(seqs), max(len(q) for q in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((B, T), pad, dtype=torch.long)
        att = torch.zeros(B, T, dtype=torch.long)
        mod = torch.zeros(B, T, dtype=torch.bool)
        for i, (q, (start, n)) in enumerate(zip(seqs, spans, strict=True)):
            ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
            att[i, : len(q)] = 1
            mod[i, start : start + n] = True
        real = att.bool()
        pos = (att.cumsum(-1) - 1).clamp(min=0)  # right padding: positions 0..len-1
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": att, "position_ids": pos}
        pools = {"llm": Pool(torch.arange(B), {"modality": mod, "all": real, "text": real & ~mod})}
        chunks = built["chunks"]
        if chunks:
            R = len(chunks)
            Tm = max(m.shape[1] for m, _, _ in chunks)
            n_mels = chunks[0][0].shape[0]
            values = torch.zeros(R, n_mels, Tm)
            lens = torch.tensor([real for _, real, _ in chunks])
            own = torch.tensor([m.shape[1] for m, _, _ in chunks])  # length when run alone
            for r, (m, _, _) in enumerate(chunks):
                values[r, :, : m.shape[1]] = torch.from_numpy(np.ascontiguousarray(m))
            # both protocols: the released model at batch 1 (a continuation chunk runs padded to
            # 30 s, as the release's processor makes it); zeroing past each chunk's own length
            # only undoes the padding this batch added (a short first chunk runs unpadded there)
            valid = own
            owner = torch.tensor(built["owner"])
            first = torch.ones(R, dtype=torch.bool)
            first[1:] = owner[1:] != owner[:-1]
            keep_row = first if protocol == "paper" else torch.ones(R, dtype=torch.bool)
            k = ENCODER_STRIDE * self.stack_factor
            Te = (Tm - 1) // ENCODER_STRIDE + 1
            Ta = -(-Te // self.stack_factor)
            enc_real = (lens - 1) // ENCODER_STRIDE + 1
            enc_own = (own - 1) // ENCODER_STRIDE + 1
            tok_real = -(-lens // k)
            tok_own = -(-enc_own // self.stack_factor)
            ar_e, ar_a = torch.arange(Te)[None], torch.arange(Ta)[None]
            kr = keep_row[:, None]
            pools["encoder"] = Pool(
                owner, {"modality": (ar_e < enc_real[:, None]) & kr, "all": (ar_e < enc_own[:, None]) & kr}
            )
            pools["adapter"] = Pool(
                owner, {"modality": (ar_a < tok_real[:, None]) & kr, "all": (ar_a < tok_own[:, None]) & kr}
            )
            # where each chunk's tokens go in its sample's sequence
            bs, ts, rs, ks = [], [], [], []
            offset = {i: spans[i][0] for i in range(B)}
            for r in range(R):
                b, n = int(owner[r]), int(tok_real[r])
                bs += [b] * n
                ts += list(range(offset[b], offset[b] + n))
                rs += [r] * n
                ks += list(range(n))
                offset[b] += n
            inputs.update(
                audio_values=values,
                audio_lens=lens,
                valid_lens=valid,
                scatter=torch.tensor([bs, ts, rs, ks], dtype=torch.long),
            )
        else:
            pools["adapter"] = pools["llm"]
        return inputs, pools

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.input_device) for k, v in inputs.items()}
        if "audio_values" in out:
            out["audio_values"] = out["audio_values"].to(self.torch_dtype)
        return out

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        built = self._build(samples, protocol, view)
        inputs, pools = self._tensors(built, protocol)
        info = {
            "view": view,
            "protocol": protocol,
            "n_chunks": [built["owner"].count(i) for i in range(len(samples))]
            if view == "modal"
            else [0] * len(samples),
            "modality_tokens": [n for _, n in built["spans"]],
        }
        return Prepared(inputs=self._to_device(inputs), pools=pools, n=len(samples), info=info)

    def forward(self, prepared: Prepared) -> Any:
        assert self.module is not None
        return self.module(**prepared.inputs)

    def logits(self, prepared: Prepared) -> torch.Tensor:
        """LM-head logits (B, T, V) of a prepared batch (right-padded; logits[:, t] predict t+1)."""
        assert self.module is not None
        return self.module(**prepared.inputs, lm_head=True).logits

    def prompt_id(self, protocol: str, view: str) -> str:
        """What identifies the prompt in store keys (known before the model loads)."""
        if view == "text" and protocol == "paper":
            return "paper/text/bos+text"
        content = AUDIO_PLACEHOLDER if protocol == "paper" else self.options.get("user_template", DEFAULT_USER_TEMPLATE)
        return f"{protocol}/{view}/chat-template/{content}"

    def lora_target(self) -> str:
        return "language_model"  # the causal LM `--adapter` is merged into

    # -- scoring and losses
    def prompt_embeds(
        self, samples: Sequence[Sample], query: str, view: str = "modal", protocol: str = "default", grad: bool = False
    ) -> list[torch.Tensor]:
        """Per-sample decoder input (P_i, D) of a GMI prompt: template with the audio (or
        text) merged in, then the query. With `grad` the graph through the audio tower and
        projector is kept."""
        assert self.module is not None
        built = self._build(samples, protocol, view, query=query)
        inputs, _ = self._tensors(built, protocol)
        inputs = self._to_device(inputs)
        with torch.enable_grad() if grad else torch.no_grad():
            emb = self.module.embed(**inputs)
        lens = inputs["attention_mask"].sum(-1).tolist()
        return [emb[i, : int(n)] for i, n in enumerate(lens)]

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

        assert self.module is not None
        return ScoreParts(
            self.module.language_model,
            self.prompt_embeds(samples, query, view, protocol, grad=grad),
            self.continuation_ids(continuations),
        )

    def loss(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> torch.Tensor:
        """Per-sample mean next-token cross-entropy (nats) over `loss_terms`' targets, (B,)."""
        return self.loss_terms(samples, protocol, grad).mean_nll()

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> Any:
        """Logits and aligned targets for the causal tests (`logits[:, p]` predicts
        `targets[:, p]`). `default`: the paired text as the assistant's answer after the
        modal prompt, scored on its own tokens only. `paper`: the reference's quantity, every
        next input id of the bare `<|audio|>` prompt, the EOS placeholders of the audio span
        included (analyses-causal-lora-tables.md §1.4)."""
        from mch.model import LossTerms

        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        answers = None
        if protocol == "default":
            answers = []
            for s in samples:
                text = (s.text or "").strip()
                if not text:
                    raise SampleError(
                        f"sample {s.sample_id} has no paired text, which the content-token loss needs",
                        sample_id=s.sample_id,
                    )
                answers.append(self._ids(text))
        built = self._build(samples, protocol, "modal", answers=answers)
        inputs, _ = self._tensors(built, protocol)
        targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        if answers is not None:
            keep = torch.zeros_like(targets, dtype=torch.bool)
            for i, (start, n) in enumerate(built["answers"]):
                keep[i, start : start + n] = True
            targets = targets.masked_fill(~keep, -100)
        inputs = self._to_device(inputs)
        with torch.enable_grad() if grad else torch.inference_mode():
            logits = self.module(**inputs, lm_head=True).logits
        return LossTerms(logits[:, :-1], targets[:, 1:].to(logits.device))

    def continuation_ids(self, continuations: Sequence[str]) -> list[list[int]]:
        out = []
        for c in continuations:
            ids = self._ids(" " + c.strip())
            if not ids:
                raise MchError(f"continuation {c!r} tokenizes to nothing")
            out.append(ids)
        return out

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        from mch.scoring import left_pad, score_shared_prefix

        assert self.module is not None
        conts = self.continuation_ids(continuations)
        with torch.inference_mode():
            x, m = left_pad(self.prompt_embeds(samples, query, view, protocol))
            logp, n = score_shared_prefix(self.module.language_model, x, m, conts)
        return Scores(logp=logp.numpy(), n_tokens=n.numpy())
