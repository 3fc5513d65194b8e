"""Tiny, randomly initialised checkpoints of the paper's models, saved in their real release
formats, for tests, the CLI and end-to-end analysis runs offline (`make_tiny_<name>(out_dir)`).

Numbers from these models mean nothing; they exist so the real loading, preprocessing,
pooling and scoring code runs on every machine in seconds. Each builder marks its
checkpoint's config.json (`mark_smoke`): runs on it record `model.smoke: true`, and the
leaderboard never shows them as a model's measurement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def mark_smoke(checkpoint_dir: str | Path) -> Path:
    """Mark a random-weight checkpoint as such in its config.json (`mch.checkpoints.SMOKE_KEY`)."""
    from mch.checkpoints import SMOKE_KEY

    d = Path(checkpoint_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg[SMOKE_KEY] = "random weights built by mch.plugins.models.tiny: numbers from this checkpoint measure no model"
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


# --------------------------------------------------------------------------- Ultravox

# The chat template Llama-3.1-8B-Instruct ships (and Ultravox's Llama-3.1 checkpoints with it).
LLAMA31_CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
]

_ULTRAVOX_CORPUS = [
    "Cutting Knowledge Date: December 2023",
    "Today Date: 26 Jul 2024",
    "system user assistant ipython",
    "Describe this audio.",
    "Listen to the audio and describe it.",
    "Transcribe the speech.",
    "The speaker sounds angry, happy, sad, neutral, fearful, disgusted, calm or surprised.",
    "The speaker is a man or a woman.",
    "The sound is a dog, a rooster, rain, a siren, a clock or an engine.",
    "The word is cat, dog, bird, house, tree, water, fire or stone.",
    "It's eleven o'clock.",
    "That is exactly what happened.",
    "I'm on my way to the meeting.",
    "Don't forget a jacket.",
    "The quick brown fox jumps over the lazy dog.",
    "she had your dark suit in greasy wash water all year",
    "What emotion is the speaker expressing? Answer with one word.",
    "0 1 2 3 4 5 6 7 8 9 10 100",
    "a an the of and to in is was for on with as at by",
]


def _llama3_tokenizer(vocab_size: int = 420) -> Any:
    """A byte-level BPE trained on a few sentences, with Llama-3's special tokens, BOS added
    like Llama-3's tokenizer.json does, and the Llama-3.1-Instruct chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLAMA3_SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_ULTRAVOX_CORPUS * 4, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA31_CHAT_TEMPLATE
    )


def make_tiny_ultravox(
    out_dir: str | Path, layout: str = "split", projector_ln_mid: bool = True, seed: int = 0
) -> Path:
    """A tiny Ultravox checkpoint (Whisper encoder 2 layers x 32, Llama 2 layers x 64) in the
    release's on-disk format; returns the directory to pass as `--checkpoint`.

    `layout="split"` is how the v0.5/v0.6 releases ship: the Ultravox directory holds the
    projector and the (fine-tuned) Whisper encoder, and its config names the Llama base
    checkpoint by `text_model_id` (here the local `llama/` directory beside it) and the
    Whisper one by `audio_model_id` (`whisper/`, a full WhisperForConditionalGeneration
    save, whose preprocessor config the processor uses). `layout="full"` puts every weight
    in the Ultravox directory with embedded `audio_config`/`text_config`.
    `projector_ln_mid=False` gives the v0.4 projector (RMSNorm after the second linear)."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from mch.plugins.models.ultravox import ProjectorShape, UltravoxProjector

    if layout not in ("split", "full"):
        raise ValueError(f"layout must be 'split' or 'full', not {layout!r}")
    out = Path(out_dir)
    root = out / "ultravox"
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = _llama3_tokenizer()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    text_cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eot,
        initializer_range=0.1,
    )
    llm = LlamaForCausalLM(text_cfg)
    audio_cfg = WhisperConfig(
        vocab_size=64,
        num_mel_bins=128,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    whisper = WhisperForConditionalGeneration(audio_cfg)
    encoder = whisper.model.encoder
    shape = ProjectorShape(
        d_audio=32,
        d_llm=64,
        hidden_size=96,
        stack_factor=8,
        projector_act="swiglu",
        projector_ln_mid=projector_ln_mid,
        norm_init=0.4,
    )
    projector = UltravoxProjector(shape)
    # random norm weights, so a wrong load order shows up
    for p in projector.parameters():
        if p.dim() == 1:
            p.data.uniform_(0.2, 1.0)
    fe = WhisperFeatureExtractor(feature_size=128)

    state: dict[str, torch.Tensor] = {f"multi_modal_projector.{k}": v for k, v in projector.state_dict().items()}
    state.update({f"audio_tower.{k}": v for k, v in encoder.state_dict().items()})
    config: dict[str, Any] = {
        "architectures": ["UltravoxModel"],
        "model_type": "ultravox",
        "hidden_size": shape.hidden_size,
        "stack_factor": 8,
        "norm_init": 0.4,
        "projector_act": "swiglu",
        "projector_ln_mid": projector_ln_mid,
        "ignore_index": -100,
        "audio_token_index": None,
        "vocab_size": len(tok),
        "pad_token_id": eot,
        "torch_dtype": "float32",
        "audio_latency_block_size": None,
    }
    if layout == "split":
        llm.save_pretrained(out / "llama")
        tok.save_pretrained(out / "llama")
        whisper.save_pretrained(out / "whisper")
        fe.save_pretrained(out / "whisper")
        config.update(audio_model_id=str((out / "whisper").resolve()), text_model_id=str((out / "llama").resolve()))
    else:
        state.update({f"language_model.{k}": v for k, v in llm.state_dict().items()})
        config.update(audio_config=audio_cfg.to_dict(), text_config=text_cfg.to_dict())
        fe.save_pretrained(root)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    tok.save_pretrained(root)
    return mark_smoke(root)


# --------------------------------------------------------------------------- LLaVA, Qwen2-Audio, text baselines

_VLM_CORPUS = [
    "a photo of a dog on the grass",
    "a cat sits on a red chair",
    "two people ride bikes in the street",
    "a plate of food with a fork",
    "the image shows a man holding a kite",
    "a bus parked near a building",
    "the speaker sounds angry",
    "the speaker sounds happy",
    "the speaker sounds sad",
    "the speaker sounds neutral",
    "the speaker sounds afraid",
    "the speaker sounds disgusted",
    "the speaker is a woman",
    "the speaker is a man",
    "the sound is a dog barking",
    "the sound is rain",
    "it is eleven o'clock",
    "that is exactly what happened",
    "Describe this image.",
    "Describe this audio.",
    "USER: ASSISTANT: system user assistant",
    "You are a helpful assistant.",
    "Audio 1: what is in it?",
    "the word is cat",
    "the object is a person",
    "The image shows",
    "The speaker sounds",
    "small medium large concentrated moderate dispersed",
    "0 1 2 3 4 5 6 7 8 9",
    "a an the of and to in is was for on with as at by",
]


def bpe_tokenizer(specials: list[str], bos: str | None = None, vocab_size: int = 400, **special_attrs: Any) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on a few sentences, with `specials`
    as special tokens (ids 0..), BOS prepended when `bos` is given, and the named special
    attributes (bos_token=..., pad_token=..., extra_special_tokens=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_VLM_CORPUS * 4, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_attrs)


def _release_processor_files(out: Path, key: str) -> None:
    """Move the sub-processor's settings from processor_config.json to
    preprocessor_config.json, the layout of the released checkpoints (saved by transformers 4)."""
    pc = out / "processor_config.json"
    if not pc.exists():
        return
    cfg = json.loads(pc.read_text())
    sub = cfg.pop(key, None)
    if sub is None:
        return
    sub.setdefault("processor_class", cfg.get("processor_class"))
    (out / "preprocessor_config.json").write_text(json.dumps(sub, indent=2) + "\n")
    pc.write_text(json.dumps(cfg, indent=2) + "\n")


def make_tiny_llava(out_dir: str | Path, image_size: int = 42, seed: int = 0) -> Path:
    """LLaVA-1.5 layout (`llava-hf/llava-1.5-7b-hf`): CLIP vision tower (3 layers, so the
    default feature layer -2 is not the last one), GELU-MLP projector, 2-layer Llama, BOS
    `<s>`, `<image>` and `<pad>` tokens; preprocessor_config.json names `CLIPImageProcessor`
    as the release does (mch must pick the PIL variant without torchvision)."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        projection_dim=16,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    proc.save_pretrained(out)
    _release_processor_files(out, "image_processor")
    return mark_smoke(out)


def make_tiny_qwen2audio(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-Audio layout (`Qwen/Qwen2-Audio-7B-Instruct`): Whisper-style encoder (2 layers x
    32 but the real 1500 positions, so every clip is still padded to 3000 mel frames),
    linear projector, 2-layer Qwen2, 128-bin Whisper feature extractor, the processor's
    ChatML template, no BOS (like the release)."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )
    fe = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, return_attention_mask=True
    )
    proc = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)  # no template given: the class's ChatML one
    audio = Qwen2AudioEncoderConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=128,
        max_source_positions=1500,
    )
    text = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>")
    )
    torch.manual_seed(seed)
    Qwen2AudioForConditionalGeneration(cfg).eval().save_pretrained(out)
    proc.save_pretrained(out)
    _release_processor_files(out, "feature_extractor")
    return mark_smoke(out)


def _make_tiny_llama_lm(out_dir: str | Path, bos: str, eos: str, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(["<unk>", bos, eos], bos=bos, bos_token=bos, eos_token=eos, unk_token="<unk>")
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return mark_smoke(out)


def make_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """Llama-3.1 base layout (`meta-llama/Llama-3.1-8B`): LlamaForCausalLM, BOS `<|begin_of_text|>`."""
    return _make_tiny_llama_lm(out_dir, "<|begin_of_text|>", "<|end_of_text|>", seed)


def make_tiny_vicuna(out_dir: str | Path, seed: int = 0) -> Path:
    """Vicuna-7B-v1.5 layout (`lmsys/vicuna-7b-v1.5`): LlamaForCausalLM, BOS `<s>`."""
    return _make_tiny_llama_lm(out_dir, "<s>", "</s>", seed)


# --------------------------------------------------------------------------- Prismatic (TRI-ML release layout)

_PRISMATIC_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Describe this image. ASSISTANT:",
    "a photo of a dog on the grass",
    "a cat sits on a red chair",
    "two people ride bikes in the street",
    "a plate of food with a fork",
    "The image shows a man holding a kite",
    "a bus parked near a building",
    "there are one two three four many objects",
    "they are small medium large",
    "concentrated moderate dispersed",
    "person animal vehicle food furniture",
    "0 1 2 3 4 5 6 7 8 9",
]


def _vicuna_like_tokenizer(vocab_size: int = 360) -> Any:
    """A SentencePiece-style BPE (Metaspace, '▁' word prefix) with Llama-2's special tokens
    <unk>=0, <s>=1, </s>=2 and BOS added like Vicuna's tokenizer; no pad token (Prismatic adds
    `<PAD>` itself)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = list(string.ascii_letters + string.digits + string.punctuation) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_PRISMATIC_CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def _tiny_timm_vit(family: str, dim: int, depth: int, heads: int, grid: int, gen: Any) -> dict[str, Any]:
    """Random weights under timm's ViT key names (DINOv2 with 4 registers, or SigLIP with its
    attention-pool head), scaled so that a wrong key map changes the outputs visibly."""
    import torch

    def rnd(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 0.5 + torch.rand(dim, generator=gen), f"{prefix}.bias": rnd(dim, std=0.1)}

    def linear(prefix: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rnd(out, inp, std=inp**-0.5), f"{prefix}.bias": rnd(out, std=0.1)}

    mlp = 4 * dim if family == "dinov2" else int(dim * 3.7362)
    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": rnd(dim, 3, 14, 14, std=0.05),
        "patch_embed.proj.bias": rnd(dim, std=0.1),
        "pos_embed": rnd(1, grid * grid, dim, std=0.5),
    }
    if family == "dinov2":
        sd["cls_token"] = rnd(1, 1, dim, std=0.5)
        sd["reg_token"] = rnd(1, 4, dim, std=0.5)
    for i in range(depth):
        b = f"blocks.{i}"
        sd.update(norm(f"{b}.norm1"))
        sd.update(linear(f"{b}.attn.qkv", 3 * dim, dim))
        sd.update(linear(f"{b}.attn.proj", dim, dim))
        sd.update(norm(f"{b}.norm2"))
        sd.update(linear(f"{b}.mlp.fc1", mlp, dim))
        sd.update(linear(f"{b}.mlp.fc2", dim, mlp))
        if family == "dinov2":
            sd[f"{b}.ls1.gamma"] = 0.2 + torch.rand(dim, generator=gen)
            sd[f"{b}.ls2.gamma"] = 0.2 + torch.rand(dim, generator=gen)
    sd.update(norm("norm"))
    if family == "siglip":
        sd["attn_pool.latent"] = rnd(1, 1, dim, std=0.5)
        sd.update(linear("attn_pool.q", dim, dim))
        sd.update(linear("attn_pool.kv", 2 * dim, dim))
        sd.update(linear("attn_pool.proj", dim, dim))
        sd.update(norm("attn_pool.norm"))
        sd.update(linear("attn_pool.mlp.fc1", mlp, dim))
        sd.update(linear("attn_pool.mlp.fc2", dim, mlp))
    return {k: v.contiguous() for k, v in sd.items()}


def _make_tiny_prismatic(out_dir: str | Path, family: str, seed: int, vision_in_checkpoint: bool) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if family == "dinov2":
        vb_id, model_id, arch, dim, heads, native, size = (
            "dinov2-vit-l",
            "dinov2-224px+7b",
            "vit_large_patch14_reg4_dinov2",
            32,
            2,
            6,
            56,
        )
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    else:
        vb_id, model_id, arch, dim, heads, native, size = (
            "siglip-vit-so400m",
            "siglip-224px+7b",
            "vit_so400m_patch14_siglip_224",
            48,
            3,
            3,
            42,
        )
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    depth = 3  # the featurizer reads block 1, the second-to-last
    vision = _tiny_timm_vit(family, dim, depth, heads, native, gen)

    # LLM: Vicuna's files (config + tokenizer) in llm/, fine-tuned weights in the checkpoint
    tok = _vicuna_like_tokenizer()
    llm_cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=0.1,
    )
    llm_cfg.save_pretrained(out / "llm")
    tok.save_pretrained(out / "llm")
    # Prismatic adds <PAD> and resizes the embeddings to a multiple of 64
    vocab = -(-(len(tok) + 1) // 64) * 64
    trained = LlamaConfig(**{**llm_cfg.to_dict(), "vocab_size": vocab})
    llm = LlamaForCausalLM(trained)
    projector = {
        "projector.0.weight": torch.randn(64, dim, generator=gen) * dim**-0.5,
        "projector.0.bias": torch.randn(64, generator=gen) * 0.1,
        "projector.2.weight": torch.randn(64, 64, generator=gen) * 0.125,
        "projector.2.bias": torch.randn(64, generator=gen) * 0.1,
    }
    model: dict[str, Any] = {
        "projector": projector,
        "llm_backbone": {f"llm.{k}": v.detach().clone() for k, v in llm.state_dict().items()},
    }
    if vision_in_checkpoint:
        model["vision_backbone"] = {f"featurizer.{k}": v for k, v in vision.items()}
    torch.save({"model": model}, out / "checkpoints" / "latest-checkpoint.pt")

    # vision weights as timm's hub repositories hold them
    vdir = out / "vision"
    vdir.mkdir(exist_ok=True)
    timm_cfg = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": dim,
        "global_pool": "token" if family == "dinov2" else "map",
        "model_args": {"embed_dim": dim, "depth": depth, "num_heads": heads, "img_size": native * 14},
        "pretrained_cfg": {
            "input_size": [3, native * 14, native * 14],
            "interpolation": "bicubic",
            "crop_pct": 1.0 if family == "dinov2" else 0.9,
            "crop_mode": "center",
            "mean": list(mean),
            "std": list(std),
            "num_classes": 0,
        },
    }
    (vdir / "config.json").write_text(json.dumps(timm_cfg, indent=2) + "\n")
    if family == "dinov2":
        save_file(vision, str(vdir / "model.safetensors"))
    else:  # open_clip layout (timm 0.9's source of SigLIP weights): the ViT under visual.trunk.
        clip = {f"visual.trunk.{k}": v for k, v in vision.items()}
        clip.update({"logit_scale": torch.tensor(2.3), "text.token_embedding.weight": torch.randn(8, dim)})
        torch.save(clip, vdir / "open_clip_pytorch_model.bin")

    run_cfg = {
        "model": {
            "model_id": model_id,
            "arch_specifier": "no-align+gelu-mlp",
            "vision_backbone_id": vb_id,
            "llm_backbone_id": "vicuna-v15-7b",
            "image_resize_strategy": "letterbox",
            "llm_max_length": 2048,
            "default_image_size": size,
        },
        "run_id": f"{model_id}-tiny",
        "seed": seed,
    }
    (out / "config.json").write_text(json.dumps(run_cfg, indent=2) + "\n")
    return mark_smoke(out)


def make_tiny_prismatic_dinov2(out_dir: str | Path, seed: int = 0, vision_in_checkpoint: bool = False) -> Path:
    """A tiny Prismatic run directory in the TRI-ML layout (`dinov2-224px+7b`): config.json,
    checkpoints/latest-checkpoint.pt ({"model": {"projector", "llm_backbone"}}), the Vicuna-style
    config + tokenizer in llm/, and timm-format DINOv2-with-registers weights (3 blocks x 32,
    4 registers, position grid 6x6 resampled to 4x4 at the run's 56 px) in vision/.
    `vision_in_checkpoint` also stores them in the checkpoint as `vision_backbone`."""
    return _make_tiny_prismatic(out_dir, "dinov2", seed, vision_in_checkpoint)


def make_tiny_prismatic_siglip(out_dir: str | Path, seed: int = 0, vision_in_checkpoint: bool = False) -> Path:
    """A tiny Prismatic run (`siglip-224px+7b` layout) whose SigLIP weights (3 blocks x 48, with
    the attention-pool head, 3x3 patches at 42 px) are an open_clip-format
    open_clip_pytorch_model.bin (timm keys under `visual.trunk.`) in vision/."""
    return _make_tiny_prismatic(out_dir, "siglip", seed, vision_in_checkpoint)
