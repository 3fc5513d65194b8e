"""A tiny Ultravox checkpoint in the release's on-disk layouts (`make_tiny_ultravox`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import TEXT, bpe_tokenizer, mark_smoke

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
    return bpe_tokenizer(
        LLAMA3_SPECIAL_TOKENS,
        bos="<|begin_of_text|>",
        vocab_size=vocab_size,
        corpus=_ULTRAVOX_CORPUS,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA31_CHAT_TEMPLATE,
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
        **TEXT,
        vocab_size=len(tok),
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
