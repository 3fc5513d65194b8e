"""The release's modules re-declared with its parameter names, so its checkpoint loads as it
is: the vision backbone (an HF ViT read at its second-to-last block), the projectors, the LLM
wrapper and the VLM that splices the projected patches in after BOS."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mch.api import MchError


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
        return h[:, self.num_prefix :]


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
        self.projector = nn.Sequential(
            nn.Linear(vision_dim, mid), nn.GELU(), nn.Linear(mid, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)
        )

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
    raise MchError(
        f"Prismatic arch_specifier {arch_specifier!r} is not supported (supported: linear, gelu-mlp, fused-gelu-mlp)"
    )


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

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return emb
        patches = self.project(pixel_values)  # on another device when --device-map split the model
        return emb.masked_scatter(image_mask[..., None].to(emb.device), patches.to(emb.device, emb.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> Any:
        # the inner decoder only: capture never needs the LM head
        if pixel_values is None:
            return self.lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        emb = self.embed(input_ids, pixel_values, image_mask)
        return self.lm.model(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids)
