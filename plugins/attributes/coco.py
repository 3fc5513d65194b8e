"""COCO 2017 (Lin et al. 2014): val2017 images with instance and caption annotations.

Layout: `val2017/*.jpg`, `annotations/instances_val2017.json`, `annotations/captions_val2017.json`
(the split name picks the folder and the two files). `sample_id` is the integer image id as
a string (the reference parses it with int()).

Labels (reference script 10, extraction-and-labels.md section 4.6), computed over the
whole annotation file, crowd annotations (iscrowd=1) dropped first:
- object_count: number of instances, bins "1" (n <= 1), "2-4", "5-10", "11+".
- avg_obj_size: mean bbox area / image area; tertiles small/medium/large.
- spatial_spread: tertiles concentrated/moderate/dispersed.
- tertile thresholds: np.percentile at 33.3 and 66.7 over the annotated images (>= 1 instance)
  of the whole file, never the selected subset.
The `paper` protocol keeps the reference exactly: images without instances are kept (count
"1", size "small", spread "concentrated"), spread = population std of the bbox centres'
distances to the image centre, 0 below 2 instances. The `default` protocol drops images
without instances, and measures spread as the RMS distance of the bbox centres to their own
centroid, defined only for >= 2 instances (single-object images are unlabelled for
spread, so spread is no longer a proxy for count); its tertiles are over those images.

Rules the reference left unrecoverable, decided here for both protocols:
- object_category: the category of the largest instance by annotation `area` (ties: lowest
  annotation id); super_category: that category's supercategory.
- caption (the paired text and the lexical source): the caption with the lowest annotation id.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mch.api import Attribute, MchError

from ._corpus import Corpus, Record, ordered_classes, read_json
from ._lexical import lexical_attribute, lexical_labels
from ._media import read_image

COUNT_BINS = ("1", "2-4", "5-10", "11+")
SIZE_CLASSES = ("small", "medium", "large")
SPREAD_CLASSES = ("concentrated", "moderate", "dispersed")
COUNT_VERBALIZERS = {
    "1": ["one object", "a single object"],
    "2-4": ["a few objects", "some objects"],
    "5-10": ["several objects", "a handful of objects"],
    "11+": ["many objects", "lots of objects"],
}
SIZE_VERBALIZERS = {"small": ["small", "tiny"], "medium": ["medium-sized", "mid-sized"], "large": ["large", "big"]}
SPREAD_VERBALIZERS = {
    "concentrated": ["close together", "clustered"],
    "moderate": ["moderately spread out", "somewhat spread out"],
    "dispersed": ["spread out", "scattered"],
}
TERTILES = (33.3, 66.7)

RULES = {
    "object_count": {
        "paper": "non-crowd instances per image, bins 1 (n<=1, including 0) / 2-4 / 5-10 / 11+",
        "default": "non-crowd instances per image, bins 1 / 2-4 / 5-10 / 11+; images without instances dropped",
    },
    "avg_obj_size": {
        "paper": "mean bbox w*h / (W*H) over non-crowd instances (0 without instances); tertiles (np.percentile "
        "33.3, 66.7) over annotated images of the whole annotation file; v<=t1 small, v<=t2 medium, else large",
        "default": "mean bbox w*h / (W*H) over non-crowd instances; tertiles (np.percentile 33.3, 66.7) over "
        "annotated images of the whole annotation file; v<=t1 small, v<=t2 medium, else large",
    },
    "spatial_spread": {
        "paper": "population std of the distances of normalised bbox centres to (0.5, 0.5), 0 below 2 instances; "
        "tertiles over annotated images of the whole file: concentrated / moderate / dispersed",
        "default": "RMS distance of normalised bbox centres to their centroid, only for images with >= 2 "
        "non-crowd instances (others unlabelled); tertiles over those images of the whole file",
    },
    "object_category": {
        p: "category of the largest non-crowd instance by annotation area (ties: lowest annotation id); the "
        "reference's rule is unrecoverable, mch's choice"
        for p in ("default", "paper")
    },
    "super_category": {
        p: "supercategory of the object_category instance (largest non-crowd instance by area)"
        for p in ("default", "paper")
    },
}


def count_bin(n: int) -> str:
    return "1" if n <= 1 else "2-4" if n <= 4 else "5-10" if n <= 10 else "11+"


def tertile_thresholds(values: list[float]) -> tuple[float, float]:
    import numpy as np

    t1, t2 = np.percentile(np.asarray(values, dtype=np.float64), TERTILES)
    return float(t1), float(t2)


def tertile(v: float, thresholds: tuple[float, float], names: tuple[str, str, str]) -> str:
    return names[0] if v <= thresholds[0] else names[1] if v <= thresholds[1] else names[2]


def image_stats(boxes: list[list[float]], width: float, height: float, protocol: str) -> dict[str, Any]:
    """count, size and spread of one image from its non-crowd bboxes [x, y, w, h]."""
    import numpy as np

    n = len(boxes)
    if n == 0:
        return {"count": 0, "size": 0.0, "spread": 0.0 if protocol == "paper" else None}
    b = np.asarray(boxes, dtype=np.float64)
    size = float(np.mean(b[:, 2] * b[:, 3] / (width * height)))
    cx = (b[:, 0] + b[:, 2] / 2) / width
    cy = (b[:, 1] + b[:, 3] / 2) / height
    if n < 2:
        spread = 0.0 if protocol == "paper" else None
    elif protocol == "paper":
        spread = float(np.std(np.hypot(cx - 0.5, cy - 0.5)))
    else:
        spread = float(np.sqrt(np.mean((cx - cx.mean()) ** 2 + (cy - cy.mean()) ** 2)))
    return {"count": n, "size": size, "spread": spread}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class COCO(Corpus):
    name = "coco"
    modality = "vision"
    layout = (
        "a COCO directory holding val2017/*.jpg and annotations/instances_val2017.json + "
        "annotations/captions_val2017.json"
    )
    default_split = "val2017"
    stratify = "object_count"

    def _find_root(self, path: Path) -> Path:
        for cand in (path, path / "coco", path / "COCO"):
            if (cand / "annotations").is_dir():
                return cand
        raise MchError(f"dataset {self.data_name!r}: no annotations/ directory in {path}; expected {self.layout}")

    def _default_split(self) -> str | None:
        """val2017, or the only split whose instances file is present."""
        ann = self.root() / "annotations"
        if (ann / f"instances_{self.default_split}.json").is_file():
            return self.default_split
        have = sorted(p.name[len("instances_") : -len(".json")] for p in ann.glob("instances_*.json"))
        return have[0] if len(have) == 1 else self.default_split

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        root = self.root()
        inst = read_json(
            root / "annotations" / f"instances_{split}.json", f"dataset {self.data_name!r}: instances file"
        )
        caps = read_json(root / "annotations" / f"captions_{split}.json", f"dataset {self.data_name!r}: captions file")
        try:
            images = {int(im["id"]): im for im in inst["images"]}
            cats = {int(c["id"]): c for c in inst["categories"]}
            anns = list(inst["annotations"])
            cap_anns = list(caps["annotations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MchError(
                f"dataset {self.data_name!r}: {root / 'annotations'} files lack the COCO tables "
                f"images/annotations/categories ({exc!r})"
            ) from None
        per_image: dict[int, list[dict]] = {i: [] for i in images}
        problems: dict[int, str] = {}
        for a in anns:
            try:
                img = int(a["image_id"])
            except (KeyError, TypeError, ValueError):
                continue
            if img not in per_image:
                continue
            bbox = a.get("bbox")
            if int(a.get("category_id", -1)) not in cats:
                problems.setdefault(
                    img,
                    f"annotation {a.get('id')} has category_id {a.get('category_id')!r}, "
                    f"which is not in the categories table",
                )
            elif not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                problems.setdefault(img, f"annotation {a.get('id')} has no valid bbox")
            else:
                per_image[img].append(a)
        captions: dict[int, tuple[int, str]] = {}
        for c in cap_anns:
            try:
                img, cid, text = int(c["image_id"]), int(c["id"]), str(c["caption"]).strip()
            except (KeyError, TypeError, ValueError):
                continue
            if text and (img not in captions or cid < captions[img][0]):
                captions[img] = (cid, text)

        stats: dict[int, dict[str, Any]] = {}
        for img, im in images.items():
            objs = [a for a in per_image[img] if not a.get("iscrowd", 0)]
            w, h = float(im.get("width") or 0), float(im.get("height") or 0)
            if w <= 0 or h <= 0:
                problems.setdefault(img, "its width/height in the images table are missing or zero")
                stats[img] = {"count": len(objs), "size": 0.0, "spread": None, "objs": objs}
                continue
            stats[img] = {**image_stats([a["bbox"] for a in objs], w, h, protocol), "objs": objs}
        annotated = [s for i, s in stats.items() if s["count"] > 0 and i not in problems]
        size_t = tertile_thresholds([s["size"] for s in annotated]) if annotated else (0.0, 0.0)
        spread_vals = [s["spread"] for s in annotated if s["spread"] is not None]
        spread_t = tertile_thresholds(spread_vals) if spread_vals else (0.0, 0.0)
        self._extra(split, protocol).update(size_thresholds=size_t, spread_thresholds=spread_t)

        records = []
        img_dir = root / split
        for img in sorted(images):
            im, st = images[img], stats[img]
            if protocol == "default" and st["count"] == 0 and img not in problems:
                continue  # default: an image without instances has no object labels at all
            sid = str(img)
            path = img_dir / str(im.get("file_name", f"{img:012d}.jpg"))
            size = (int(im.get("width") or 0), int(im.get("height") or 0))
            labels = {
                "lexical": "",
                "object_category": "",
                "super_category": "",
                "object_count": "",
                "avg_obj_size": "",
                "spatial_spread": "",
            }
            rec = Record(
                sid,
                captions.get(img, (0, ""))[1],
                labels,
                {"image": sid},
                partial(read_image, path, sid, size),
                path=str(path),
                meta={"count": st["count"], "avg_obj_size_value": st["size"], "spread_value": st["spread"]},
            )
            if img in problems:
                rec.fail(problems[img])
            elif img not in captions:
                rec.fail(f"it has no caption in captions_{split}.json")
            else:
                labels["object_count"] = count_bin(st["count"])
                if st["count"] > 0 or protocol == "paper":
                    labels["avg_obj_size"] = tertile(st["size"], size_t, SIZE_CLASSES)
                if st["spread"] is not None:
                    labels["spatial_spread"] = tertile(st["spread"], spread_t, SPREAD_CLASSES)
                if st["objs"]:
                    main = min(st["objs"], key=lambda a: (-float(a.get("area", 0.0)), int(a.get("id", 0))))
                    cat = cats[int(main["category_id"])]
                    labels["object_category"] = str(cat["name"])
                    labels["super_category"] = str(cat.get("supercategory", ""))
                    rec.meta["main_annotation"] = main.get("id")
            records.append(rec)
        usable = [r for r in records if r.error is None]
        lex, vocab = lexical_labels([r.text for r in usable], protocol)
        self._extra(split, protocol)["vocab"] = vocab
        for r, lab in zip(usable, lex, strict=True):
            r.labels["lexical"] = lab
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        ok = [r for r in records if r.error is None]
        extra = self._extra(self._split, protocol)

        def present(attr: str, order: tuple[str, ...] | None = None) -> list[str]:
            return ordered_classes((r.labels[attr] for r in ok), list(order) if order else None)

        cats, supers = present("object_category"), present("super_category")
        t_size, t_spread = extra["size_thresholds"], extra["spread_thresholds"]
        rules = {k: dict(v) for k, v in RULES.items()}
        for p in rules["avg_obj_size"]:
            rules["avg_obj_size"][p] += f" (this file: t1={t_size[0]:.6g}, t2={t_size[1]:.6g})" if p == protocol else ""
            rules["spatial_spread"][p] += (
                f" (this file: t1={t_spread[0]:.6g}, t2={t_spread[1]:.6g})" if p == protocol else ""
            )

        def attr(
            name: str, classes: list[str], verb: dict[str, list[str]], query: str, text: bool, desc: str
        ) -> Attribute:
            return Attribute(
                name,
                classes,
                {c: verb[c] for c in classes},
                query,
                group_key="image",
                text_describable=text,
                description=desc,
                label_rule=rules[name],
            )

        counts, sizes, spreads = (
            present("object_count", COUNT_BINS),
            present("avg_obj_size", SIZE_CLASSES),
            present("spatial_spread", SPREAD_CLASSES),
        )
        return {
            "lexical": lexical_attribute(
                [r.labels["lexical"] for r in ok],
                extra["vocab"],
                protocol,
                "The image is described by the word",
                "image",
                "caption",
            ),
            "object_category": attr(
                "object_category",
                cats,
                {c: [f"{article(c)} {c}", f"the {c}"] for c in cats},
                "The main object in the image is",
                True,
                "category of the largest object",
            ),
            "super_category": attr(
                "super_category",
                supers,
                {s: [s] for s in supers},
                "The main object in the image is a kind of",
                True,
                "supercategory of the largest object",
            ),
            "object_count": attr(
                "object_count", counts, COUNT_VERBALIZERS, "The image contains", False, "number of objects, binned"
            ),
            "avg_obj_size": attr(
                "avg_obj_size",
                sizes,
                SIZE_VERBALIZERS,
                "The objects in the image are",
                False,
                f"mean relative bbox area, tertiles t1={t_size[0]:.4g} t2={t_size[1]:.4g}",
            ),
            "spatial_spread": attr(
                "spatial_spread",
                spreads,
                SPREAD_VERBALIZERS,
                "The objects in the image are",
                False,
                f"spread of object centres, tertiles t1={t_spread[0]:.4g} t2={t_spread[1]:.4g}",
            ),
        }
