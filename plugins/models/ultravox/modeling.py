"""Ultravox's architecture from transformers' own parts, with the release's module names:
the Whisper encoder with the release's masks, the stacking projector, the causal LM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_STRIDE = 2  # Whisper's second convolution


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

        def forward(
            self,
            input_features: torch.Tensor,
            audio_len: torch.Tensor | None = None,
            valid_len: torch.Tensor | None = None,
            **_: Any,
        ) -> BaseModelOutput:
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

    def audio_embeds(
        self, audio_values: torch.Tensor, audio_lens: torch.Tensor, valid_lens: torch.Tensor
    ) -> torch.Tensor:
        """(R, n_mels, T) chunks -> (R, ceil(ceil(T/2)/stack), d_llm) projector outputs."""
        enc = self.audio_tower(audio_values, audio_len=audio_lens, valid_len=valid_lens).last_hidden_state
        n = (valid_lens - 1) // ENCODER_STRIDE + 1
        keep = torch.arange(enc.shape[1], device=enc.device)[None, :] < n[:, None]
        enc = enc * keep[..., None].to(enc.dtype)
        return self.multi_modal_projector(enc)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def embed(
        self,
        input_ids: torch.Tensor,
        audio_values: torch.Tensor | None = None,
        audio_lens: torch.Tensor | None = None,
        valid_lens: torch.Tensor | None = None,
        scatter: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Token embeddings with the audio tokens written at their placeholder slots.
        `scatter` (4, M) holds (batch row, position, chunk row, token) for each audio token."""
        emb = self.language_model.get_input_embeddings()(input_ids)
        if audio_values is None:
            return emb
        # on another device when --device-map split the model
        audio = self.audio_embeds(audio_values, audio_lens, valid_lens).to(emb.device, emb.dtype)
        b, t, r, k = scatter
        emb = emb.clone()
        emb[b, t] = audio[r, k]
        return emb

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        lm_head: bool = False,
        **audio: Any,
    ) -> Any:
        emb = self.embed(input_ids, **audio)
        lm = self.language_model if lm_head else self.language_model.model
        return lm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids)
