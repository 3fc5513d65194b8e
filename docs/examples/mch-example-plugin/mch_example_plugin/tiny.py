"""A tiny random PaliGemma saved exactly like the release (save_pretrained of the model and
its processor), for tests: same classes, a locally trained tokenizer with the model's
special tokens. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def make_tiny_paligemma(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(
        ["caption en", "a photo of a dog on the grass", "the answer is yes", "a red bus"] * 4, trainer
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    images = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    images.image_seq_length = 4  # (28 / 14) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tok)  # adds PaliGemma's <loc>/<seg> tokens
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=64,
    )
    text = GemmaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=len(tok),
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=processor.image_token_id,
        projection_dim=64,
    )
    torch.manual_seed(seed)
    PaliGemmaForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    from mch.plugins.models.tiny import mark_smoke

    return mark_smoke(out)  # random weights: mch labels runs on it as smoke runs, never a model's numbers


if __name__ == "__main__":
    import sys

    print(make_tiny_paligemma(sys.argv[1] if len(sys.argv) > 1 else "tiny-paligemma"))
