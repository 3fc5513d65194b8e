"""The architecture table of the generic transformers plugin (`hf_generic`): one row per
family, chosen by the checkpoint's `config.architectures`. Data only; no torch import.

Every family here has the transformers 5 layout of a multimodal `...ForConditionalGeneration`::

    XForConditionalGeneration
    ├── model: XModel                     `inner`: forward() runs it (no LM head)
    │   ├── <encoder>                     vision tower / audio tower
    │   ├── <adapter>                     projector / connector / merger
    │   │     its input  -> `encoder`     (what the adapter receives: the `path:input` point)
    │   │     its output -> `adapter`     (what the LLM receives in place of token embeddings)
    │   └── <decoder>: a decoder stack
    │       ├── embed_tokens              `adapter` in the text view
    │       ├── layers.{0..L-1}           `llm.0` .. `llm.{L-1}`
    │       └── norm                      `llm.final`
    └── lm_head

A row names, per family: the hook points of `encoder` and `adapter` (first candidate that
exists in the loaded tree), the decoder stack, the config attribute of the modality token
id, the processor attribute holding the media marker the chat template writes, how the
adapter's rows split over samples, and the position rule (1-D, or the model's own
multi-axis ids, which the plugin reads at the decoder's entry and continues from).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # config.architectures values this row covers
    modality: str  # vision | speech
    encoder: tuple[str, ...]  # hook points (path or path:input) of `encoder`
    adapter: tuple[str, ...]  # hook points of `adapter`
    decoder: tuple[str, ...] = ("model.language_model",)
    inner: str = "model"
    token_id: tuple[str, ...] = ("image_token_id", "image_token_index")  # config attributes
    placeholder: str = "image_token"  # processor attribute (or "=literal") of the template's media marker
    prompt: str = "{media}{instruction}"  # used when the processor has no chat template (base models)
    media_arg: str = "images"  # the processor's keyword for the media
    media_nested: bool = False  # pass media as one list per sample ([[image], [image], ...])
    rows: str = "tokens"  # adapter/encoder rows per sample: "tokens" (in proportion to the
    # modality tokens) or "anyres" (LLaVA-NeXT tiles, from image_sizes)
    positions: str = "1d"  # "1d" or "mrope" (the model's own multi-axis ids)
    decoder_input_complete: bool = True  # False: the decoder reads more than its input embeddings
    # (bidirectional media attention, deepstack), so score_parts is refused
    instruction: str = ""  # default instruction ("" = Describe this image/audio.)
    requires: tuple[str, ...] = ()  # modules transformers' processor needs beyond mch's dependencies
    note: str = ""  # what differs from the picture above


_PROJ = ("model.multi_modal_projector",)

FAMILIES: tuple[Family, ...] = (
    Family(
        "qwen2_vl",
        ("Qwen2VLForConditionalGeneration",),
        "vision",
        encoder=("model.visual.merger:input",),
        adapter=("model.visual.merger",),
        positions="mrope",
        note="ViT patches flat (sum of t*h*w, D); the merger folds 2x2 patches into one token",
    ),
    Family(
        "qwen2_5_vl",
        ("Qwen2_5_VLForConditionalGeneration",),
        "vision",
        encoder=("model.visual.merger:input",),
        adapter=("model.visual.merger",),
        positions="mrope",
        note="as Qwen2-VL with windowed attention: merger rows come in window order inside each image",
    ),
    Family(
        "qwen3_vl",
        ("Qwen3VLForConditionalGeneration",),
        "vision",
        encoder=("model.visual.merger:input",),
        adapter=("model.visual.merger",),
        positions="mrope",
        decoder_input_complete=False,
        note="deepstack: mergers of intermediate ViT layers are also added to the first LLM layers' "
        "hidden states at the image positions; `adapter` is the main merger",
    ),
    Family(
        "glm4v",
        ("Glm4vForConditionalGeneration",),
        "vision",
        encoder=("model.visual.post_layernorm",),
        adapter=("model.visual.merger",),
        positions="mrope",
        note="the adapter is a 2x2 strided conv then the merger; `encoder` is the ViT output before them",
    ),
    Family(
        "llava_next",
        ("LlavaNextForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        rows="anyres",
        note="anyres tiles: the projector sees every tile's patches; the LLM gets them unpadded, with "
        "image_newline rows",
    ),
    Family(
        "llava_onevision",
        ("LlavaOnevisionForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        rows="anyres",
        note="anyres-max-9 tiles, as LLaVA-NeXT",
    ),
    Family(
        "aya_vision",
        ("AyaVisionForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        note="the projector pixel-shuffles 2x2 patches, then a SwiGLU MLP",
    ),
    Family(
        "mistral3",
        ("Mistral3ForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        requires=("torchvision",),
        note="Pixtral encoder (all images in one sequence); the projector merges 2x2 patches; "
        "[IMG_BREAK]/[IMG_END] tokens are text; transformers 5.25's PixtralProcessor imports the "
        "torchvision image processor even to use the PIL one",
    ),
    Family(
        "internvl",
        ("InternVLForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        note="the projector receives pixel-shuffled (2x2 -> channels) ViT features",
    ),
    Family(
        "gemma3",
        ("Gemma3ForConditionalGeneration",),
        "vision",
        encoder=("model.multi_modal_projector:input",),
        adapter=_PROJ,
        decoder_input_complete=False,
        media_nested=True,
        note="the projector average-pools the SigLIP patches to 256 tokens; image tokens attend to each "
        "other both ways (token_type_ids)",
    ),
    Family(
        "idefics3",
        ("Idefics3ForConditionalGeneration",),
        "vision",
        encoder=("model.connector:input",),
        adapter=("model.connector",),
        decoder=("model.text_model",),
        note="image split into tiles + a global view; the connector pixel-shuffles each tile's patches",
    ),
    Family(
        "smolvlm",
        ("SmolVLMForConditionalGeneration",),
        "vision",
        encoder=("model.connector:input",),
        adapter=("model.connector",),
        decoder=("model.text_model",),
        requires=("num2words",),
        note="Idefics3's layout; its processor needs num2words",
    ),
)

_SPEECH = dict(token_id=("audio_token_id", "audio_token_index"), placeholder="audio_token", media_arg="audio")

FAMILIES += (
    Family(
        "qwen2_5_omni",
        ("Qwen2_5OmniThinkerForConditionalGeneration",),
        "speech",
        encoder=("model.audio_tower.proj:input",),
        adapter=("model.audio_tower.proj",),
        positions="mrope",
        **_SPEECH,
        note="the thinker: Whisper-style audio tower whose last `proj` maps into the LLM width (the adapter); "
        "clips padded to 30 s, only real frames reach the tower's output; time-aligned M-RoPE",
    ),
)

BY_ARCHITECTURE: dict[str, Family] = {a: f for f in FAMILIES for a in f.architectures}


def family_for(architectures: list[str] | tuple[str, ...] | None) -> Family | None:
    for a in architectures or ():
        if a in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[a]
    return None
