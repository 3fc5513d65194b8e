"""Scenes of simple objects drawn with PIL, and the COCO and GQA layouts.

Each object is a real COCO category (sports ball, kite, stop sign, clock, ...) with a known
position and size; the instance and caption annotations are written from what was drawn, so
count, size, spread and category come out of the real COCO label code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mch.api import MchError

# Real COCO category ids, names and supercategories, each drawn as a simple icon.
SCENE_CATEGORIES = [
    {"id": 37, "name": "sports ball", "supercategory": "sports"},
    {"id": 38, "name": "kite", "supercategory": "sports"},
    {"id": 34, "name": "frisbee", "supercategory": "sports"},
    {"id": 13, "name": "stop sign", "supercategory": "outdoor"},
    {"id": 85, "name": "clock", "supercategory": "indoor"},
    {"id": 84, "name": "book", "supercategory": "indoor"},
    {"id": 72, "name": "tv", "supercategory": "electronic"},
    {"id": 55, "name": "orange", "supercategory": "food"},
    {"id": 59, "name": "pizza", "supercategory": "food"},
    {"id": 60, "name": "donut", "supercategory": "food"},
]
_COLORS = {
    "red": (200, 40, 40),
    "blue": (40, 70, 200),
    "green": (40, 150, 60),
    "yellow": (230, 200, 40),
    "purple": (130, 50, 160),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "orange": (240, 140, 30),
}
_NUMBERS = [
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
DEFAULT_COUNTS = [1, 3, 6, 12, 2, 8, 4, 0, 1, 5, 15, 2]


def _shape(name: str, cx: float, cy: float, s: float) -> tuple[list[tuple[float, float]], float, float]:
    """Outline polygon, half-width and half-height of a category's icon of size s."""
    import numpy as np

    def ellipse(rx: float, ry: float, k: int = 20) -> list[tuple[float, float]]:
        a = np.linspace(0, 2 * np.pi, k, endpoint=False)
        return [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in a]

    def regular(r: float, k: int, rot: float) -> list[tuple[float, float]]:
        a = rot + np.linspace(0, 2 * np.pi, k, endpoint=False)
        return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in a]

    r = s / 2
    if name in ("sports ball", "orange", "clock", "donut"):
        return ellipse(r, r), r, r
    if name == "frisbee":
        return ellipse(r, r * 0.45), r, r * 0.45
    if name == "stop sign":
        return regular(r, 8, np.pi / 8), r, r
    if name == "kite":
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], r * 0.6, r
    if name == "pizza":
        return [(cx - r, cy - r * 0.8), (cx + r, cy - r * 0.8), (cx, cy + r * 0.8)], r, r * 0.8
    if name == "book":
        return (
            [(cx - r * 0.7, cy - r), (cx + r * 0.7, cy - r), (cx + r * 0.7, cy + r), (cx - r * 0.7, cy + r)],
            r * 0.7,
            r,
        )
    if name == "tv":
        return (
            [(cx - r * 1.3, cy - r), (cx + r * 1.3, cy - r), (cx + r * 1.3, cy + r), (cx - r * 1.3, cy + r)],
            r * 1.3,
            r,
        )
    raise MchError(f"no icon for category {name!r}")


def _poly_area(pts: list[tuple[float, float]]) -> float:
    s = 0.0
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        s += x1 * y2 - x2 * y1
    return abs(s) / 2


def _draw(
    draw: Any, name: str, pts: list[tuple[float, float]], color: tuple[int, int, int], cx: float, cy: float, r: float
) -> None:
    draw.polygon(pts, fill=color, outline=(0, 0, 0))
    if name == "clock":
        draw.line([(cx, cy), (cx, cy - 0.7 * r)], fill=(0, 0, 0), width=max(1, int(r / 6)))
        draw.line([(cx, cy), (cx + 0.5 * r, cy)], fill=(0, 0, 0), width=max(1, int(r / 6)))
    elif name == "donut":
        draw.ellipse([cx - r * 0.4, cy - r * 0.4, cx + r * 0.4, cy + r * 0.4], fill=(250, 250, 250))
    elif name == "tv":
        draw.rectangle([cx - r * 1.1, cy - r * 0.8, cx + r * 1.1, cy + r * 0.8], fill=(90, 130, 170))
    elif name == "sports ball":
        draw.line([(cx - r, cy), (cx + r, cy)], fill=(0, 0, 0), width=1)


def _rle(mask: Any) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros)."""
    import numpy as np

    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _caption_list(names: list[str]) -> str:
    from collections import Counter

    counts = Counter(names)
    parts = []
    for name, k in counts.most_common(3):
        word = _NUMBERS[k] if k < len(_NUMBERS) else "many"
        parts.append(
            f"{'a' if k == 1 and name[0] not in 'aeiou' else 'an' if k == 1 else word} {name if k == 1 else name + 's'}"
        )
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + (" and other things" if len(counts) > 3 else "")


def render_scene(
    rng: Any, width: int, height: int, count: int, categories: list[dict[str, Any]], crowd: bool
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """One scene: the PIL image, its instance annotations (without ids) and what was drawn."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg_name = str(rng.choice(["gray", "beige", "sky"]))
    bg = {"gray": (150, 150, 150), "beige": (225, 210, 180), "sky": (170, 205, 235)}[bg_name]
    base = np.clip(np.asarray(bg, float) + rng.normal(0, 6, size=(height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    scale = str(rng.choice(["small", "medium", "large"]))
    layout = str(rng.choice(["clustered", "dispersed"]))
    s0 = {"small": 0.08, "medium": 0.16, "large": 0.3}[scale] * min(width, height)
    if count > 6:
        s0 = min(s0, 0.16 * min(width, height))  # many objects must fit
    centre = (rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height)
    anns, drawn = [], []
    for _ in range(count):
        cat = categories[int(rng.integers(len(categories)))]
        s = s0 * rng.uniform(0.8, 1.25)
        pts, hw, hh = _shape(cat["name"], 0.0, 0.0, s)
        if layout == "clustered":
            cx, cy = rng.normal(centre[0], 0.1 * width), rng.normal(centre[1], 0.1 * height)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        cx = float(np.clip(cx, hw + 1, width - hw - 1))  # keep the whole object inside the frame
        cy = float(np.clip(cy, hh + 1, height - hh - 1))
        pts, hw, hh = _shape(cat["name"], cx, cy, s)
        color_name = str(rng.choice(list(_COLORS)))
        _draw(draw, cat["name"], pts, _COLORS[color_name], cx, cy, s / 2)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0 = min(xs), min(ys)
        area = np.pi * (s / 2) ** 2 if cat["name"] in ("sports ball", "orange", "clock") else _poly_area(pts)
        if cat["name"] == "donut":
            area = np.pi * ((s / 2) ** 2 - (0.4 * s / 2) ** 2)
        anns.append(
            {
                "category_id": cat["id"],
                "iscrowd": 0,
                "area": round(float(area), 2),
                "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
                "segmentation": [[round(v, 2) for p in pts for v in p]],
            }
        )
        drawn.append(
            {
                "category": cat["name"],
                "color": color_name,
                "centre": [round(cx, 2), round(cy, 2)],
                "size": round(float(s), 2),
            }
        )
    if crowd:
        cat = categories[0]
        mask = np.zeros((height, width), dtype=bool)
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        yy, xx = np.mgrid[:height, :width]
        for _ in range(int(rng.integers(8, 15))):
            dx, dy = rng.normal(cx, 0.05 * width), rng.normal(cy, 0.05 * height)
            r = max(1.5, 0.015 * min(width, height))
            draw.ellipse([dx - r, dy - r, dx + r, dy + r], fill=(60, 60, 60))
            mask |= (xx - dx) ** 2 + (yy - dy) ** 2 <= r * r
        ys, xs = np.nonzero(mask)
        if len(xs):
            anns.append(
                {
                    "category_id": cat["id"],
                    "iscrowd": 1,
                    "area": float(mask.sum()),
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "segmentation": _rle(mask),
                }
            )
    return img, anns, {"background": bg_name, "scale": scale, "layout": layout, "objects": drawn, "crowd": crowd}


def _captions(info: dict[str, Any]) -> list[str]:
    names = [o["category"] for o in info["objects"]]
    bg = info["background"]
    if not names:
        return [
            f"An empty {bg} background.",
            "A plain picture with nothing in it.",
            f"Nothing but a {bg} surface.",
            "An image showing no objects at all.",
            f"A blank {bg} scene.",
        ]
    what = _caption_list(names)
    n = len(names)
    count = _NUMBERS[n] if n < len(_NUMBERS) else "many"
    return [
        f"A picture of {what}.",
        f"{what[0].upper() + what[1:]} on a {bg} background.",
        f"An image showing {what}.",
        f"There {'is' if n == 1 else 'are'} {count} object{'s' if n != 1 else ''} in this {info['layout']} scene.",
        f"A {bg} scene with {what}.",
    ]


def _scene_categories(categories: int | list[str] | None) -> list[dict[str, Any]]:
    if categories is None:
        return list(SCENE_CATEGORIES)
    if isinstance(categories, int):
        return list(SCENE_CATEGORIES[:categories])
    by_name = {c["name"]: c for c in SCENE_CATEGORIES}
    bad = [c for c in categories if c not in by_name]
    if bad:
        raise MchError(f"no icon for categories {bad}; available: {', '.join(by_name)}")
    return [by_name[c] for c in categories]


def make_coco(
    out: Path,
    *,
    seed: int = 0,
    images: int = 24,
    counts: list[int] | None = None,
    width: int = 160,
    height: int = 120,
    categories: int | list[str] | None = None,
    crowd_every: int = 5,
    split: str = "val2017",
) -> dict[str, Any]:
    """{split}/{id:012d}.jpg + annotations/instances_{split}.json + captions_{split}.json.
    `counts[i]` = objects in image i (default: a cycle covering every count bin and 0);
    every `crowd_every`-th image also gets an iscrowd=1 group (0 = never)."""
    import numpy as np

    cats = _scene_categories(categories)
    counts = list(counts) if counts is not None else [DEFAULT_COUNTS[i % len(DEFAULT_COUNTS)] for i in range(images)]
    rng = np.random.default_rng([seed, 7005])
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    imgs, anns, caps, truth = [], [], [], []
    ann_id, cap_id = 1, 1
    cap_order = []
    for i, count in enumerate(counts):
        image_id = 1 + i
        crowd = bool(crowd_every) and i % crowd_every == crowd_every - 1
        img, objs, info = render_scene(rng, width, height, int(count), cats, crowd)
        fname = f"{image_id:012d}.jpg"
        img.save(out / split / fname, quality=90)
        imgs.append(
            {
                "license": 1,
                "file_name": fname,
                "coco_url": "",
                "height": height,
                "width": width,
                "date_captured": "2017-01-01 00:00:00",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for a in objs:
            anns.append(
                {
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "iscrowd": a["iscrowd"],
                    "image_id": image_id,
                    "bbox": a["bbox"],
                    "category_id": a["category_id"],
                    "id": ann_id,
                }
            )
            ann_id += 1
        texts = _captions(info)
        for j in rng.permutation(len(texts)):  # which template gets the lowest id varies
            cap_order.append({"image_id": image_id, "id": cap_id, "caption": texts[int(j)]})
            cap_id += 1
        truth.append({"image_id": image_id, "file_name": fname, "count": int(count), **info})
    # captions file order is not id order in the real file either
    caps = [cap_order[j] for j in rng.permutation(len(cap_order))]
    info_block = {"description": "mch synthetic COCO-layout corpus", "version": "1.0", "year": 2017}
    licenses = [{"id": 1, "name": "CC0", "url": ""}]
    with open(out / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(
            {"info": info_block, "licenses": licenses, "images": imgs, "annotations": anns, "categories": cats}, f
        )
    with open(out / "annotations" / f"captions_{split}.json", "w") as f:
        json.dump({"info": info_block, "licenses": licenses, "images": imgs, "annotations": caps}, f)
    return {"files": len(imgs), "images": truth}


def make_gqa(
    out: Path,
    *,
    seed: int = 0,
    images: int = 12,
    width: int = 160,
    height: int = 120,
    categories: int | list[str] | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """images/{imageId}.jpg + {split}_balanced_questions.json with five questions per scene,
    one per structural type (verify, query, choose, logical, compare)."""
    import numpy as np

    cats = _scene_categories(categories)
    rng = np.random.default_rng([seed, 7006])
    (out / "images").mkdir(parents=True, exist_ok=True)
    questions: dict[str, Any] = {}
    qn = 0
    for i in range(images):
        image_id = str(2400000 + i)
        img, objs, info = render_scene(rng, width, height, int(rng.integers(2, 6)), cats, crowd=False)
        img.save(out / "images" / f"{image_id}.jpg", quality=90)
        objects = info["objects"]
        present = sorted({o["category"] for o in objects})
        absent = [c["name"] for c in cats if c["name"] not in present]
        largest = max(objects, key=lambda o: o["size"])
        a, b = objects[0], objects[1]

        def add(question: str, answer: str, structural: str, semantic: str, detailed: str, full: str) -> None:
            nonlocal qn
            questions[str(20000000 + qn)] = {
                "imageId": image_id,
                "question": question,
                "answer": answer,
                "fullAnswer": full,
                "isBalanced": True,
                "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            }
            qn += 1

        ask = present[0] if (i % 2 == 0 or not absent) else absent[0]
        yes = ask in present
        add(
            f"Is there a {ask} in the image?",
            "yes" if yes else "no",
            "verify",
            "obj",
            "exist",
            f"{'Yes' if yes else 'No'}, there is {'a' if yes else 'no'} {ask}.",
        )
        add(
            "What is the largest object?",
            largest["category"],
            "query",
            "cat",
            "categoryThat",
            f"The largest object is a {largest['category']}.",
        )
        side = "left" if a["centre"][0] < width / 2 else "right"
        add(
            f"Is the {a['color']} {a['category']} on the left or on the right?",
            side,
            "choose",
            "rel",
            "positionChoose",
            f"The {a['category']} is on the {side}.",
        )
        c2 = absent[0] if (i % 3 == 0 and absent) else b["category"]
        both = c2 in present
        add(
            f"Are there both a {a['category']} and a {c2}?",
            "yes" if both else "no",
            "logical",
            "obj",
            "logicalObj",
            f"{'Yes' if both else 'No'}, there {'are' if both else 'is not'} both.",
        )
        bigger = a["size"] > b["size"]
        add(
            f"Is the {a['color']} {a['category']} larger than the {b['color']} {b['category']}?",
            "yes" if bigger else "no",
            "compare",
            "attr",
            "sizeCompare",
            f"{'Yes' if bigger else 'No'}.",
        )
    with open(out / f"{split}_balanced_questions.json", "w") as f:
        json.dump(questions, f)
    return {"files": images, "questions": len(questions)}
