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
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mch.api import MchError, Sample, SampleError
from mch.model import ModelPlugin, Pool, Prepared, Scores

AUDIO_PLACEHOLDER = "<|audio|>"
SAMPLE_RATE = 16000
DEFAULT_USER_TEMPLATE = "Describe this audio.\n\n<|audio|>"
ENCODER_STRIDE = 2  # Whisper's second convolution


# --------------------------------------------------------------------------- architecture


class StackFrames(nn.Module):
    """(R, T, C) -> (R, ceil(T/k), C*k): k consecutive frames side by side, zero-padded."""

    def __init__(self, stack_factor: int = 8):
        super().__init__()
        self.stack_factor = stack_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        R, T, C = x.shape
        k = self.stack_factor
        pad = (-T) % k
        x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(R, (T + pad) // k, C * k)


class RMSNorm(nn.Module):
    """Llama-style RMSNorm (fp32 statistics, weight applied in the input dtype)."""

    def __init__(self, dim: int, init: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


class SwiGLU(nn.Module):
    """First half is the value, second half the gate (Ultravox's order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * value


@dataclass
class ProjectorShape:
    d_audio: int
    d_llm: int
    hidden_size: int
    stack_factor: int = 8
    projector_act: str = "swiglu"
    projector_ln_mid: bool = False
    norm_init: float = 0.4


class UltravoxProjector(nn.Module):
    def __init__(self, shape: ProjectorShape):
        super().__init__()
        d_in = shape.d_audio * shape.stack_factor
        self.stack = StackFrames(shape.stack_factor)
        self.ln_pre = RMSNorm(d_in, init=shape.norm_init)
        self.linear_1 = nn.Linear(d_in, shape.hidden_size, bias=False)
        if shape.projector_act == "swiglu":
            self.act: nn.Module = SwiGLU()
            d_mid = shape.hidden_size // 2
        else:
            from transformers.activations import ACT2FN

            self.act = ACT2FN[shape.projector_act]
            d_mid = shape.hidden_size
        self.linear_2 = nn.Linear(d_mid, shape.d_llm, bias=False)
        # v0.5+ normalises between the linears; v0.4 after the second one
        if shape.projector_ln_mid:
            self.ln_mid: nn.Module = RMSNorm(d_mid, init=shape.norm_init)
            self.ln_post: nn.Module = nn.Identity()
        else:
            self.ln_mid = nn.Identity()
            self.ln_post = RMSNorm(shape.d_llm, init=shape.norm_init)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.ln_pre(self.stack(frames))
        h = self.ln_mid(self.act(self.linear_1(h)))
        return self.ln_post(self.linear_2(h))


def _whisper_encoder_class():
    from transformers.modeling_outputs import BaseModelOutput
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    class UltravoxWhisperEncoder(WhisperEncoder):
        """WhisperEncoder that accepts fewer than 3000 mel frames and masks keys past
        `audio_len` (the release's ModifiedWhisperEncoder); `valid_len` zeroes conv outputs
        past each row's own length (see module doc); `latency_block` is the release's
        streaming mask (`audio_latency_block_size`): encoder position i attends to key j
        only when j // block <= i // block."""

        latency_block: int | None = None

        def forward(self, input_features: torch.Tensor, audio_len: torch.Tensor | None = None,
                    valid_len: torch.Tensor | None = None, **_: Any) -> BaseModelOutput:
            T = input_features.shape[-1]
            limit = self.config.max_source_positions * ENCODER_STRIDE
            if T > limit:
                raise ValueError(f"Whisper takes at most {limit} mel frames, got {T}")
            x = F.gelu(self.conv1(input_features))
            if valid_len is not None:
                keep = torch.arange(T, device=x.device)[None, :] < valid_len[:, None]
                x = x * keep[:, None, :].to(x.dtype)
            x = F.gelu(self.conv2(x)).permute(0, 2, 1)
            h = x + self.embed_positions.weight[: x.shape[1]].to(x.dtype)
            R, Te = h.shape[0], h.shape[1]
            allowed = None
            if audio_len is not None:
                n = (audio_len - 1) // ENCODER_STRIDE + 1
                allowed = (torch.arange(Te, device=h.device)[None, :] < n[:, None])[:, None, None, :]
            if self.latency_block:
                blk = torch.arange(Te, device=h.device) // self.latency_block
                causal = (blk[None, :] <= blk[:, None])[None, None]
                allowed = causal if allowed is None else allowed & causal
            mask = None
            if allowed is not None:
                mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device)
                mask = mask.masked_fill(~allowed, torch.finfo(h.dtype).min).expand(R, 1, -1, -1)
            for layer in self.layers:
                h = layer(h, mask)
            return BaseModelOutput(last_hidden_state=self.layer_norm(h))

    return UltravoxWhisperEncoder


class UltravoxModel(nn.Module):
    """Whisper encoder -> projector -> causal LM, with the released module names."""

    def __init__(self, audio_config: Any, text_config: Any, shape: ProjectorShape, latency_block: int | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.audio_tower = _whisper_encoder_class()(audio_config)
        self.audio_tower.latency_block = latency_block
        self.multi_modal_projector = UltravoxProjector(shape)
        # built by transformers' own class for the config's model_type, never by remote code
        self.language_model = AutoModelForCausalLM.from_config(text_config, trust_remote_code=False)
        self.stack_factor = shape.stack_factor

    def audio_embeds(self, audio_values: torch.Tensor, audio_lens: torch.Tensor,
                     valid_lens: torch.Tensor) -> torch.Tensor:
        """(R, n_mels, T) chunks -> (R, ceil(ceil(T/2)/stack), d_llm) projector outputs."""
        enc = self.audio_tower(audio_values, audio_len=audio_lens, valid_len=valid_lens).last_hidden_state
        n = (valid_lens - 1) // ENCODER_STRIDE + 1
        keep = torch.arange(enc.shape[1], device=enc.device)[None, :] < n[:, None]
        enc = enc * keep[..., None].to(enc.dtype)
        return self.multi_modal_projector(enc)

    def embed(self, input_ids: torch.Tensor, audio_values: torch.Tensor | None = None,
              audio_lens: torch.Tensor | None = None, valid_lens: torch.Tensor | None = None,
              scatter: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        """Token embeddings with the audio tokens written at their placeholder slots.
        `scatter` (4, M) holds (batch row, position, chunk row, token) for each audio token."""
        emb = self.language_model.get_input_embeddings()(input_ids)
        if audio_values is None:
            return emb
        audio = self.audio_embeds(audio_values, audio_lens, valid_lens).to(emb.dtype)
        b, t, r, k = scatter
        emb = emb.clone()
        emb[b, t] = audio[r, k]
        return emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                lm_head: bool = False, **audio: Any) -> Any:
        emb = self.embed(input_ids, **audio)
        lm = self.language_model if lm_head else self.language_model.model
        return lm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids)


# --------------------------------------------------------------------------- loading


def _weight_index(d: Path) -> dict[str, Path]:
    """key -> safetensors file of a checkpoint directory (one file or an index of shards)."""
    index = d / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: d / f for k, f in wm.items()}
    files = sorted(d.glob("*.safetensors"))
    if (d / "model.safetensors").exists():
        files = [d / "model.safetensors"]
    out: dict[str, Path] = {}
    from safetensors import safe_open

    for f in files:
        if f.name.startswith("adapter_"):
            continue
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = f
    return out


def _read_config(d: Path) -> dict[str, Any]:
    p = d / "config.json"
    if not p.exists():
        raise MchError(f"model 'ultravox': {d} has no config.json; pass --checkpoint with an Ultravox "
                       f"checkpoint directory")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MchError(f"model 'ultravox': {p} cannot be read as JSON ({exc}); restore the checkpoint's "
                       f"config.json") from None
    if not isinstance(cfg, dict):
        raise MchError(f"model 'ultravox': {p} holds a JSON {type(cfg).__name__}, not an object; restore the "
                       f"checkpoint's config.json")
    return cfg


def _latency_block(cfg: dict[str, Any], max_frames: int, where: Path) -> int | None:
    """The release's `audio_latency_block_size` (a streaming mask on the encoder), checked as
    the release's `init_latency_mask` does, with one sentence instead of an assertion."""
    b = cfg.get("audio_latency_block_size")
    if b is None:
        return None
    if isinstance(b, bool) or not isinstance(b, int) or b <= 0 or max_frames % b:
        raise MchError(f"model 'ultravox': {where}/config.json sets audio_latency_block_size to {b!r}; the release "
                       f"accepts null or a positive integer that divides {max_frames} (its encoder's mel-frame "
                       f"context); fix config.json")
    return b


def _positive(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{key} must be a positive integer, got {v!r}")
    return v


def _make_config(d: dict[str, Any], default_type: str) -> Any:
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", default_type)
    for k in ("_name_or_path", "transformers_version", "_attn_implementation_autoset"):
        d.pop(k, None)
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError, TypeError) as exc:
        raise MchError(f"model 'ultravox': cannot build a {model_type!r} config from the checkpoint "
                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _lora_to_peft_dir(src: Path, dst: Path) -> None:
    """Write the reference's LoRA file (`model.safetensors` with "lora" keys, r 16, alpha 32,
    q/k/v/o) as a PEFT adapter directory."""
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if "lora" in k}
    if not state:
        raise MchError(f"--adapter {src}: model.safetensors has no LoRA tensors (no key contains 'lora')")
    out: dict[str, torch.Tensor] = {}
    ranks = set()
    for k, v in state.items():
        k = k.replace(".default.", ".")
        if k.startswith("language_model."):
            k = k[len("language_model."):]
        if not k.startswith("base_model.model."):
            k = "base_model.model." + k
        if ".lora_A." in k:
            ranks.add(int(v.shape[0]))
        out[k] = v.contiguous()
    if len(ranks) != 1:
        raise MchError(f"--adapter {src}: its LoRA tensors have inconsistent ranks {sorted(ranks)}")
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in out})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": ranks.pop(), "lora_alpha": 32,
           "lora_dropout": 0.0, "bias": "none", "target_modules": targets}
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(out, str(dst / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- plugin


from mch.api import Param  # noqa: E402 - option declarations


class Ultravox(ModelPlugin):
    """mch model plugin for Ultravox checkpoints (v0.4 to v0.6 projector layouts)."""

    option_specs = {
        "audio_model": Param(str, help="local copy of the Whisper checkpoint the config names (audio_model_id)"),
        "text_model": Param(str, help="local copy of the LLM checkpoint the config names (text_model_id)"),
        "user_template": Param(str, help="the default protocol's user message; <|audio|> marks the audio"),
    }

    modality = "speech"

    # -- loading
    def checkpoint_paths(self) -> list[Path]:
        """The checkpoint and the base checkpoints its config names, when they are here: a
        release checkpoint holds the projector and reads the LLM and Whisper from those."""
        from mch.checkpoints import resolve_checkpoint

        paths = [resolve_checkpoint(self.checkpoint, self.revision, self.spec.name)]
        try:
            cfg = json.loads((paths[0] / "config.json").read_text())
        except (OSError, ValueError):
            return paths
        for kind in ("audio", "text"):
            ident = self.options.get(f"{kind}_model") or (cfg.get(f"{kind}_model_id") if isinstance(cfg, dict) else None)
            if ident:
                try:
                    paths.append(resolve_checkpoint(str(ident), None, self.spec.name))
                except MchError:
                    pass  # not here: the load says so if it needs it
        return paths

    def load(self) -> None:
        from mch.checkpoints import resolve_checkpoint

        name = self.spec.name
        root = resolve_checkpoint(self.checkpoint, self.revision, name)
        cfg = _read_config(root)
        if cfg.get("model_type", "ultravox") != "ultravox":
            raise MchError(f"model {name!r}: {root}/config.json has model_type {cfg.get('model_type')!r}, "
                           f"not 'ultravox'; pass --checkpoint with an Ultravox checkpoint")
        self.root = root
        self._bases: dict[str, Path] = {}
        self.config = cfg
        audio_config = self._sub_config("audio", "whisper")
        text_config = self._sub_config("text", "llama")
        if getattr(audio_config, "model_type", "whisper") != "whisper":
            raise MchError(f"model {name!r}: only Whisper audio towers are supported, this checkpoint names "
                           f"a {audio_config.model_type!r} one")
        try:
            shape = ProjectorShape(
                d_audio=audio_config.d_model, d_llm=text_config.hidden_size,
                hidden_size=_positive(cfg.get("hidden_size", text_config.hidden_size), "hidden_size"),
                stack_factor=_positive(cfg.get("stack_factor", 8), "stack_factor"),
                projector_act=str(cfg.get("projector_act", "swiglu")),
                projector_ln_mid=bool(cfg.get("projector_ln_mid", False)), norm_init=float(cfg.get("norm_init", 0.4)))
        except (TypeError, ValueError) as exc:
            raise MchError(f"model {name!r}: {root}/config.json has a malformed projector setting ({exc}); "
                           f"fix config.json") from None
        latency_block = _latency_block(cfg, audio_config.max_source_positions * ENCODER_STRIDE, root)
        self.stack_factor = shape.stack_factor
        self.n_layers = int(text_config.num_hidden_layers)
        self.widths = {"encoder": audio_config.d_model, "llm": text_config.hidden_size}
        dev = torch.device(self.device)
        try:
            with torch.device("meta"):
                module = UltravoxModel(audio_config, text_config, shape, latency_block)
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
            raise MchError(f"model {name!r}: the architecture {root}/config.json describes cannot be built "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                           f"fix config.json") from None
        self._load_weights(module, dev)
        self.text_config = text_config
        self.audio_config = audio_config
        self.max_chunk = audio_config.max_source_positions * ENCODER_STRIDE
        self.module = module.eval()
        self.module.requires_grad_(False)
        self.tokenizer = self._load_tokenizer()
        self.feature_extractor = self._load_feature_extractor(audio_config.num_mel_bins)
        if self.adapter:
            self._apply_adapter(Path(self.adapter))
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _base_dir(self, kind: str) -> Path:
        """Local directory of the base checkpoint the config names (`audio_model_id` or
        `text_model_id`), or the one given by option `audio_model`/`text_model`."""
        from mch.checkpoints import resolve_checkpoint

        if kind in self._bases:
            return self._bases[kind]
        ident = self.options.get(f"{kind}_model") or self.config.get(f"{kind}_model_id")
        what = "audio encoder" if kind == "audio" else "LLM"
        if not ident:
            raise MchError(f"model {self.spec.name!r}: the checkpoint lacks {what} weights or config and names no "
                           f"{kind}_model_id; pass the option {kind}_model=/path/to/the/{what.split()[-1]}")
        try:
            path = resolve_checkpoint(str(ident), None, self.spec.name)
        except MchError:
            raise MchError(
                f"model {self.spec.name!r}: its config names the {what} checkpoint {ident}, which is neither a local "
                f"directory nor in the local Hugging Face cache; download it (`huggingface-cli download {ident}`) "
                f"or pass the option {kind}_model=/path/to/a/local/copy") from None
        self._bases[kind] = path
        return path

    def _sub_config(self, kind: str, default_type: str) -> Any:
        embedded = self.config.get(f"{kind}_config")
        if isinstance(embedded, dict) and embedded.get("model_type") and not self.options.get(f"{kind}_model"):
            return _make_config(embedded, default_type)
        return _make_config(_read_config(self._base_dir(kind)), default_type)

    def _load_weights(self, module: UltravoxModel, dev: torch.device) -> None:
        from safetensors import safe_open

        name = self.spec.name
        own = _weight_index(self.root)
        if not own:
            raise MchError(f"model {name!r}: {self.root} holds no safetensors weights (model.safetensors or an "
                           f"index of shards); pass --checkpoint with an Ultravox release directory")
        wanted = list(module.state_dict().keys())
        known_prefixes = ("audio_tower.", "multi_modal_projector.", "language_model.")
        wanted_set = set(wanted)
        # rotary frequencies are recomputed, never loaded (older saves include them)
        stray = [k for k in own if k not in wanted_set and not k.endswith("rotary_emb.inv_freq")]
        if stray:
            hint = "" if stray[0].startswith(known_prefixes) else " (not an Ultravox weight name)"
            raise MchError(f"model {name!r}: checkpoint {self.root} has a weight {stray[0]!r} that this "
                           f"architecture does not have{hint}; is its config.json right?")
        sources: dict[str, tuple[Path, str]] = {}
        base_index: dict[str, dict[str, Path]] = {}
        for key in wanted:
            if key in own:
                sources[key] = (own[key], key)
                continue
            kind = "audio" if key.startswith("audio_tower.") else "text" if key.startswith("language_model.") else None
            if kind is None:
                raise MchError(f"model {name!r}: checkpoint {self.root} lacks the projector weight {key!r}")
            if kind not in base_index:
                base_index[kind] = _weight_index(self._base_dir(kind))
            rest = key.split(".", 1)[1]
            cands = ([f"model.encoder.{rest}", f"encoder.{rest}", rest] if kind == "audio" else [rest, f"model.{rest}"])
            hit = next((c for c in cands if c in base_index[kind]), None)
            if hit is None:
                if key == "language_model.lm_head.weight" and getattr(self._text_cfg(module), "tie_word_embeddings", False):
                    continue
                raise MchError(f"model {name!r}: weight {key!r} is neither in {self.root} nor in the "
                               f"{kind} base checkpoint {self._base_dir(kind)}")
            sources[key] = (base_index[kind][hit], hit)
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for key, (f, src) in sources.items():
            by_file.setdefault(f, []).append((key, src))
        state: dict[str, torch.Tensor] = {}
        dtype = self.torch_dtype
        ref = module.state_dict()
        for f, pairs in by_file.items():
            with safe_open(str(f), framework="pt", device=str(dev)) as fh:
                for key, src in pairs:
                    t = fh.get_tensor(src)
                    if tuple(t.shape) != tuple(ref[key].shape):
                        raise MchError(f"model {name!r}: weight {src!r} in {f} has shape {tuple(t.shape)}, the "
                                       f"architecture from config.json expects {tuple(ref[key].shape)}")
                    state[key] = t.to(dtype) if t.is_floating_point() else t
        missing = [k for k in wanted if k not in state]
        tied = missing == ["language_model.lm_head.weight"]
        if tied:
            state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
        module.load_state_dict(state, strict=True, assign=True)
        if tied:
            module.language_model.lm_head.weight = module.language_model.model.embed_tokens.weight
        # non-persistent buffers (rotary frequencies) were built on the meta device
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if any(b.is_meta for b in child.buffers(recurse=False)) and hasattr(child, "config"):
                    with torch.device(dev):
                        setattr(parent, child_name, type(child)(config=child.config))
        left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if left:
            raise MchError(f"model {name!r}: no weights were found for {left[0]!r}")
        module.to(dev)

    @staticmethod
    def _text_cfg(module: UltravoxModel) -> Any:
        return module.language_model.config

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        roots = [self.root]
        if not ((self.root / "tokenizer.json").exists() or (self.root / "tokenizer_config.json").exists()):
            roots = [self._base_dir("text")]
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # it warns that config.json's model_type is not a tokenizer's
        try:
            # explicit flag: with None, transformers asks on stdin whether to run the code that the
            # release's config.json names in `auto_map` (and runs it on "y")
            tok = AutoTokenizer.from_pretrained(str(roots[0]), local_files_only=True,
                                                trust_remote_code=bool(self.trust_remote_code))
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the same to the user
            lines = str(exc).strip().splitlines()
            hint = ("; it is custom code, which mch runs only with --trust-remote-code"
                    if "trust_remote_code" in str(exc) else "")
            raise MchError(f"model {self.spec.name!r}: cannot load the tokenizer from {roots[0]} "
                           f"({type(exc).__name__}: {lines[0][:200] if lines else ''}){hint}") from None
        finally:
            hf_logging.set_verbosity(level)
        if tok.eos_token is None:
            raise MchError(f"model {self.spec.name!r}: the tokenizer in {roots[0]} has no EOS token, which Ultravox "
                           f"uses for its audio slots")
        return tok

    def _load_feature_extractor(self, n_mels: int) -> Any:
        from transformers import WhisperFeatureExtractor

        dirs = [self.root]
        if self.config.get("audio_model_id") or self.options.get("audio_model"):
            try:
                dirs.append(self._base_dir("audio"))
            except MchError:
                pass  # weights and config were in the checkpoint; Whisper's defaults are the same
        for d in dirs:
            if (d / "preprocessor_config.json").exists():
                fe = WhisperFeatureExtractor.from_pretrained(str(d))
                break
        else:
            fe = WhisperFeatureExtractor(feature_size=n_mels)  # Whisper's own defaults otherwise
        if fe.feature_size != n_mels or fe.sampling_rate != SAMPLE_RATE:
            raise MchError(f"model {self.spec.name!r}: the feature extractor gives {fe.feature_size} mel bins at "
                           f"{fe.sampling_rate} Hz, the encoder expects {n_mels} at {SAMPLE_RATE}")
        return fe

    def _apply_adapter(self, d: Path) -> None:
        from mch.checkpoints import load_lora_adapter

        assert self.module is not None
        try:
            if not (d / "adapter_config.json").exists() and (d / "model.safetensors").exists():
                with tempfile.TemporaryDirectory() as tmp:
                    _lora_to_peft_dir(d, Path(tmp))
                    self.module.language_model = load_lora_adapter(self.module.language_model, tmp, merge=True)
            else:
                self.module.language_model = load_lora_adapter(self.module.language_model, d, merge=True)
        except RuntimeError as exc:  # shape mismatches surface from load_state_dict
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
            raise MchError(f"--adapter {d}: its weights do not fit this model's LLM ({detail[:200]})") from None
        self.module.requires_grad_(False)

    def identity(self) -> dict[str, Any]:
        # a new value when the computation changes for the same weights and inputs (here: the
        # release's continuation chunks and streaming mask), so older store entries are not reused
        return {**super().identity(), "computation": "ultravox-release-2"}

    def fidelity(self, protocol: str) -> list[str]:
        """Where this plugin's computation follows or departs from the released code (recorded
        with the model in every result)."""
        notes = ["the released Ultravox computation at batch 1, implemented by mch (the checkpoint's remote code "
                 "never runs); clips over 30 s run as 30 s chunks, continuation chunks zero-padded to 30 s as the "
                 "release's processor makes them"]
        cfg = getattr(self, "config", None)
        if cfg is None:  # not loaded (the store had the vectors): read config.json alone
            try:
                from mch.checkpoints import resolve_checkpoint

                cfg = _read_config(resolve_checkpoint(self.checkpoint, self.revision, self.spec.name,
                                                      allow_patterns=["config.json"]))
            except MchError:
                cfg = {}
        block = cfg.get("audio_latency_block_size")
        if block is not None:
            notes.append(f"audio_latency_block_size {block}: the release's streaming mask on the encoder, applied")
        if protocol == "paper":
            notes.append("encoder and adapter vectors of clips over 30 s: the first chunk only, as the reference "
                         "stored them (its writer overwrote the other chunks' rows)")
        return notes

    # -- stages
    def stage_map(self, view: str = "modal") -> dict[str, str]:
        n = getattr(self, "n_layers", 32)
        stages = {f"llm.{i}": f"language_model.model.layers.{i}" for i in range(n)}
        stages["llm.final"] = "language_model.model.norm"
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
            raise MchError(f"model {self.spec.name!r}: option user_template must contain {AUDIO_PLACEHOLDER} exactly "
                           f"once, got {content!r}")
        if not getattr(self.tokenizer, "chat_template", None):
            raise MchError(f"model {self.spec.name!r}: the tokenizer of {self.root} has no chat template")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- audio
    def _waveform(self, s: Sample) -> np.ndarray:
        media = s.media
        if not (isinstance(media, (tuple, list)) and len(media) == 2):
            raise SampleError(f"model {self.spec.name!r}: sample {s.sample_id} is not speech (expected a "
                              f"(waveform, sample_rate) pair)", sample_id=s.sample_id)
        try:
            wave, sr = np.asarray(media[0], dtype=np.float32), int(media[1])
        except (TypeError, ValueError):
            wave, sr = np.zeros((0, 0), np.float32), 0
        if wave.ndim == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        if wave.ndim != 1 or not np.isfinite(wave).all() or sr <= 0:
            raise SampleError(f"sample {s.sample_id}: expected a finite mono waveform and a positive sample rate, "
                              f"got an array of shape {wave.shape} at {media[1]!r} Hz", sample_id=s.sample_id)
        if sr != SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = math.gcd(sr, SAMPLE_RATE)
            wave = resample_poly(wave, SAMPLE_RATE // g, sr // g).astype(np.float32)
        return wave

    def _features(self, wave: np.ndarray) -> np.ndarray:
        """(n_mels, L) log-mel of one clip alone, L = ceil(samples / hop)."""
        hop = self.feature_extractor.hop_length
        if len(wave) < 2 * hop:  # the processor's minimum
            wave = np.pad(wave, (0, 2 * hop - len(wave)))
        x = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, padding="longest", pad_to_multiple_of=hop,
                                   truncation=False, return_attention_mask=True, return_tensors="np")
        L = int(x["attention_mask"][0].sum())
        return x["input_features"][0][:, :L]

    def _chunks(self, feats: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """30 s chunks of one clip: (mel, real frames); continuation chunks padded to 30 s."""
        L, C = feats.shape[1], self.max_chunk
        out = []
        for off in range(0, L, C):
            m = feats[:, off: off + C]
            real = m.shape[1]
            if off > 0 and real < C:
                m = np.pad(m, ((0, 0), (0, C - real)))
            out.append((m, real))
        return out

    # -- batches
    def _build(self, samples: Sequence[Sample], protocol: str, view: str, query: str = "",
               answers: Sequence[list[int]] | None = None) -> dict[str, Any]:
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
                    raise SampleError(f"sample {s.sample_id} has no paired text for the text view",
                                      sample_id=s.sample_id)
                mid = self._ids(text)
                seqs.append(pre + mid + post)
                spans.append((len(pre), len(mid)))
        else:
            eos = self.tokenizer.eos_token_id
            for i, s in enumerate(samples):
                n_tok = 0
                for m, real in self._chunks(self._features(self._waveform(s))):
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
        for i, (q, (start, n)) in enumerate(zip(seqs, spans)):
            ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
            att[i, : len(q)] = 1
            mod[i, start: start + n] = True
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
            pools["encoder"] = Pool(owner, {"modality": (ar_e < enc_real[:, None]) & kr,
                                            "all": (ar_e < enc_own[:, None]) & kr})
            pools["adapter"] = Pool(owner, {"modality": (ar_a < tok_real[:, None]) & kr,
                                            "all": (ar_a < tok_own[:, None]) & kr})
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
            inputs.update(audio_values=values, audio_lens=lens, valid_lens=valid,
                          scatter=torch.tensor([bs, ts, rs, ks], dtype=torch.long))
        else:
            pools["adapter"] = pools["llm"]
        return inputs, pools

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.device) for k, v in inputs.items()}
        if "audio_values" in out:
            out["audio_values"] = out["audio_values"].to(self.torch_dtype)
        return out

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        built = self._build(samples, protocol, view)
        inputs, pools = self._tensors(built, protocol)
        info = {"view": view, "protocol": protocol, "n_chunks": [built["owner"].count(i) for i in range(len(samples))]
                if view == "modal" else [0] * len(samples), "modality_tokens": [n for _, n in built["spans"]]}
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
    def prompt_embeds(self, samples: Sequence[Sample], query: str, view: str = "modal",
                      protocol: str = "default", grad: bool = False) -> list[torch.Tensor]:
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

    def score_parts(self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str,
                    view: str = "modal", grad: bool = False) -> Any:
        from mch.model import ScoreParts

        assert self.module is not None
        return ScoreParts(self.module.language_model, self.prompt_embeds(samples, query, view, protocol, grad=grad),
                          self.continuation_ids(continuations))

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
                    raise SampleError(f"sample {s.sample_id} has no paired text, which the content-token loss needs",
                                      sample_id=s.sample_id)
                answers.append(self._ids(text))
        built = self._build(samples, protocol, "modal", answers=answers)
        inputs, _ = self._tensors(built, protocol)
        targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        if answers is not None:
            keep = torch.zeros_like(targets, dtype=torch.bool)
            for i, (start, n) in enumerate(built["answers"]):
                keep[i, start: start + n] = True
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

    def score(self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str,
              view: str = "modal") -> Scores:
        from mch.scoring import left_pad, score_shared_prefix

        assert self.module is not None
        conts = self.continuation_ids(continuations)
        with torch.inference_mode():
            x, m = left_pad(self.prompt_embeds(samples, query, view, protocol))
            logp, n = score_shared_prefix(self.module.language_model, x, m, conts)
        return Scores(logp=logp.numpy(), n_tokens=n.numpy())
