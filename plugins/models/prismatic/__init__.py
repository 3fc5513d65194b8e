"""Prismatic VLMs (TRI-ML `prismatic-vlms`) as mch model plugins, loaded by our own code.

No `prismatic`, timm or torchvision import: the vision backbones are transformers'
`Dinov2WithRegistersModel` / `SiglipVisionModel` with the released timm weights mapped onto
them (`timm_to_hf`), the projector and the LLM wrapper are re-declared here with the
release's parameter names, so its checkpoint loads as it is.

    PrismaticVLM
    ├── vision_backbone          featurizer = HF ViT; forward = patch tokens of the 2nd-to-last
    │   └── featurizer           block, no final norm, CLS/registers dropped (timm
    │                            `get_intermediate_layers(n={depth-2})`)      stage `encoder`
    ├── projector.projector      gelu-mlp: Linear -> GELU -> Linear (`.2`)   stage `adapter`
    │                            (fused-gelu-mlp: `.4`; linear: the Linear itself)
    └── llm_backbone.llm         LlamaForCausalLM (Vicuna-7B-v1.5, fine-tuned)
        ├── model.embed_tokens   text view: stage `adapter` (the decoder input of the text)
        ├── model.layers.{i}     stages `llm.i`
        └── model.norm           stage `llm.final`

The multimodal sequence is Prismatic's: [BOS, patches..., the rest of the prompt], the
projected patches spliced in right after BOS. Every logit is aligned with this layout:
`score` reads the logits of the continuation's own positions (1 + N_patches + prompt), and
`Prepared.info["labels"]` gives, per LLM position, the token id there (-100 at patches and
padding), so `logits[:, t-1]` predicts `labels[:, t]` (the reference compared logits of
length T+N with labels of length T, see analyses-causal-lora-tables.md B2).

Prompts: the Vicuna v1.5 prompt builder with Prismatic's system prompt,
    "A chat between a curious user and an artificial intelligence assistant. The assistant
    gives helpful, detailed, and polite answers to the user's questions. USER: {message}
    ASSISTANT:"
(one space between the parts, trailing space stripped), tokenized with BOS.
- `paper`: message "Describe this image." exactly (extraction-and-labels.md §3.4).
- `default`: the same builder (it is the format the model was trained on); message option
  `message`, default "Describe this image.".
- `score` (GMI): the same prompt followed by " " + the query as the start of the assistant's
  answer, then each continuation with a leading space.
- Text view: `default` = [BOS, the paired text's tokens, the same prompt without BOS] (the
  text where the patches would be; span `modality` = the text's tokens); `paper` = BOS + the
  raw text, no template (the reference's text-baseline format, through this model's LLM).

Images (Prismatic's transform, in PIL + numpy): RGB; `letterbox` pads to a square (int((max-w)/2)
each side, fill = int(255*mean)); then a bicubic resize of the shorter side to the image
size (224 for the released backbones) and a centre crop (`resize-naive` resizes straight to
the square); scale to [0, 1] and normalise (DINOv2: ImageNet mean/std; SigLIP: 0.5/0.5).

Checkpoints. `--checkpoint` is a Prismatic run directory (`config.json` whose "model" holds
model_id, vision_backbone_id, llm_backbone_id, arch_specifier, image_resize_strategy, and
`checkpoints/latest-checkpoint.pt` = {"model": {"projector": ..., "llm_backbone": ...}}), a
local copy of the `TRI-ML/prismatic-vlms` repository
(the run is its `<variant>/` folder; option `variant`, e.g. "dinov2-224px+7b"), or that HF id
in the local cache. Besides the run, a user must have locally:
- the LLM's config.json and tokenizer (not its weights): model option `llm` (a directory or HF
  id), else `<run>/llm/` (a copy or a symlink; the CLI has no model-option flag), else
  `lmsys/vicuna-7b-v1.5` in the HF cache. Prismatic adds a `<PAD>`
  token; the vocabulary size is read from the checkpoint's embedding matrix.
- the vision weights (always: like the release's `prismatic.load`, which loads only
  `projector` and `llm_backbone` from the checkpoint, mch never reads a `vision_backbone` that a
  full-finetune checkpoint may hold): option `vision` = a
  timm-format file (`.safetensors`, `.bin`; open_clip's `visual.trunk.` prefix is accepted)
  or directory (timm hub layout: `model.safetensors` or `open_clip_pytorch_model.bin`, with
  timm's `config.json`), or an HF-format directory (`Dinov2WithRegistersModel` /
  `SiglipVisionModel`, e.g. `facebook/dinov2-with-registers-large`); else `<run>/vision`
  (a file, a directory or a symlink to either);
  else the timm hub repository in the HF cache (`timm/vit_large_patch14_reg4_dinov2.lvd142m`;
  `timm/ViT-SO400M-14-SigLIP` or `timm/vit_so400m_patch14_siglip_224.webli`).
The SigLIP featurizer uses exact GELU whatever the source: Prismatic ran timm 0.9's
`vit_so400m_patch14_siglip_224`, whose MLP activation is `nn.GELU` (HF SigLIP configs say
tanh-GELU). The position embeddings are resampled once at load time to the image size
(bicubic, antialiased, as timm does when `img_size` differs from the pretraining size).
The run's `config.json` may carry `default_image_size` (an mch extension used by the tiny
test checkpoints; the TRI releases use the backbone's 224).

Precision. The release ran `vlm.to(device, dtype=torch.bfloat16)`, which also rounds the LLM's
rotary frequencies (`inv_freq`) to bf16: cos(position x frequency) is then off by up to 0.36
below position 300 at Vicuna's head size. Under `default` the frequencies stay float32 (as in
the other plugins, which load through `from_pretrained(dtype=...)`); under `paper` they take
the release's cast to the model dtype. Records say which (`model.fidelity`).

Modules: `prompt` (the Vicuna v1.5 prompt builder), `transforms` (the image transform),
`convert` (timm -> HF vision weights), `modeling` (the re-declared modules), `loading` (the
run, the LLM and the vision weights, found and built) and `plugin` (`PrismaticModel`).
"""

from __future__ import annotations

from .convert import timm_to_hf
from .modeling import make_projector
from .plugin import PrismaticModel
from .prompt import SYSTEM_PROMPT, vicuna_v15_prompt
from .transforms import ImageTransform

__all__ = ["ImageTransform", "PrismaticModel", "SYSTEM_PROMPT", "make_projector", "timm_to_hf", "vicuna_v15_prompt"]
