"""Prismatic's eval image transform for a timm ViT, in PIL + numpy (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mch.api import MchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class ImageTransform:
    """Prismatic's eval transform for a timm ViT, without torchvision: (3, S, S) float32."""

    def __init__(self, size: int, strategy: str, mean: Sequence[float], std: Sequence[float]) -> None:
        if strategy not in ("letterbox", "resize-naive", "resize-crop"):
            raise MchError(
                f"image_resize_strategy {strategy!r} is not supported; use letterbox, resize-naive or resize-crop"
            )
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
