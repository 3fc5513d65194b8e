"""Tiny, randomly initialised checkpoints of the generic plugin's families (`hf_families`),
saved in their releases' on-disk layout (config + safetensors + tokenizer + processor files:
preprocessor_config.json, chat_template.jinja, video_preprocessor_config.json where the
release has a video processor), for tests and offline runs: `make_tiny_hf(family, out_dir)`.

Two decoder layers of width 64, vision towers of width 32, a byte-level BPE tokenizer with
the family's special tokens, the release's processor class with its PIL image processor,
and a chat template of the release's shape (system/user/assistant turns, the media marker
where the release puts it). Numbers from these models mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tiny import bpe_tokenizer

TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{IMAGE}{% elif content['type'] == 'audio' %}{AUDIO}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml(image: str = "", audio: str = "") -> str:
    return CHATML.replace("{IMAGE}", image).replace("{AUDIO}", audio)


def _save(
    out: Path,
    model: Any,
    tokenizer: Any,
    parts: dict[str, Any],
    processor_class: str,
    chat_template: str | None,
    processor_kwargs: dict[str, Any] | None = None,
    video: dict[str, Any] | None = None,
) -> Path:
    """The release layout: weights and config, tokenizer files, each sub-processor's
    preprocessor config naming the processor class, the chat template, processor kwargs in
    processor_config.json, and the video processor's config (which mch never loads)."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    nested: dict[str, Any] = {}
    if len(parts) == 1:  # one sub-processor: preprocessor_config.json, as transformers 4 saved releases
        (part,) = parts.values()
        part.save_pretrained(out)
        cfg_file = out / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["processor_class"] = processor_class
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    else:  # several: nested in processor_config.json, as transformers 5 saves them
        nested = {name: part.to_dict() for name, part in parts.items()}
        processor_kwargs = {**(processor_kwargs or {}), **nested}
    if chat_template is not None:
        (out / "chat_template.jinja").write_text(chat_template)
    if processor_kwargs:
        (out / "processor_config.json").write_text(
            json.dumps({**processor_kwargs, "processor_class": processor_class}, indent=2) + "\n"
        )
    if video is not None:
        (out / "video_preprocessor_config.json").write_text(
            json.dumps({**video, "processor_class": processor_class}, indent=2) + "\n"
        )
    from .tiny import mark_smoke

    return mark_smoke(out)  # random weights: runs on it are labelled smoke runs, never a model's numbers


def _ids(tok: Any, *names: str) -> dict[str, int]:
    return {n: tok.convert_tokens_to_ids(n) for n in names}


# --------------------------------------------------------------------------- Qwen2-VL family


def _qwen_vl(out: Path, seed: int, version: str) -> Path:
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    # patch 14, 2x2 merge: one token per 28 px square; 1-6 tokens for the tiny samples
    ip = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 6, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = dict(
        TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    vision: dict[str, Any] = dict(
        depth=2, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
    )
    if version == "qwen2_vl":
        vision.update(embed_dim=32)
        cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2VLForConditionalGeneration, "Qwen2VLProcessor"
    elif version == "qwen2_5_vl":
        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1]
        )
        cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor"
    else:  # qwen3_vl: patch 16, deepstack from vision layer 0
        ip = Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=32 * 32 * 6, patch_size=16, merge_size=2, temporal_patch_size=2
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        text.update(
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        )
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen3VLForConditionalGeneration, "Qwen3VLProcessor"
    torch.manual_seed(seed)
    video = {**ip.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    video.pop("image_processor_type", None)
    return _save(
        out,
        cls(cfg),
        tok,
        {"image_processor": ip},
        proc,
        chatml(image="<|vision_start|><|image_pad|><|vision_end|>"),
        video=video,
    )


GLM_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|begin_of_image|><|image|><|end_of_image|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _glm4v(out: Path, seed: int) -> Path:
    """GLM-4.1V (`zai-org/GLM-4.1V-9B-Thinking`): ViT + 2x2 conv + merger, GLM-4 decoder, M-RoPE."""
    import torch
    import transformers
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    specials = [
        "<|endoftext|>",
        "[gMASK]",
        "<sop>",
        "<|user|>",
        "<|assistant|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
        "<|video|>",
    ]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    ip = Glm4vImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 8}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = _ids(
        tok,
        "<|image|>",
        "<|video|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
    )
    text = dict(
        TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "partial_rotary_factor": 1.0,
        },
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        image_size=56,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    cfg = transformers.Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    video = {**ip.to_dict(), "video_processor_type": "Glm4vVideoProcessor"}
    video.pop("image_processor_type", None)
    return _save(
        out,
        transformers.Glm4vForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "Glm4vProcessor",
        GLM_TEMPLATE,
        video=video,
    )


VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# anyres grids of 42 px tiles: a 1x1, 1x2, 2x1 or 2x2 layout plus the base tile
PINPOINTS = [[42, 42], [42, 84], [84, 42], [84, 84]]


def _llava_next(out: Path, seed: int) -> Path:
    """LLaVA-NeXT (`llava-hf/llava-v1.6-vicuna-7b-hf`): CLIP (3 layers, feature layer -2, CLS
    dropped), anyres tiles of 42 px, GELU MLP, Llama with BOS `<s>`."""
    import torch
    import transformers
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42}, image_grid_pinpoints=PINPOINTS
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
        projection_dim=16,
    )
    text = transformers.LlamaConfig(
        **TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=9,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    return _save(
        out,
        transformers.LlavaNextForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "LlavaNextProcessor",
        VICUNA_TEMPLATE,
        processor_kwargs={
            "patch_size": 14,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
            "image_token": "<image>",
        },
    )


def _llava_onevision(out: Path, seed: int) -> Path:
    """LLaVA-OneVision (`llava-hf/llava-onevision-qwen2-7b-ov-hf`): SigLIP (last layer, all
    patches), anyres-max-9 tiles of 42 px, GELU MLP, Qwen2 with ChatML."""
    import torch
    import transformers
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    ip = LlavaOnevisionImageProcessorPil(size={"height": 42, "width": 42}, image_grid_pinpoints=PINPOINTS)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=42, patch_size=14
    )
    text = transformers.Qwen2Config(
        **TEXT, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 42, "width": 42}}
    return _save(
        out,
        transformers.LlavaOnevisionForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "LlavaOnevisionProcessor",
        chatml(image="<image>\n"),
        processor_kwargs={"num_image_tokens": 9, "vision_feature_select_strategy": "full"},
        video=video,
    )


def _turns(user: str, end: str, assistant: str, image: str, bos: str = "") -> str:
    """A one-turn chat template: `user`, the content (image marker, text), `end`, then the
    generation prompt `assistant`."""
    return (
        bos + "{% for message in messages %}{% if message['role'] == 'user' %}" + user + "{% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        + image
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        + end
        + "{% endfor %}{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )


def _aya_vision(out: Path, seed: int) -> Path:
    """Aya Vision (`CohereLabs/aya-vision-8b`): SigLIP, 2x2 pixel shuffle + SwiGLU projector,
    Cohere2 decoder; 56 px tiles (4 tokens each) plus a global tile."""
    import torch
    import transformers
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = [
        "<PAD>",
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ]
    tok = bpe_tokenizer(
        specials, bos="<BOS_TOKEN>", bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>", pad_token="<PAD>"
    )
    ip = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1, max_patches=4)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.Cohere2Config(
        **TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        sliding_window=4096,
    )
    cfg = transformers.AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        downsample_factor=2,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    template = _turns(
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "<image>",
    )
    return _save(
        out,
        transformers.AyaVisionForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "AyaVisionProcessor",
        template,
        processor_kwargs={"patch_size": 14, "img_size": 56, "downsample_factor": 2},
    )


def _mistral3(out: Path, seed: int) -> Path:
    """Mistral Small 3.1 (`mistralai/Mistral-Small-3.1-24B-Instruct-2503`): Pixtral encoder,
    RMSNorm + 2x2 patch merger + MLP projector, Mistral decoder; [IMG] per merged patch,
    [IMG_BREAK] per row, [IMG_END]."""
    import torch
    import transformers
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"]
    tok = bpe_tokenizer(specials, bos="<s>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    ip = PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size=14)
    vision = transformers.PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
        image_size=56,
        patch_size=14,
    )
    text = transformers.MistralConfig(
        **TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        head_dim=16,
    )
    cfg = transformers.Mistral3Config(
        vision_config=vision,
        text_config=text,
        spatial_merge_size=2,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return _save(
        out,
        transformers.Mistral3ForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "PixtralProcessor",
        _turns("[INST]", "[/INST]", "", "[IMG]"),
        processor_kwargs={
            "patch_size": 14,
            "spatial_merge_size": 2,
            "image_token": "[IMG]",
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
        },
    )


def _internvl(out: Path, seed: int) -> Path:
    """InternVL 3 (`OpenGVLab/InternVL3-1B-hf`): InternViT, pixel shuffle + LayerNorm-MLP
    projector, Qwen2 decoder; 56 px tiles of 4 tokens (<img> ... </img>) plus a thumbnail."""
    import torch
    import transformers
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ip = GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    vision = transformers.InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.Qwen2Config(
        **TEXT, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    cfg = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_seq_length=4,
        downsample_ratio=0.5,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    video = {"video_processor_type": "InternVLVideoProcessor", "size": {"height": 56, "width": 56}}
    return _save(
        out,
        transformers.InternVLForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "InternVLProcessor",
        chatml(image="<IMG_CONTEXT>\n"),
        processor_kwargs={"image_seq_length": 4},
        video=video,
    )


def _gemma3(out: Path, seed: int) -> Path:
    """Gemma 3 (`google/gemma-3-4b-it`): SigLIP (56 px, 4x4 patches), average pool to 2x2
    tokens + RMSNorm + linear, Gemma 3 decoder (sliding + global layers), BOS `<bos>`."""
    import torch
    import transformers
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tok = bpe_tokenizer(
        specials,
        bos="<bos>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ip = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        vision_use_head=False,
    )
    text = transformers.Gemma3TextConfig(
        **{**TEXT, "num_hidden_layers": 2},
        head_dim=16,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
    )
    ids = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    cfg = transformers.Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # transformers initialises the projection to zeros: the image would not reach the LLM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    template = _turns("<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n", "<start_of_image>")
    return _save(
        out, model, tok, {"image_processor": ip}, "Gemma3Processor", template, processor_kwargs={"image_seq_length": 4}
    )


def _idefics3(out: Path, seed: int, smol: bool = False) -> Path:
    """Idefics3 (`HuggingFaceM4/Idefics3-8B-Llama3`) / SmolVLM (`HuggingFaceTB/SmolVLM-Instruct`):
    SigLIP-style encoder on 56 px tiles (image split into up to 2x2 tiles + a global view),
    connector = pixel shuffle (scale 2) + linear, Llama decoder; `<row_i_col_j>` tile tags."""
    import torch
    import transformers

    tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = [
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<end_of_utterance>",
        "<video>",
        *tags,
    ]
    tok = bpe_tokenizer(
        specials,
        bos="<|begin_of_text|>",
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    kw = dict(size={"longest_edge": 112}, max_image_size={"longest_edge": 56}, do_image_splitting=True)
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as IP
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as IP
    ip = IP(**kw)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.LlamaConfig(
        **TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    template = _turns("User:", "<end_of_utterance>\n", "Assistant:", "<image>")
    torch.manual_seed(seed)
    if smol:
        cfg = transformers.SmolVLMConfig(
            vision_config=vision, text_config=text, scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>")
        )
        video = {"video_processor_type": "SmolVLMVideoProcessor", "size": {"longest_edge": 112}}
        return _save(
            out,
            transformers.SmolVLMForConditionalGeneration(cfg),
            tok,
            {"image_processor": ip},
            "SmolVLMProcessor",
            template,
            processor_kwargs={"image_seq_len": 4},
            video=video,
        )
    cfg = transformers.Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>")
    )
    return _save(
        out,
        transformers.Idefics3ForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "Idefics3Processor",
        template,
        processor_kwargs={"image_seq_len": 4},
    )


def _qwen2_5_omni(out: Path, seed: int) -> Path:
    """The Qwen2.5-Omni thinker (`Qwen2_5OmniThinkerForConditionalGeneration`): Whisper-style
    audio tower (2x avg pool, then `proj` into the LLM width), a vision tower it does not use
    here, Qwen2 decoder with time-aligned M-RoPE; 128-bin Whisper features, clips padded to 30 s."""
    import torch
    import transformers
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|AUDIO|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|IMAGE|>",
        "<|VIDEO|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
    ]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
    )
    fe = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, return_attention_mask=True
    )
    ip = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 6, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = _ids(
        tok,
        "<|AUDIO|>",
        "<|IMAGE|>",
        "<|VIDEO|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
        "<|im_start|>",
    )
    audio = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        output_dim=64,
        n_window=50,
        max_source_positions=1500,
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        fullatt_block_indexes=[0],
        window_size=56,
    )
    text = dict(
        TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    cfg = transformers.Qwen2_5OmniThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=ids["<|im_start|>"],
    )
    torch.manual_seed(seed)
    video = {**ip.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    video.pop("image_processor_type", None)
    return _save(
        out,
        transformers.Qwen2_5OmniThinkerForConditionalGeneration(cfg),
        tok,
        {"feature_extractor": fe, "image_processor": ip},
        "Qwen2_5OmniProcessor",
        chatml(audio="<|audio_bos|><|AUDIO|><|audio_eos|>", image="<|vision_bos|><|IMAGE|><|vision_eos|>"),
        video=video,
    )


BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "qwen2_5_omni": _qwen2_5_omni,
    "aya_vision": _aya_vision,
    "mistral3": _mistral3,
    "internvl": _internvl,
    "gemma3": _gemma3,
    "idefics3": _idefics3,
    "smolvlm": lambda out, seed: _idefics3(out, seed, smol=True),
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "glm4v": _glm4v,
    "qwen2_vl": lambda out, seed: _qwen_vl(out, seed, "qwen2_vl"),
    "qwen2_5_vl": lambda out, seed: _qwen_vl(out, seed, "qwen2_5_vl"),
    "qwen3_vl": lambda out, seed: _qwen_vl(out, seed, "qwen3_vl"),
}


def make_tiny_hf(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint of `family` (a name in `hf_families.FAMILIES`) in `out_dir`."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; have {', '.join(BUILDERS)}")
    return BUILDERS[family](Path(out_dir), seed)
