"""COCO and GQA loaders: the reference's label rules, mch's decided rules, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mch.api import DatasetSpec, MchError, SampleError
from mch.plugins.attributes import synth
from mch.plugins.attributes.coco import COCO, count_bin, image_stats
from mch.plugins.attributes.gqa import GQA


def spec(name: str) -> DatasetSpec:
    return DatasetSpec(name=name, entry="x:y", modality="vision", attributes=())


def by_id(samples):
    return {s.sample_id: s for s in samples}


def load_error(sample) -> SampleError:
    with pytest.raises(SampleError) as ei:
        _ = sample.media
    return ei.value


# --------------------------------------------------------------------------- hand-made COCO files


def write_coco(root, images, anns, caps, cats=None):
    cats = cats or [
        {"id": 1, "name": "dog", "supercategory": "animal"},
        {"id": 2, "name": "cat", "supercategory": "animal"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(root / "val2017" / im["file_name"])
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": caps}))


@pytest.fixture
def handmade(tmp_path):
    """Images 1-6: two objects each, mean relative bbox area 0.01 ... 0.06; image 7: only a
    crowd annotation; image 8: nothing. 100x100 pixels."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 100, "height": 100} for i in range(1, 9)]
    anns, aid = [], 1
    for i in range(1, 7):
        # both boxes are 10 x 10i: relative bbox area i/100; annotation areas 30 and 60 (not the bbox)
        for x, y, w, h, cat, area in ((5, 5, 10, 10 * i, 1, 30.0), (60, 60, 10, 10 * i, 2 + (i % 2), 60.0)):
            anns.append(
                {"id": aid, "image_id": i, "category_id": cat, "bbox": [x, y, w, h], "area": area, "iscrowd": 0}
            )
            aid += 1
    anns.append({"id": aid, "image_id": 7, "category_id": 1, "bbox": [0, 0, 90, 90], "area": 8000.0, "iscrowd": 1})
    caps = [{"id": 100 + 2 * i, "image_id": i, "caption": f"Two dogs number {i}."} for i in range(1, 9)] + [
        {"id": 10 + i, "image_id": i, "caption": f"A cat and a car {i}."} for i in range(1, 9)
    ]
    write_coco(tmp_path / "coco", images, anns, caps)
    return tmp_path / "coco"


def test_count_bins_and_spread_definitions():
    assert [count_bin(n) for n in (0, 1, 2, 4, 5, 7, 10, 11, 40)] == [
        "1",
        "1",
        "2-4",
        "2-4",
        "5-10",
        "5-10",
        "5-10",
        "11+",
        "11+",
    ]
    ring = [[20, 40, 20, 20], [60, 40, 20, 20]]  # centres (0.3, 0.5) and (0.7, 0.5) in 100x100
    assert image_stats(ring, 100, 100, "paper")["spread"] == pytest.approx(0.0)  # std of radii: 0
    assert image_stats(ring, 100, 100, "default")["spread"] == pytest.approx(0.2)  # RMS to centroid
    one = [[10, 10, 20, 20]]
    assert image_stats(one, 100, 100, "paper") == {"count": 1, "size": pytest.approx(0.04), "spread": 0.0}
    assert image_stats(one, 100, 100, "default")["spread"] is None
    assert image_stats([], 100, 100, "paper") == {"count": 0, "size": 0.0, "spread": 0.0}


def test_tertiles_over_annotated_images_crowd_dropped(handmade):
    ds = COCO(spec("coco"), path=str(handmade))
    paper = by_id(ds.samples(None, None, 0, "paper"))
    # sizes 0.01..0.06 over images 1-6 only (7 = crowd only and 8 = empty are not "annotated"):
    # np.percentile 33.3 -> 0.02665, 66.7 -> 0.04335
    rule = ds.attributes("paper")["avg_obj_size"].label_rule["paper"]
    assert "t1=0.02665" in rule and "t2=0.04335" in rule
    assert [paper[str(i)].labels["avg_obj_size"] for i in range(1, 7)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    for i in ("7", "8"):  # the reference: no instances -> count "1", size small, spread concentrated
        assert paper[i].labels["object_count"] == "1" and paper[i].labels["avg_obj_size"] == "small"
        assert paper[i].labels["spatial_spread"] == "concentrated" and paper[i].labels["object_category"] == ""
        assert paper[i].meta["count"] == 0
    assert all(paper[str(i)].labels["object_count"] == "2-4" for i in range(1, 7))
    default = by_id(ds.samples(None, None, 0, "default"))
    assert sorted(default, key=int) == [str(i) for i in range(1, 7)]  # images without instances dropped
    assert [default[str(i)].labels["avg_obj_size"] for i in range(1, 7)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    assert ds.attributes("default")["object_count"].classes == ["2-4"]


def test_category_by_largest_area_and_caption_by_lowest_id(handmade):
    ds = COCO(spec("coco"), path=str(handmade))
    s = by_id(ds.samples(None, None, 0, "default"))
    # second annotation has area 60 > 30: cat (even i: 2) or car (odd i: 3)
    assert s["2"].labels["object_category"] == "cat" and s["2"].labels["super_category"] == "animal"
    assert s["3"].labels["object_category"] == "car" and s["3"].labels["super_category"] == "vehicle"
    assert s["2"].text == "A cat and a car 2."  # caption id 12 < 104
    assert s["2"].labels["lexical"] == "cat"
    assert by_id(ds.samples(None, None, 0, "paper"))["2"].labels["lexical"] == "a"
    a = ds.attributes("default")
    assert a["object_category"].verbalizers["car"] == ["a car", "the car"]
    assert "largest" in a["object_category"].label_rule["default"]
    assert a["object_count"].verbalizers["2-4"][0] == "a few objects"
    assert all(x.group_key == "image" for x in a.values())
    assert s["2"].media.size == (100, 100)


def test_coco_bad_inputs(tmp_path):
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 50, "height": 40} for i in range(1, 6)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100.0, "iscrowd": 0}
        for i in range(1, 6)
    ]
    anns[3]["category_id"] = 99  # image 4: label outside the categories
    caps = [{"id": i, "image_id": i, "caption": "A dog."} for i in (1, 2, 3, 4)]  # image 5: no caption
    write_coco(tmp_path / "c", images, anns, caps)
    (tmp_path / "c" / "val2017" / f"{1:012d}.jpg").write_bytes(b"not a jpeg")  # unreadable
    (tmp_path / "c" / "val2017" / f"{2:012d}.jpg").unlink()  # missing file
    Image.new("RGB", (64, 64)).save(tmp_path / "c" / "val2017" / f"{3:012d}.jpg")  # wrong size
    s = by_id(COCO(spec("coco"), path=str(tmp_path / "c")).samples(None, None, 0, "default"))
    for sid, words in (
        ("1", "cannot be read"),
        ("2", "does not exist"),
        ("3", "64x64"),
        ("4", "category_id 99"),
        ("5", "no caption"),
    ):
        err = load_error(s[sid])
        path = str(tmp_path / "c" / "val2017" / f"{int(sid):012d}.jpg")
        assert err.sample_id == sid and err.path == path and words in str(err) and path in str(err), (sid, str(err))
    with pytest.raises(MchError, match="captions file"):
        (tmp_path / "c" / "annotations" / "captions_val2017.json").unlink()
        COCO(spec("coco"), path=str(tmp_path / "c")).attributes("default")


# --------------------------------------------------------------------------- generated COCO corpus


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return synth.make(
        "coco", tmp_path_factory.mktemp("v") / "coco", counts=[7, 1, 0, 12, 3, 5, 2, 11, 4], crowd_every=5
    )


def test_generated_scenes_give_exact_labels(scenes):
    truth = {str(t["image_id"]): t for t in synth.read_manifest(scenes)["images"]}
    ds = COCO(spec("coco"), path=str(scenes))
    s = by_id(ds.samples(None, None, 0, "default"))
    assert s["1"].labels["object_count"] == "5-10"  # 7 objects
    assert s["2"].labels["object_count"] == "1"
    assert "3" not in s and truth["3"]["count"] == 0  # default drops the empty scene
    assert s["4"].labels["object_count"] == "11+"
    assert truth["5"]["crowd"] and s["5"].labels["object_count"] == "2-4"  # its crowd group is not counted
    assert s["5"].meta["count"] == 3
    inst = json.loads((scenes / "annotations" / "instances_val2017.json").read_text())
    assert any(a["iscrowd"] == 1 and a["image_id"] == 5 for a in inst["annotations"])
    for sid, t in truth.items():
        if sid in s:
            objs = [a for a in inst["annotations"] if a["image_id"] == int(sid) and not a["iscrowd"]]
            assert len(objs) == t["count"]
            main = max(objs, key=lambda a: a["area"])
            name = next(c["name"] for c in inst["categories"] if c["id"] == main["category_id"])
            assert s[sid].labels["object_category"] == name
            assert name in {o["category"] for o in t["objects"]}
            for a in objs:  # every object lies inside the frame
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 120
    assert by_id(ds.samples(None, None, 0, "paper"))["3"].labels["object_count"] == "1"
    im = s["1"].media
    assert im.mode == "RGB" and im.size == (160, 120)
    assert {"5-10", "1", "11+", "2-4"} == set(ds.attributes("default")["object_count"].classes)
    assert len(ds.samples(None, 4, 0, "default")) == 4


def test_coco_truncated_jpeg(scenes, tmp_path):
    root = shutil.copytree(scenes, tmp_path / "coco")
    f = root / "val2017" / f"{4:012d}.jpg"
    f.write_bytes(f.read_bytes()[:400])
    err = load_error(by_id(COCO(spec("coco"), path=str(root)).samples(None, None, 0, "default"))["4"])
    assert err.sample_id == "4" and err.path == str(f)


# --------------------------------------------------------------------------- GQA


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    return synth.make("gqa", tmp_path_factory.mktemp("g") / "gqa", images=4)


def test_gqa_labels_exact(gqa):
    qs = json.loads((gqa / "val_balanced_questions.json").read_text())
    ds = GQA(spec("gqa"), path=str(gqa))
    s = by_id(ds.samples(None, None, 0, "default"))
    assert len(s) == 20 and sorted(s) == sorted(qs)
    for qid, q in qs.items():
        assert s[qid].labels == {"answer": q["answer"], "question_type": q["types"]["structural"]}
        assert s[qid].text == q["question"] == s[qid].meta["question"]
        assert s[qid].groups["image"] == q["imageId"]
    a = ds.attributes("default")
    assert a["question_type"].classes == ["verify", "query", "choose", "logical", "compare"]
    assert "yes" in a["answer"].classes and a["answer"].group_key == "image"
    lim = ds.samples(None, 5, 1, "default")
    assert sorted(x.labels["question_type"] for x in lim) == sorted(a["question_type"].classes)
    assert s[next(iter(qs))].media.size == (160, 120)


def test_gqa_bad_inputs(gqa, tmp_path):
    root = shutil.copytree(gqa, tmp_path / "gqa")
    qfile = root / "val_balanced_questions.json"
    qs = json.loads(qfile.read_text())
    first, second = sorted(qs)[:2]
    del qs[first]["answer"]
    qs[second]["imageId"] = "999"
    qfile.write_text(json.dumps(qs))
    s = by_id(GQA(spec("gqa"), path=str(root)).samples(None, None, 0, "default"))
    assert "no answer" in str(load_error(s[first]))
    err = load_error(s[second])
    assert err.path == str(root / "images" / "999.jpg") and "does not exist" in str(err)
