"""Helpers shared by the transformers-based model plugins (plugins/models/_hf_common.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mch.api import MchError


def qwen2vl_release_files(out: Path) -> Path:
    """Processor files laid out as a Qwen2-VL release has them (tokenizer files and a
    preprocessor_config.json naming Qwen2VLImageProcessor / Qwen2VLProcessor), whose processor
    includes a video processor."""
    from transformers import Qwen2VLImageProcessorPil

    from mch.plugins.models.tiny import bpe_tokenizer
    from mch.plugins.models.tiny_hf.qwen import QWEN_VL_SPECIALS

    tok = bpe_tokenizer(
        QWEN_VL_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    out.mkdir(parents=True)
    tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(out)
    cfg = json.loads((out / "preprocessor_config.json").read_text())
    cfg.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor")
    (out / "preprocessor_config.json").write_text(json.dumps(cfg))
    return out


def test_a_processor_that_needs_torchvision_is_one_sentence_with_the_way_out(tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    from mch.plugins.models._hf_common import load_processor, needs_torchvision

    d = qwen2vl_release_files(tmp_path / "qwen2vl")
    plugin = SimpleNamespace(spec=SimpleNamespace(name="qwen2vl"), trust_remote_code=False)
    if is_torchvision_available():  # nothing to explain where transformers can build it
        assert load_processor(plugin, AutoProcessor, d, "Qwen2-VL processor").video_processor is not None
        return
    with pytest.raises(MchError, match="video processor, which transformers builds only with torchvision") as err:
        load_processor(plugin, AutoProcessor, d, "Qwen2-VL processor")
    assert "AutoImageProcessor" in str(err.value) and "\n" not in str(err.value)
    # building the processor by hand fails too, with transformers' obscure AttributeError: recognised
    ip = AutoImageProcessor.from_pretrained(str(d), local_files_only=True)
    with pytest.raises(Exception) as built:
        Qwen2VLProcessor(image_processor=ip, tokenizer=AutoTokenizer.from_pretrained(str(d)), video_processor=None)
    assert needs_torchvision(built.value)
    # the way out the sentence names: the PIL image processor alone, with the grid for the image tokens
    assert type(ip).__name__ == "Qwen2VLImageProcessorPil"
    x = ip(images=[Image.fromarray(np.zeros((60, 90, 3), np.uint8))], return_tensors="pt")
    assert x["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_a_checkpoint_of_another_architecture_is_one_sentence_before_loading(tmp_path):
    """`--model llava --checkpoint <a Qwen2-Audio checkpoint>` (and the reverse) is one sentence
    naming both architectures, raised where the store key is formed (before anything loads);
    it was an AttributeError from deep in the processor ('Qwen2AudioProcessor' object has no
    attribute 'image_token'). A checkpoint of the right architecture passes."""
    from mch.api import load_entry
    from mch.manager import get_registry
    from mch.plugins.models import tiny
    from mch.store_key import plugin_fingerprint

    ck = {"llava": tiny.make_tiny_llava(tmp_path / "llava"), "qwen2audio": tiny.make_tiny_qwen2audio(tmp_path / "q2a")}
    reg = get_registry()
    for model, other in (("llava", "qwen2audio"), ("qwen2audio", "llava")):
        spec = reg.get("model", model)
        plugin = load_entry(spec.entry)(spec, checkpoint=str(ck[other]))
        with pytest.raises(MchError, match=rf"model '{model}': --checkpoint .* is a \w+ checkpoint, not \w+") as err:
            plugin_fingerprint(plugin)
        assert "\n" not in str(err.value)
        assert plugin.module is None  # refused before loading
        ok = load_entry(spec.entry)(spec, checkpoint=str(ck[model]))
        assert plugin_fingerprint(ok).startswith("sha256:")
