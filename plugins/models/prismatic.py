"""Prismatic VLMs (TRI-ML `prismatic-vlms`) as mch model plugins, loaded by our own code.

No `prismatic`, timm or torchvision import: the vision backbones are transformers'
`Dinov2WithRegistersModel` / `SiglipVisionModel` with the released timm weights mapped onto
them (`timm_to_hf`), the projector and the LLM wrapper are re-declared here with the
release's parameter names, so its checkpoint loads as it is.

    PrismaticVLM
    ├── vision_backbone          featurizer = HF ViT; forward = patch tokens of the 2nd-to-last
    │   └── featurizer           block, no final norm, CLS/registers dropped (timm
    │                            `get_intermediate_layers(n={depth-2})`)      stage `encoder`
    ├── projector.projector      gelu-mlp: Linear -> GELU -> Linear (`.2`)   stage `adapter`
    │                            (fused-gelu-mlp: `.4`; linear: the Linear itself)
    └── llm_backbone.llm         LlamaForCausalLM (Vicuna-7B-v1.5, fine-tuned)
        ├── model.embed_tokens   text view: stage `adapter` (the decoder input of the text)
        ├── model.layers.{i}     stages `llm.i`
        └── model.norm           stage `llm.final`

The multimodal sequence is Prismatic's: [BOS, patches..., the rest of the prompt], the
projected patches spliced in right after BOS. Every logit is aligned with this layout:
`score` reads the logits of the continuation's own positions (1 + N_patches + prompt), and
`Prepared.info["labels"]` gives, per LLM position, the token id there (-100 at patches and
padding), so `logits[:, t-1]` predicts `labels[:, t]` (the reference compared logits of
length T+N with labels of length T, see analyses-causal-lora-tables.md B2).

Prompts: the Vicuna v1.5 prompt builder with Prismatic's system prompt,
    "A chat between a curious user and an artificial intelligence assistant. The assistant
    gives helpful, detailed, and polite answers to the user's questions. USER: {message}
    ASSISTANT:"
(one space between the parts, trailing space stripped), tokenized with BOS.
- `paper`: message "Describe this image." exactly (extraction-and-labels.md §3.4).
- `default`: the same builder (it is the format the model was trained on); message option
  `message`, default "Describe this image.".
- `score` (GMI): the same prompt followed by " " + the query as the start of the assistant's
  answer, then each continuation with a leading space.
- Text view: `default` = [BOS, the paired text's tokens, the same prompt without BOS] (the
  text where the patches would be; span `modality` = the text's tokens); `paper` = BOS + the
  raw text, no template (the reference's text-baseline format, through this model's LLM).

Images (Prismatic's transform, in PIL + numpy): RGB; `letterbox` pads to a square (int((max-w)/2)
each side, fill = int(255*mean)); then a bicubic resize of the shorter side to the image
size (224 for the released backbones) and a centre crop (`resize-naive` resizes straight to
the square); scale to [0, 1] and normalise (DINOv2: ImageNet mean/std; SigLIP: 0.5/0.5).

Checkpoints. `--checkpoint` is a Prismatic run directory (`config.json` whose "model" holds
model_id, vision_backbone_id, llm_backbone_id, arch_specifier, image_resize_strategy, and
`checkpoints/latest-checkpoint.pt` = {"model": {"projector": ..., "llm_backbone": ...}}), a
local copy of the `TRI-ML/prismatic-vlms` repository
(the run is its `<variant>/` folder; option `variant`, e.g. "dinov2-224px+7b"), or that HF id
in the local cache. Besides the run, a user must have locally:
- the LLM's config.json and tokenizer (not its weights): model option `llm` (a directory or HF
  id), else `<run>/llm/` (a copy or a symlink; the CLI has no model-option flag), else
  `lmsys/vicuna-7b-v1.5` in the HF cache. Prismatic adds a `<PAD>`
  token; the vocabulary size is read from the checkpoint's embedding matrix.
- the vision weights (always: like the release's `prismatic.load`, which loads only
  `projector` and `llm_backbone` from the checkpoint, mch never reads a `vision_backbone` that a
  full-finetune checkpoint may hold): option `vision` = a
  timm-format file (`.safetensors`, `.bin`; open_clip's `visual.trunk.` prefix is accepted)
  or directory (timm hub layout: `model.safetensors` or `open_clip_pytorch_model.bin`, with
  timm's `config.json`), or an HF-format directory (`Dinov2WithRegistersModel` /
  `SiglipVisionModel`, e.g. `facebook/dinov2-with-registers-large`); else `<run>/vision`
  (a file, a directory or a symlink to either);
  else the timm hub repository in the HF cache (`timm/vit_large_patch14_reg4_dinov2.lvd142m`;
  `timm/ViT-SO400M-14-SigLIP` or `timm/vit_so400m_patch14_siglip_224.webli`).
The SigLIP featurizer uses exact GELU whatever the source: Prismatic ran timm 0.9's
`vit_so400m_patch14_siglip_224`, whose MLP activation is `nn.GELU` (HF SigLIP configs say
tanh-GELU). The position embeddings are resampled once at load time to the image size
(bicubic, antialiased, as timm does when `img_size` differs from the pretraining size).
The run's `config.json` may carry `default_image_size` (an mch extension used by the tiny
test checkpoints; the TRI releases use the backbone's 224).

Precision. The release ran `vlm.to(device, dtype=torch.bfloat16)`, which also rounds the LLM's
rotary frequencies (`inv_freq`) to bf16: cos(position x frequency) is then off by up to 0.36
below position 300 at Vicuna's head size. Under `default` the frequencies stay float32 (as in
the other plugins, which load through `from_pretrained(dtype=...)`); under `paper` they take
the release's cast to the model dtype. Records say which (`model.fidelity`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mch.api import PROTOCOLS, VIEWS, MchError, Sample, SampleError
from mch.checkpoints import one_line
from mch.model import ModelPlugin, Pool, Prepared, Scores

SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
PAPER_MESSAGE = "Describe this image."
PAD_TOKEN = "<PAD>"
IGNORE = -100

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionBackboneInfo:
    family: str                 # "dinov2" | "siglip"
    timm_arch: str
    hub_ids: tuple[str, ...]    # timm weights on the HF hub, first found wins
    image_size: int
    num_heads: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Prismatic's vision_backbone_id -> what its timm model was (prismatic/models/backbones/vision).
VISION_BACKBONES = {
    "dinov2-vit-l": VisionBackboneInfo("dinov2", "vit_large_patch14_reg4_dinov2",
                                       ("timm/vit_large_patch14_reg4_dinov2.lvd142m",), 224, 16,
                                       IMAGENET_MEAN, IMAGENET_STD),
    "siglip-vit-so400m": VisionBackboneInfo("siglip", "vit_so400m_patch14_siglip_224",
                                            ("timm/ViT-SO400M-14-SigLIP", "timm/vit_so400m_patch14_siglip_224.webli"),
                                            224, 16, INCEPTION_MEAN, INCEPTION_STD),
    "siglip-vit-so400m-384px": VisionBackboneInfo("siglip", "vit_so400m_patch14_siglip_384",
                                                  ("timm/ViT-SO400M-14-SigLIP-384",
                                                   "timm/vit_so400m_patch14_siglip_384.webli"),
                                                  384, 16, INCEPTION_MEAN, INCEPTION_STD),
}
# timm architecture -> heads (a timm-format file does not say; its hub config.json names the arch)
TIMM_HEADS = {"vit_large_patch14_reg4_dinov2": 16, "vit_large_patch14_dinov2": 16,
              "vit_so400m_patch14_siglip_224": 16, "vit_so400m_patch14_siglip_384": 16,
              "vit_base_patch16_siglip_224": 12, "vit_base_patch16_siglip_256": 12,
              "vit_base_patch16_siglip_384": 12}
# Prismatic's llm_backbone_id -> the HF checkpoint its config and tokenizer come from
LLM_BACKBONES = {"vicuna-v15-7b": "lmsys/vicuna-7b-v1.5", "vicuna-v15-13b": "lmsys/vicuna-13b-v1.5",
                 "llama2-7b-pure": "meta-llama/Llama-2-7b-hf", "llama2-13b-pure": "meta-llama/Llama-2-13b-hf",
                 "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf", "llama2-13b-chat": "meta-llama/Llama-2-13b-chat-hf"}
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")
LLM_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "*.model"]


# --------------------------------------------------------------------------- prompt


def vicuna_v15_prompt(message: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Prismatic's VicunaV15ChatPromptBuilder, first human turn, as `get_prompt()` returns it."""
    message = message.replace("<image>", "").strip()
    return (system_prompt.strip() + " " + f"USER: {message} ASSISTANT: ").rstrip()


# --------------------------------------------------------------------------- images


class ImageTransform:
    """Prismatic's eval transform for a timm ViT, without torchvision: (3, S, S) float32."""

    def __init__(self, size: int, strategy: str, mean: Sequence[float], std: Sequence[float]) -> None:
        if strategy not in ("letterbox", "resize-naive", "resize-crop"):
            raise MchError(f"image_resize_strategy {strategy!r} is not supported; "
                           f"use letterbox, resize-naive or resize-crop")
        self.size, self.strategy = int(size), strategy
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.fill = tuple(int(x * 255) for x in mean)

    def _resize_short(self, img: Any) -> Any:
        from PIL import Image

        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short == self.size:
            return img
        new_long = int(self.size * long / short)  # torchvision truncates
        new = (self.size, new_long) if w <= h else (new_long, self.size)
        return img.resize(new, Image.BICUBIC)

    def _center_crop(self, img: Any) -> Any:
        w, h = img.size
        top = int(round((h - self.size) / 2.0))  # Python round, as torchvision
        left = int(round((w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))

    def __call__(self, img: Any) -> np.ndarray:
        from PIL import Image, ImageOps

        img = img.convert("RGB")
        if self.strategy == "letterbox":
            w, h = img.size
            m = max(w, h)
            hp, vp = int((m - w) / 2), int((m - h) / 2)
            if hp or vp:
                img = ImageOps.expand(img, border=(hp, vp, hp, vp), fill=self.fill)
        if self.strategy == "resize-naive":
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.BICUBIC)
        else:
            img = self._center_crop(self._resize_short(img))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return ((x - self.mean) / self.std).astype(np.float32)


# --------------------------------------------------------------------------- timm -> HF key maps


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
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def _split_qkv(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = w.shape[0] // 3
    return w[:d], w[d: 2 * d], w[2 * d:]


def timm_to_hf(family: str, timm_sd: dict[str, torch.Tensor], num_heads: int, image_size: int,
               what: str = "vision weights") -> tuple[Any, dict[str, torch.Tensor]]:
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
        cfg = Dinov2WithRegistersConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=num_heads,
                                        mlp_ratio=mlp_dim // dim, patch_size=patch, image_size=image_size,
                                        num_register_tokens=n_reg, layer_norm_eps=1e-6, hidden_act="gelu",
                                        qkv_bias=True, layerscale_value=1.0)
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
        out[e + "mask_token"] = take("mask_token").reshape(1, dim) if "mask_token" in sd \
            else torch.zeros(1, dim, dtype=proj.dtype)
        out[e + "register_tokens"] = sd["reg_token"] if n_reg else torch.zeros(1, 0, dim, dtype=proj.dtype)
        for i in range(depth):
            b, h = f"blocks.{i}.", f"encoder.layer.{i}."
            for t, n in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                         ("attn.proj", "attention.o_proj")):
                out[h + n + ".weight"] = take(b + t + ".weight")
                out[h + n + ".bias"] = take(b + t + ".bias")
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.weight"))):
                out[h + f"attention.{name}.weight"] = w
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.bias"))):
                out[h + f"attention.{name}.bias"] = w
            for t, n in (("ls1", "layer_scale1"), ("ls2", "layer_scale2")):
                out[h + n + ".lambda1"] = take(b + t + ".gamma") if b + t + ".gamma" in sd \
                    else torch.ones(dim, dtype=proj.dtype)
        out["layernorm.weight"] = take("norm.weight")
        out["layernorm.bias"] = take("norm.bias")
    elif family == "siglip":
        has_head = "attn_pool.latent" in sd
        cfg = SiglipVisionConfig(hidden_size=dim, intermediate_size=mlp_dim, num_hidden_layers=depth,
                                 num_attention_heads=num_heads, patch_size=patch, image_size=image_size,
                                 layer_norm_eps=1e-6, hidden_act="gelu", vision_use_head=has_head)
        out["embeddings.patch_embedding.weight"] = proj
        out["embeddings.patch_embedding.bias"] = take("patch_embed.proj.bias")
        out["embeddings.position_embedding.weight"] = resample_pos(take("pos_embed"), grid)[0]
        for i in range(depth):
            b, h = f"blocks.{i}.", f"encoder.layers.{i}."
            for t, n in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2"), ("attn.proj", "self_attn.out_proj")):
                out[h + n + ".weight"] = take(b + t + ".weight")
                out[h + n + ".bias"] = take(b + t + ".bias")
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.weight"))):
                out[h + f"self_attn.{name}.weight"] = w
            for name, w in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(take(b + "attn.qkv.bias"))):
                out[h + f"self_attn.{name}.bias"] = w
        out["post_layernorm.weight"] = take("norm.weight")
        out["post_layernorm.bias"] = take("norm.bias")
        if has_head:
            a, h = "attn_pool.", "head."
            out[h + "probe"] = take(a + "latent")
            # timm's q and kv Linears are nn.MultiheadAttention's packed in_proj (q; k; v)
            out[h + "attention.in_proj_weight"] = torch.cat([take(a + "q.weight"), take(a + "kv.weight")], 0)
            out[h + "attention.in_proj_bias"] = torch.cat([take(a + "q.bias"), take(a + "kv.bias")], 0)
            for t, n in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
                out[h + n + ".weight"] = take(a + t + ".weight")
                out[h + n + ".bias"] = take(a + t + ".bias")
    else:
        raise MchError(f"unknown vision backbone family {family!r}")
    left = sorted(set(sd) - used - {"reg_token"})
    if left:
        raise MchError(f"{what}: {len(left)} keys do not belong to a timm {family} ViT (first: {left[0]})")
    return cfg, out


# --------------------------------------------------------------------------- modules


class VisionBackbone(nn.Module):
    """The featurizer: patch tokens of the second-to-last block, unnormalised, without
    prefix tokens (CLS and registers)."""

    def __init__(self, featurizer: nn.Module, family: str) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.family = family
        cfg = featurizer.config
        self.embed_dim = cfg.hidden_size
        self.num_prefix = 1 + cfg.num_register_tokens if family == "dinov2" else 0
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2

    def blocks(self) -> nn.ModuleList:
        enc = self.featurizer.encoder
        return enc.layer if self.family == "dinov2" else enc.layers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.featurizer.embeddings(pixel_values.to(self.featurizer.dtype))
        blocks = self.blocks()
        for block in blocks[: len(blocks) - 1]:
            h = block(h, None)
            h = h[0] if isinstance(h, tuple) else h
        return h[:, self.num_prefix:]


class LinearProjector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.projector = nn.Linear(vision_dim, llm_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x)


class MLPProjector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x)


class FusedMLPProjector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        mid = 4 * vision_dim
        self.projector = nn.Sequential(nn.Linear(vision_dim, mid), nn.GELU(), nn.Linear(mid, llm_dim), nn.GELU(),
                                       nn.Linear(llm_dim, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x)


def make_projector(arch_specifier: str, vision_dim: int, llm_dim: int) -> tuple[nn.Module, str]:
    """Projector for Prismatic's `arch_specifier` (same precedence as the release) and the path
    of its last Linear, the `adapter` stage."""
    if arch_specifier == "linear":
        return LinearProjector(vision_dim, llm_dim), "projector.projector"
    if arch_specifier.endswith("fused-gelu-mlp"):
        return FusedMLPProjector(vision_dim, llm_dim), "projector.projector.4"
    if arch_specifier.endswith("gelu-mlp"):
        return MLPProjector(vision_dim, llm_dim), "projector.projector.2"
    raise MchError(f"Prismatic arch_specifier {arch_specifier!r} is not supported "
                   f"(supported: linear, gelu-mlp, fused-gelu-mlp)")


class LLMBackbone(nn.Module):
    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.llm = llm


class PrismaticVLM(nn.Module):
    def __init__(self, vision_backbone: VisionBackbone, projector: nn.Module, llm_backbone: LLMBackbone) -> None:
        super().__init__()
        self.vision_backbone = vision_backbone
        self.projector = projector
        self.llm_backbone = llm_backbone

    @property
    def lm(self) -> nn.Module:
        return self.llm_backbone.llm

    def project(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, D_llm): the projected patches that enter the LLM."""
        return self.projector(self.vision_backbone(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_mask: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return emb
        patches = self.project(pixel_values)
        return emb.masked_scatter(image_mask[..., None], patches.to(emb.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None) -> Any:
        # the inner decoder only: capture never needs the LM head
        if pixel_values is None:
            return self.lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        emb = self.embed(input_ids, pixel_values, image_mask)
        return self.lm.model(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids)


# --------------------------------------------------------------------------- loading helpers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers.utils.logging as tlog

    level = tlog.get_verbosity()
    bar = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bar:
            tlog.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    return one_line(exc, max_len=300)  # a state dict's errors list every key


def from_state_dict(cls: Any, config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str) -> Any:
    """`cls` built from `config` with exactly `state` (no random init, no missing or extra key)."""
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                              output_loading_info=True)
    except MchError:
        raise
    except Exception as exc:  # noqa: BLE001 - shape mismatches and the like are the user's files
        raise MchError(f"{what} do not fit their architecture ({_one_line(exc)})") from None
    bad = sorted(info.get("missing_keys", ())) + sorted(info.get("unexpected_keys", ())) \
        + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if bad:
        raise MchError(f"{what} do not match the model: {len(bad)} missing, unexpected or mismatched keys "
                       f"(first: {bad[0]})")
    return model


def _load_tensors(path: Path, trust: bool, what: str) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise MchError(f"{what} {path} cannot be read as safetensors ({_one_line(exc)})") from None
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if trust and "weights_only" in str(exc):
            return torch.load(str(path), map_location="cpu", weights_only=False)
        hint = " (it holds Python objects besides tensors; pass --trust-remote-code to unpickle it)" \
            if "weights_only" in str(exc) else ""
        raise MchError(f"{what} {path} cannot be read{hint}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- the plugin


from mch.api import Param  # noqa: E402 - option declarations


class PrismaticModel(ModelPlugin):
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

    # -- loading
    def _name(self) -> str:
        return self.spec.name

    def _run_dir(self) -> Path:
        from mch.checkpoints import resolve_checkpoint

        variant = self.options.get("variant")
        p = Path(str(self.checkpoint)).expanduser()

        def is_run(d: Path) -> bool:
            return (d / "config.json").is_file() and (d / "checkpoints").is_dir()

        if p.is_dir():
            if is_run(p):
                return p
            if variant and is_run(p / variant):
                return p / variant
            raise MchError(f"model {self._name()!r}: {p} is not a Prismatic run directory (config.json and "
                           f"checkpoints/latest-checkpoint.pt) nor holds one named {variant!r}; pass --checkpoint "
                           f"with the run directory")
        try:
            root = resolve_checkpoint(str(self.checkpoint), self.revision, self._name(),
                                      allow_patterns=[f"{variant}/*"] if variant else None)
        except MchError as exc:
            if "local Hugging Face cache" not in str(exc) or not variant:
                raise
            rev = f" --revision {self.revision}" if self.revision else ""
            raise MchError(f"model {self._name()!r}: Prismatic run {variant!r} of {self.checkpoint} is not in the "
                           f"local Hugging Face cache and mch does not download at run time; download it "
                           f"(`huggingface-cli download {self.checkpoint}{rev} --include '{variant}/*'`) or pass "
                           f"--checkpoint with a local run directory") from None
        run = root / variant if variant else root
        if not is_run(run):
            raise MchError(f"model {self._name()!r}: {run} is not a complete Prismatic run (config.json and "
                           f"checkpoints/latest-checkpoint.pt); download the whole {variant!r} folder")
        return run

    @staticmethod
    def _checkpoint_file(run: Path) -> Path:
        ck = run / "checkpoints" / "latest-checkpoint.pt"
        if ck.is_file():
            return ck
        pts = sorted((run / "checkpoints").glob("*.pt"))
        if len(pts) == 1:
            return pts[0]
        raise MchError(f"{run}/checkpoints has no latest-checkpoint.pt"
                       + (f" and {len(pts)} other .pt files; keep only the one to load" if pts else ""))

    def _resolve_dir(self, source: str, revision: str | None, patterns: list[str] | None, what: str,
                     option: str) -> Path:
        from mch.checkpoints import resolve_checkpoint

        try:
            return resolve_checkpoint(source, revision, self._name(), allow_patterns=patterns)
        except MchError:
            raise MchError(f"model {self._name()!r}: {what} {source} is not available locally and mch does not "
                           f"download at run time; download it (`huggingface-cli download {source}`), or put a "
                           f"local copy (or a link to one) at <run directory>/{option}, or set the model option "
                           f"{option}=PATH") from None

    def _load_llm(self, run: Path, cfg: dict, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Any]:
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

        llm_id = cfg.get("llm_backbone_id", "")
        src = self.options.get("llm")
        if src is None and (run / "llm").is_dir():
            src = str(run / "llm")
        if src is None:
            if llm_id not in LLM_BACKBONES:
                raise MchError(f"model {self._name()!r}: unknown llm_backbone_id {llm_id!r}; put its config.json and "
                               f"tokenizer at {run}/llm or set the model option llm=PATH")
            src = LLM_BACKBONES[llm_id]
        path = self._resolve_dir(src, self.options.get("llm_revision"), LLM_FILES,
                                 f"the config and tokenizer of the LLM ({llm_id})", "llm")
        try:
            with _quiet_transformers():
                # explicit flag: with None, transformers asks on stdin whether to run custom code
                trust = bool(self.trust_remote_code)
                llm_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust,
                                                    model_max_length=int(cfg.get("llm_max_length", 2048)))
        except Exception as exc:  # noqa: BLE001
            hint = ("; Vicuna ships only a SentencePiece tokenizer.model, which needs `pip install sentencepiece "
                    "protobuf`") if any(w in str(exc).lower() for w in ("sentencepiece", "protobuf")) else ""
            raise MchError(f"model {self._name()!r}: cannot read the LLM config and tokenizer in {path} "
                           f"({_one_line(exc)}){hint}") from None
        # Prismatic's LLaMa-2 backbones add a <PAD> token (and pad the embeddings to a multiple of 64)
        if tok.pad_token is None or tok.pad_token != PAD_TOKEN:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
        if tok.bos_token_id is None or tok("a").input_ids[:1] != [tok.bos_token_id]:
            raise MchError(f"model {self._name()!r}: the tokenizer in {path} does not start inputs with BOS, "
                           f"which Prismatic's layout [BOS, patches, prompt] needs")
        llm_state = {k[len("llm."):] if k.startswith("llm.") else k: v for k, v in state.items()
                     if not k.endswith("rotary_emb.inv_freq")}
        emb = llm_state.get("model.embed_tokens.weight")
        if emb is None:
            raise MchError(f"model {self._name()!r}: the checkpoint's llm_backbone has no "
                           f"llm.model.embed_tokens.weight; is this a Prismatic checkpoint?")
        if emb.shape[0] < len(tok):
            raise MchError(f"model {self._name()!r}: the checkpoint's vocabulary ({emb.shape[0]}) is smaller than "
                           f"the tokenizer's ({len(tok)}); the LLM files in {path} are not this model's")
        llm_cfg.vocab_size = int(emb.shape[0])
        llm_cfg.pad_token_id = tok.pad_token_id
        lm = from_state_dict(LlamaForCausalLM, llm_cfg, llm_state, self.torch_dtype,
                             f"model {self._name()!r}: the checkpoint's llm_backbone weights")
        return lm, tok

    def _vision_source(self, run: Path, info: VisionBackboneInfo | None, vb_id: str) -> Path | None:
        src = self.options.get("vision")
        if src is not None:
            p = Path(str(src)).expanduser()
            if p.exists():
                return p
            return self._resolve_dir(str(src), self.options.get("vision_revision"), None,
                                     "the vision backbone weights", "vision")
        if (run / "vision").exists():
            return run / "vision"
        if info is None:
            return None
        from mch.checkpoints import resolve_checkpoint

        for hub in info.hub_ids:
            try:
                return resolve_checkpoint(hub, None, self._name())
            except MchError:
                continue
        return None

    def _load_vision(self, run: Path, cfg: dict, ck_model: dict) -> tuple[VisionBackbone, ImageTransform]:
        from transformers import Dinov2WithRegistersModel, SiglipVisionModel

        vb_id = cfg.get("vision_backbone_id", "")
        info = VISION_BACKBONES.get(vb_id)
        family = info.family if info else ("dinov2" if vb_id.startswith("dinov2") else
                                           "siglip" if vb_id.startswith("siglip") else None)
        want = self.options.get("vision_family")
        if family is None:
            raise MchError(f"model {self._name()!r}: vision backbone {vb_id!r} is not supported "
                           f"(supported: {', '.join(VISION_BACKBONES)})")
        if want and want != family:
            raise MchError(f"model {self._name()!r} expects a {want} vision backbone but the run in {run} uses "
                           f"{vb_id!r}; use the matching model name")
        size = int(cfg.get("default_image_size") or (info.image_size if info else 224))
        mean, std = (info.mean, info.std) if info else ((IMAGENET_MEAN, IMAGENET_STD) if family == "dinov2"
                                                        else (INCEPTION_MEAN, INCEPTION_STD))
        cls = Dinov2WithRegistersModel if family == "dinov2" else SiglipVisionModel
        src = self._vision_source(run, info, vb_id)
        timm_cfg: dict = {}
        timm_file: Path | None = None
        hf_dir: Path | None = None
        # the release's loader never reads a checkpoint's vision_backbone: say so if there is one
        own = (" (the checkpoint's own vision_backbone is not used: Prismatic's loader, prismatic.load, builds the "
               "backbone from the pretrained timm weights)") if "vision_backbone" in ck_model else ""
        if src is not None:
            if src.is_file():
                timm_file = src
                if (src.parent / "config.json").is_file():
                    timm_cfg = json.loads((src.parent / "config.json").read_text())
            else:
                conf = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
                if "model_type" in conf:
                    hf_dir = src
                else:
                    timm_cfg = conf
                    timm_file = next((src / f for f in TIMM_WEIGHT_FILES if (src / f).is_file()), None)
                    if timm_file is None:
                        raise MchError(f"model {self._name()!r}: {src} holds none of {', '.join(TIMM_WEIGHT_FILES)}, "
                                       f"nor an HF config.json{own}; pass the model option vision= with the timm "
                                       f"weights")
        else:
            hubs = " or ".join(info.hub_ids) if info else "its timm weights"
            raise MchError(f"model {self._name()!r}: the vision backbone weights ({hubs}) are not available locally "
                           f"and mch does not download at run time{own}; download them (`huggingface-cli download "
                           f"{info.hub_ids[0] if info else '<timm repo>'}`), or put a local copy (timm or HF format, "
                           f"or a link to one) at {run}/vision, or set the model option vision=PATH")
        pcfg = timm_cfg.get("pretrained_cfg", {}) if isinstance(timm_cfg, dict) else {}
        mean = tuple(pcfg.get("mean", mean))
        std = tuple(pcfg.get("std", std))
        transform = ImageTransform(size, cfg.get("image_resize_strategy", "letterbox"), mean, std)
        what = f"model {self._name()!r}: the vision backbone weights"
        if hf_dir is not None:
            featurizer = self._hf_featurizer(cls, hf_dir, family, size, what)
        else:
            assert timm_file is not None
            timm_sd, where = _load_tensors(timm_file, self.trust_remote_code, "vision weights"), str(timm_file)
            if isinstance(timm_sd, dict) and "state_dict" in timm_sd and isinstance(timm_sd["state_dict"], dict):
                timm_sd = timm_sd["state_dict"]
            arch = timm_cfg.get("architecture") or (info.timm_arch if info else "")
            heads = (timm_cfg.get("model_args") or {}).get("num_heads") or TIMM_HEADS.get(arch)
            if not heads:
                raise MchError(f"model {self._name()!r}: cannot tell the number of attention heads of the vision "
                               f"weights in {where}; put timm's config.json (with `architecture`) beside them")
            hf_cfg, hf_sd = timm_to_hf(family, timm_sd, int(heads), size, what=f"vision weights in {where}")
            featurizer = from_state_dict(cls, hf_cfg, hf_sd, self.torch_dtype, what)
        return VisionBackbone(featurizer, family), transform

    def _hf_featurizer(self, cls: Any, path: Path, family: str, size: int, what: str) -> nn.Module:
        try:
            with _quiet_transformers():
                conf = cls.config_class.from_pretrained(str(path), local_files_only=True)
                if family == "siglip":
                    conf.hidden_act = "gelu"  # what Prismatic's timm model computed
                model = cls.from_pretrained(str(path), config=conf, dtype=torch.float32, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise MchError(f"{what} in {path} cannot be loaded as {cls.__name__} ({_one_line(exc)})") from None
        grid = size // conf.patch_size
        sd = dict(model.state_dict())
        if family == "dinov2":
            pos = sd["embeddings.position_embeddings"]
            sd["embeddings.position_embeddings"] = torch.cat([pos[:, :1], resample_pos(pos[:, 1:], grid)], 1)
        else:
            key = "embeddings.position_embedding.weight"
            sd[key] = resample_pos(sd[key][None], grid)[0]
        conf.image_size = size
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
        return from_state_dict(cls, conf, sd, self.torch_dtype, what)

    def load(self) -> None:
        run = self._run_dir()
        try:
            cfg = json.loads((run / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MchError(f"model {self._name()!r}: {run}/config.json cannot be read ({exc})") from None
        cfg = cfg.get("model", cfg)
        missing = [k for k in ("vision_backbone_id", "llm_backbone_id", "arch_specifier") if k not in cfg]
        if missing:
            raise MchError(f"model {self._name()!r}: {run}/config.json has no model.{missing[0]}; "
                           f"is this a Prismatic run directory?")
        ck = _load_tensors(self._checkpoint_file(run), self.trust_remote_code, "Prismatic checkpoint")
        ck_model = ck.get("model") if isinstance(ck, dict) else None
        if not isinstance(ck_model, dict) or "projector" not in ck_model or "llm_backbone" not in ck_model:
            raise MchError(f"model {self._name()!r}: {self._checkpoint_file(run)} has no model.projector and "
                           f"model.llm_backbone; is it a Prismatic checkpoint?")
        vision, transform = self._load_vision(run, cfg, ck_model)
        lm, tok = self._load_llm(run, cfg, dict(ck_model["llm_backbone"]))
        projector, self.adapter_path = make_projector(cfg["arch_specifier"], vision.embed_dim, lm.config.hidden_size)
        try:
            projector.load_state_dict(dict(ck_model["projector"]))
        except RuntimeError as exc:
            raise MchError(f"model {self._name()!r}: the checkpoint's projector does not fit a "
                           f"{cfg['arch_specifier']} projector {vision.embed_dim} -> {lm.config.hidden_size} "
                           f"({_one_line(exc)})") from None
        if self.adapter:
            from mch.checkpoints import load_lora_adapter

            try:
                lm = load_lora_adapter(lm, self.adapter, merge=True)
            except RuntimeError as exc:  # shape mismatches surface from load_state_dict
                raise MchError(f"--adapter {self.adapter}: its weights do not fit this model's LLM "
                               f"({_one_line(exc)})") from None
        module = PrismaticVLM(vision, projector, LLMBackbone(lm))
        exact = {name: b.detach().float().clone() for name, b in module.named_buffers() if name.endswith("inv_freq")}
        self.module = module.to(self.device, self.torch_dtype).eval()
        # rotary frequencies: `.to(dtype)` rounds them to the model dtype, as the release's
        # `vlm.to(device, dtype=bfloat16)` did (cos off by up to 0.36 below position 300 in bf16);
        # `default` keeps them in float32 like the other plugins, `paper` reproduces the cast
        self._rope = {name: {"default": f.to(self.device), "paper": f.to(self.device, self.torch_dtype)}
                      for name, f in exact.items()}
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
        notes = ["vision backbone from the pretrained timm weights, never from a checkpoint's vision_backbone, "
                 "as Prismatic's loader (prismatic.load) does"]
        if self.dtype_name not in ("float32", "fp32"):
            notes.append(f"rotary frequencies cast to {self.dtype_name} with the model, as the release's "
                         f"vlm.to(dtype) does" if protocol == "paper" else
                         f"rotary frequencies kept in float32 (the release casts them to {self.dtype_name} with the "
                         f"model; the paper protocol reproduces that)")
        return notes

    def identity(self) -> dict[str, Any]:
        # a new value when the computation changes for the same weights and inputs, so that
        # store entries of the earlier computation are not reused
        return {**super().identity(), "computation": "prismatic-release-2"}

    # -- stages
    def stage_map(self, view: str = "modal") -> dict[str, str]:
        n = getattr(self, "n_layers", 32)
        stages = {f"llm.{i}": f"llm_backbone.llm.model.layers.{i}" for i in range(n)}
        stages["llm.final"] = "llm_backbone.llm.model.norm"
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
            raise SampleError(f"sample {sample.sample_id} has no paired text, which the text view needs",
                              sample_id=sample.sample_id)
        return ids

    def _pixels(self, samples: Sequence[Sample]) -> torch.Tensor:
        from PIL import Image

        arrays = []
        for s in samples:
            img = s.media
            if not isinstance(img, Image.Image):
                raise SampleError(f"sample {s.sample_id}: model {self._name()!r} needs a PIL image, got "
                                  f"{type(img).__name__}", sample_id=s.sample_id)
            arrays.append(self.transform(img))
        return torch.from_numpy(np.stack(arrays))

    def _layouts(self, samples: Sequence[Sample], protocol: str, view: str, query: str | None,
                 suffixes: Sequence[Sequence[int]] | None = None) -> list[tuple[list[int], list[int]]]:
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
        return {"input_ids": ids, "attention_mask": att, "position_ids": (att.cumsum(-1) - 1).clamp(min=0),
                "role": role, "labels": labels}

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
        dev = self.device
        inputs: dict[str, Any] = {k: b[k].to(dev) for k in ("input_ids", "attention_mask", "position_ids")}
        pools = {"llm": llm_pool}
        if view == "modal":
            inputs["pixel_values"] = self._pixels(samples).to(dev, self.torch_dtype)
            inputs["image_mask"] = mod.to(dev)  # in the modal view the modality positions are the patch slots
            ones = torch.ones(B, self.num_patches, dtype=torch.bool)
            pools["encoder"] = pools["adapter"] = Pool(owner, {"modality": ones, "all": ones})
        else:
            pools["adapter"] = llm_pool
        info = {"view": view, "protocol": protocol, "labels": b["labels"],
                "prompt": self.prompt_text(protocol) if (view == "modal" or protocol == "default") else ""}
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
    def prompt_embeds(self, samples: Sequence[Sample], query: str, view: str = "modal",
                      protocol: str = "default", grad: bool = False) -> list[torch.Tensor]:
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
                patches = self.module.project(self._pixels(samples).to(self.device, self.torch_dtype))
            out = []
            for i, (seq, _role) in enumerate(layouts):
                t = torch.tensor(seq, device=self.device)
                e = emb(t.clamp(min=0))
                if patches is not None:
                    e = e.masked_scatter((t < 0)[:, None], patches[i].to(e.dtype))
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
                raise MchError(f"model {self._name()!r}: continuation {c!r} does not tokenize as a separate "
                               f"suffix after {context[-30:]!r}")
            out.append(full[len(base):])
        return out

    def _score_context(self, protocol: str, view: str, query: str) -> str:
        """The text the continuations follow (in the paper text view: the raw text, then the query)."""
        q = query.strip()
        if view == "text" and protocol == "paper":
            return q
        return self.prompt_text(protocol) + (" " + q if q else "")

    def score_parts(self, samples: Sequence[Sample], query: str, continuations: Sequence[str],
                    protocol: str, view: str = "modal", grad: bool = False) -> Any:
        from mch.model import ScoreParts

        self._require_loaded()
        self._check(protocol, view)
        self._use_rope(protocol)  # the caller runs the LM on these parts
        conts = self.continuation_ids(self._score_context(protocol, view, query), continuations)
        return ScoreParts(self.module.lm, self.prompt_embeds(samples, query, view, protocol, grad=grad), conts)

    def score(self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str,
              view: str = "modal") -> Scores:
        from mch.scoring import left_pad, score_shared_prefix

        self._require_loaded()
        self._check(protocol, view)
        self._use_rope(protocol)
        conts = self.continuation_ids(self._score_context(protocol, view, query), continuations)
        bs = int(self.options.get("batch_size", 8))
        rows = []
        for i in range(0, len(samples), bs):
            with torch.inference_mode():
                x, m = left_pad(self.prompt_embeds(samples[i: i + bs], query, view, protocol))
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
                    raise SampleError(f"sample {s.sample_id} has no paired text, which the content-token loss needs",
                                      sample_id=s.sample_id)
                suffixes.append(self.continuation_ids(context, [text])[0])
            b = self._batch(self._layouts(samples, "default", "modal", None, suffixes))
            targets = b["labels"].masked_fill(b["role"] != 2, IGNORE)
        dev = self.device
        with torch.enable_grad() if grad else torch.inference_mode():
            emb = self.module.embed(b["input_ids"].to(dev), self._pixels(samples).to(dev, self.torch_dtype),
                                    (b["role"] == 1).to(dev))
            logits = self.module.lm(inputs_embeds=emb, attention_mask=b["attention_mask"].to(dev),
                                    position_ids=b["position_ids"].to(dev)).logits
        return LossTerms(logits[:, :-1], targets[:, 1:].to(dev))
