"""The released timm ViT weights (DINOv2 with registers, SigLIP) mapped onto transformers'
vision models, and position embeddings resampled to the image size."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F

from mch.api import MchError


def _grid(n: int, what: str) -> int:
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise MchError(f"{what}: {n} position embeddings do not form a square grid")
    return g


def resample_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, g*g, D) patch position embeddings -> (1, grid*grid, D), bicubic with antialias in
    float32 (what timm does to a checkpoint created at another img_size)."""
    old = _grid(pos.shape[1], "vision weights")
    if old == grid:
        return pos
    d = pos.shape[-1]
    x = pos.float().reshape(1, old, old, d).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pos.dtype)


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("visual.trunk.", "featurizer.", "module."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def _split_qkv(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = w.shape[0] // 3
    return w[:d], w[d : 2 * d], w[2 * d :]


def timm_to_hf(
    family: str, timm_sd: dict[str, torch.Tensor], num_heads: int, image_size: int, what: str = "vision weights"
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Map a timm ViT state dict (DINOv2 with registers, or SigLIP) to an HF config and state dict
    at `image_size`. Every timm key must be used: anything left over is an error."""
    from transformers import Dinov2WithRegistersConfig, SiglipVisionConfig

    sd = _strip_prefix(timm_sd)
    used: set[str] = set()

    def take(k: str) -> torch.Tensor:
        if k not in sd:
            raise MchError(f"{what}: key {k!r} is missing; expected a timm {family} ViT state dict")
        used.add(k)
        return sd[k]

    proj = take("patch_embed.proj.weight")
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth < 2:
        raise MchError(f"{what}: found {depth} transformer blocks; the featurizer needs at least 2")
    mlp_dim = sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * dim
    if image_size % patch:
        raise MchError(f"{what}: image size {image_size} is not a multiple of the patch size {patch}")
    grid = image_size // patch
    out: dict[str, torch.Tensor] = {}
    if family == "dinov2":
        n_reg = take("reg_token").shape[1] if "reg_token" in sd else 0
        if mlp_dim % dim:
            raise MchError(f"{what}: MLP width {mlp_dim} is not a multiple of the width {dim}")
        cfg = Dinov2WithRegistersConfig(
            hidden_size=dim,
            num_hidden_layers=depth,
            num_attention_heads=num_heads,
            mlp_ratio=mlp_dim // dim,
            patch_size=patch,
            image_size=image_size,
            num_register_tokens=n_reg,
            layer_norm_eps=1e-6,
            hidden_act="gelu",
            qkv_bias=True,
            layerscale_value=1.0,
        )
        e = "embeddings."
        out[e + "patch_embeddings.projection.weight"] = proj
        out[e + "patch_embeddings.projection.bias"] = take("patch_embed.proj.bias")
        # timm (no_embed_class) folded the CLS position into cls_token and keeps patch positions
        # only; HF adds position[0] to CLS, so it is zero here.
        cls = take("cls_token")
        out[e + "cls_token"] = cls
        pos = resample_pos(take("pos_embed"), grid)
        out[e + "position_embeddings"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        # only masked-image pre-training reads the mask token; keep one if the file has it
        out[e + "mask_token"] = (
            take("mask_token").reshape(1, dim) if "mask_token" in sd else torch.zeros(1, dim, dtype=proj.dtype)
        )
        out[e + "register_tokens"] = sd["reg_token"] if n_reg else torch.zeros(1, 0, dim, dtype=proj.dtype)
        for i in range(depth):
            b, h = f"blocks.{i}.", f"encoder.layer.{i}."
            for t, n in (
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
                ("attn.proj", "attention.o_proj"),
            ):
                out[h + n + ".weight"] = take(b + t + ".weight")
                out[h + n + ".bias"] = take(b + t + ".bias")
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.weight")), strict=True):
                out[h + f"attention.{name}.weight"] = w
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.bias")), strict=True):
                out[h + f"attention.{name}.bias"] = w
            for t, n in (("ls1", "layer_scale1"), ("ls2", "layer_scale2")):
                out[h + n + ".lambda1"] = (
                    take(b + t + ".gamma") if b + t + ".gamma" in sd else torch.ones(dim, dtype=proj.dtype)
                )
        out["layernorm.weight"] = take("norm.weight")
        out["layernorm.bias"] = take("norm.bias")
    elif family == "siglip":
        has_head = "attn_pool.latent" in sd
        cfg = SiglipVisionConfig(
            hidden_size=dim,
            intermediate_size=mlp_dim,
            num_hidden_layers=depth,
            num_attention_heads=num_heads,
            patch_size=patch,
            image_size=image_size,
            layer_norm_eps=1e-6,
            hidden_act="gelu",
            vision_use_head=has_head,
        )
        out["embeddings.patch_embedding.weight"] = proj
        out["embeddings.patch_embedding.bias"] = take("patch_embed.proj.bias")
        out["embeddings.position_embedding.weight"] = resample_pos(take("pos_embed"), grid)[0]
        for i in range(depth):
            b, h = f"blocks.{i}.", f"encoder.layers.{i}."
            for t, n in (
                ("norm1", "layer_norm1"),
                ("norm2", "layer_norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
                ("attn.proj", "self_attn.out_proj"),
            ):
                out[h + n + ".weight"] = take(b + t + ".weight")
                out[h + n + ".bias"] = take(b + t + ".bias")
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.weight")), strict=True):
                out[h + f"self_attn.{name}.weight"] = w
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.bias")), strict=True):
                out[h + f"self_attn.{name}.bias"] = w
        out["post_layernorm.weight"] = take("norm.weight")
        out["post_layernorm.bias"] = take("norm.bias")
        if has_head:
            a, h = "attn_pool.", "head."
            out[h + "probe"] = take(a + "latent")
            # timm's q and kv Linears are nn.MultiheadAttention's packed in_proj (q; k; v)
            out[h + "attention.in_proj_weight"] = torch.cat([take(a + "q.weight"), take(a + "kv.weight")], 0)
            out[h + "attention.in_proj_bias"] = torch.cat([take(a + "q.bias"), take(a + "kv.bias")], 0)
            for t, n in (
                ("proj", "attention.out_proj"),
                ("norm", "layernorm"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                out[h + n + ".weight"] = take(a + t + ".weight")
                out[h + n + ".bias"] = take(a + t + ".bias")
    else:
        raise MchError(f"unknown vision backbone family {family!r}")
    left = sorted(set(sd) - used - {"reg_token"})
    if left:
        raise MchError(f"{what}: {len(left)} keys do not belong to a timm {family} ViT (first: {left[0]})")
    return cfg, out
