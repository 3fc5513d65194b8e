"""Finding and building a Prismatic run's parts: the backbone tables, the checkpoint readers
and `PrismaticLoader`, the plugin's loading half (the run directory, the LLM's config and
tokenizer, the vision weights in timm or HF format)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mch.api import MchError
from mch.checkpoints import one_line
from mch.model import ModelPlugin

from .convert import resample_pos, timm_to_hf
from .modeling import VisionBackbone
from .transforms import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, ImageTransform

PAD_TOKEN = "<PAD>"


@dataclass(frozen=True)
class VisionBackboneInfo:
    family: str  # "dinov2" | "siglip"
    timm_arch: str
    hub_ids: tuple[str, ...]  # timm weights on the HF hub, first found wins
    image_size: int
    num_heads: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Prismatic's vision_backbone_id -> what its timm model was (prismatic/models/backbones/vision).
VISION_BACKBONES = {
    "dinov2-vit-l": VisionBackboneInfo(
        "dinov2",
        "vit_large_patch14_reg4_dinov2",
        ("timm/vit_large_patch14_reg4_dinov2.lvd142m",),
        224,
        16,
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "siglip-vit-so400m": VisionBackboneInfo(
        "siglip",
        "vit_so400m_patch14_siglip_224",
        ("timm/ViT-SO400M-14-SigLIP", "timm/vit_so400m_patch14_siglip_224.webli"),
        224,
        16,
        INCEPTION_MEAN,
        INCEPTION_STD,
    ),
    "siglip-vit-so400m-384px": VisionBackboneInfo(
        "siglip",
        "vit_so400m_patch14_siglip_384",
        ("timm/ViT-SO400M-14-SigLIP-384", "timm/vit_so400m_patch14_siglip_384.webli"),
        384,
        16,
        INCEPTION_MEAN,
        INCEPTION_STD,
    ),
}
# timm architecture -> heads (a timm-format file does not say; its hub config.json names the arch)
TIMM_HEADS = {
    "vit_large_patch14_reg4_dinov2": 16,
    "vit_large_patch14_dinov2": 16,
    "vit_so400m_patch14_siglip_224": 16,
    "vit_so400m_patch14_siglip_384": 16,
    "vit_base_patch16_siglip_224": 12,
    "vit_base_patch16_siglip_256": 12,
    "vit_base_patch16_siglip_384": 12,
}
# Prismatic's llm_backbone_id -> the HF checkpoint its config and tokenizer come from
LLM_BACKBONES = {
    "vicuna-v15-7b": "lmsys/vicuna-7b-v1.5",
    "vicuna-v15-13b": "lmsys/vicuna-13b-v1.5",
    "llama2-7b-pure": "meta-llama/Llama-2-7b-hf",
    "llama2-13b-pure": "meta-llama/Llama-2-13b-hf",
    "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
}
TIMM_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
LLM_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "*.model"]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers.utils.logging as tlog

    level = tlog.get_verbosity()
    bar = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bar:
            tlog.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    return one_line(exc, max_len=300)  # a state dict's errors list every key


def from_state_dict(cls: Any, config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str) -> Any:
    """`cls` built from `config` with exactly `state` (no random init, no missing or extra key)."""
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(
                None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
            )
    except MchError:
        raise
    except Exception as exc:  # noqa: BLE001 - shape mismatches and the like are the user's files
        raise MchError(f"{what} do not fit their architecture ({_one_line(exc)})") from None
    bad = (
        sorted(info.get("missing_keys", ()))
        + sorted(info.get("unexpected_keys", ()))
        + sorted(str(k) for k in info.get("mismatched_keys", ()))
    )
    if bad:
        raise MchError(
            f"{what} do not match the model: {len(bad)} missing, unexpected or mismatched keys (first: {bad[0]})"
        )
    return model


def _load_tensors(path: Path, trust: bool, what: str) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise MchError(f"{what} {path} cannot be read as safetensors ({_one_line(exc)})") from None
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if trust and "weights_only" in str(exc):
            return torch.load(str(path), map_location="cpu", weights_only=False)
        hint = (
            " (it holds Python objects besides tensors; pass --trust-remote-code to unpickle it)"
            if "weights_only" in str(exc)
            else ""
        )
        raise MchError(f"{what} {path} cannot be read{hint}: {_one_line(exc)}") from None


class PrismaticLoader(ModelPlugin):
    """The loading half of `PrismaticModel` (`plugin.py` holds `load`, which puts the parts
    together): where the run, the LLM files and the vision weights are, and each part built."""

    def _name(self) -> str:
        return self.spec.name

    def check_checkpoint(self, path: Any) -> None:
        """A Prismatic checkpoint is a run directory (or a repository of them with a `variant`):
        `_run_dir` says in one sentence when it is not."""
        self._run_dir()

    def _run_dir(self) -> Path:
        from mch.checkpoints import resolve_checkpoint

        variant = self.options.get("variant")
        p = Path(str(self.checkpoint)).expanduser()

        def is_run(d: Path) -> bool:
            return (d / "config.json").is_file() and (d / "checkpoints").is_dir()

        if p.is_dir():
            if is_run(p):
                return p
            if variant and is_run(p / variant):
                return p / variant
            raise MchError(
                f"model {self._name()!r}: {p} is not a Prismatic run directory (config.json and "
                f"checkpoints/latest-checkpoint.pt) nor holds one named {variant!r}; pass --checkpoint "
                f"with the run directory"
            )
        try:
            root = resolve_checkpoint(
                str(self.checkpoint), self.revision, self._name(), allow_patterns=[f"{variant}/*"] if variant else None
            )
        except MchError as exc:
            if "local Hugging Face cache" not in str(exc) or not variant:
                raise
            rev = f" --revision {self.revision}" if self.revision else ""
            raise MchError(
                f"model {self._name()!r}: Prismatic run {variant!r} of {self.checkpoint} is not in the "
                f"local Hugging Face cache and mch does not download at run time; download it "
                f"(`huggingface-cli download {self.checkpoint}{rev} --include '{variant}/*'`) or pass "
                f"--checkpoint with a local run directory"
            ) from None
        run = root / variant if variant else root
        if not is_run(run):
            raise MchError(
                f"model {self._name()!r}: {run} is not a complete Prismatic run (config.json and "
                f"checkpoints/latest-checkpoint.pt); download the whole {variant!r} folder"
            )
        return run

    @staticmethod
    def _checkpoint_file(run: Path) -> Path:
        ck = run / "checkpoints" / "latest-checkpoint.pt"
        if ck.is_file():
            return ck
        pts = sorted((run / "checkpoints").glob("*.pt"))
        if len(pts) == 1:
            return pts[0]
        raise MchError(
            f"{run}/checkpoints has no latest-checkpoint.pt"
            + (f" and {len(pts)} other .pt files; keep only the one to load" if pts else "")
        )

    def _resolve_dir(
        self, source: str, revision: str | None, patterns: list[str] | None, what: str, option: str
    ) -> Path:
        from mch.checkpoints import resolve_checkpoint

        try:
            return resolve_checkpoint(source, revision, self._name(), allow_patterns=patterns)
        except MchError:
            raise MchError(
                f"model {self._name()!r}: {what} {source} is not available locally and mch does not "
                f"download at run time; download it (`huggingface-cli download {source}`), or put a "
                f"local copy (or a link to one) at <run directory>/{option}, or set the model option "
                f"{option}=PATH"
            ) from None

    def _load_llm(self, run: Path, cfg: dict, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Any]:
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

        llm_id = cfg.get("llm_backbone_id", "")
        src = self.options.get("llm")
        if src is None and (run / "llm").is_dir():
            src = str(run / "llm")
        if src is None:
            if llm_id not in LLM_BACKBONES:
                raise MchError(
                    f"model {self._name()!r}: unknown llm_backbone_id {llm_id!r}; put its config.json and "
                    f"tokenizer at {run}/llm or set the model option llm=PATH"
                )
            src = LLM_BACKBONES[llm_id]
        path = self._resolve_dir(
            src, self.options.get("llm_revision"), LLM_FILES, f"the config and tokenizer of the LLM ({llm_id})", "llm"
        )
        try:
            with _quiet_transformers():
                # explicit flag: with None, transformers asks on stdin whether to run custom code
                trust = bool(self.trust_remote_code)
                llm_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
                tok = AutoTokenizer.from_pretrained(
                    str(path),
                    local_files_only=True,
                    trust_remote_code=trust,
                    model_max_length=int(cfg.get("llm_max_length", 2048)),
                )
        except Exception as exc:  # noqa: BLE001
            hint = (
                (
                    "; Vicuna ships only a SentencePiece tokenizer.model, which needs `pip install sentencepiece "
                    "protobuf`"
                )
                if any(w in str(exc).lower() for w in ("sentencepiece", "protobuf"))
                else ""
            )
            raise MchError(
                f"model {self._name()!r}: cannot read the LLM config and tokenizer in {path} ({_one_line(exc)}){hint}"
            ) from None
        # Prismatic's LLaMa-2 backbones add a <PAD> token (and pad the embeddings to a multiple of 64)
        if tok.pad_token is None or tok.pad_token != PAD_TOKEN:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
        if tok.bos_token_id is None or tok("a").input_ids[:1] != [tok.bos_token_id]:
            raise MchError(
                f"model {self._name()!r}: the tokenizer in {path} does not start inputs with BOS, "
                f"which Prismatic's layout [BOS, patches, prompt] needs"
            )
        llm_state = {
            k[len("llm.") :] if k.startswith("llm.") else k: v
            for k, v in state.items()
            if not k.endswith("rotary_emb.inv_freq")
        }
        emb = llm_state.get("model.embed_tokens.weight")
        if emb is None:
            raise MchError(
                f"model {self._name()!r}: the checkpoint's llm_backbone has no "
                f"llm.model.embed_tokens.weight; is this a Prismatic checkpoint?"
            )
        if emb.shape[0] < len(tok):
            raise MchError(
                f"model {self._name()!r}: the checkpoint's vocabulary ({emb.shape[0]}) is smaller than "
                f"the tokenizer's ({len(tok)}); the LLM files in {path} are not this model's"
            )
        llm_cfg.vocab_size = int(emb.shape[0])
        llm_cfg.pad_token_id = tok.pad_token_id
        lm = from_state_dict(
            LlamaForCausalLM,
            llm_cfg,
            llm_state,
            self.torch_dtype,
            f"model {self._name()!r}: the checkpoint's llm_backbone weights",
        )
        return lm, tok

    def _vision_source(self, run: Path, info: VisionBackboneInfo | None, vb_id: str) -> Path | None:
        src = self.options.get("vision")
        if src is not None:
            p = Path(str(src)).expanduser()
            if p.exists():
                return p
            return self._resolve_dir(
                str(src), self.options.get("vision_revision"), None, "the vision backbone weights", "vision"
            )
        if (run / "vision").exists():
            return run / "vision"
        if info is None:
            return None
        from mch.checkpoints import resolve_checkpoint

        for hub in info.hub_ids:
            try:
                return resolve_checkpoint(hub, None, self._name())
            except MchError:
                continue
        return None

    def _load_vision(self, run: Path, cfg: dict, ck_model: dict) -> tuple[VisionBackbone, ImageTransform]:
        from transformers import Dinov2WithRegistersModel, SiglipVisionModel

        vb_id = cfg.get("vision_backbone_id", "")
        info = VISION_BACKBONES.get(vb_id)
        family = (
            info.family
            if info
            else ("dinov2" if vb_id.startswith("dinov2") else "siglip" if vb_id.startswith("siglip") else None)
        )
        want = self.options.get("vision_family")
        if family is None:
            raise MchError(
                f"model {self._name()!r}: vision backbone {vb_id!r} is not supported "
                f"(supported: {', '.join(VISION_BACKBONES)})"
            )
        if want and want != family:
            raise MchError(
                f"model {self._name()!r} expects a {want} vision backbone but the run in {run} uses "
                f"{vb_id!r}; use the matching model name"
            )
        size = int(cfg.get("default_image_size") or (info.image_size if info else 224))
        mean, std = (
            (info.mean, info.std)
            if info
            else ((IMAGENET_MEAN, IMAGENET_STD) if family == "dinov2" else (INCEPTION_MEAN, INCEPTION_STD))
        )
        cls = Dinov2WithRegistersModel if family == "dinov2" else SiglipVisionModel
        src = self._vision_source(run, info, vb_id)
        timm_cfg: dict = {}
        timm_file: Path | None = None
        hf_dir: Path | None = None
        # the release's loader never reads a checkpoint's vision_backbone: say so if there is one
        own = (
            (
                " (the checkpoint's own vision_backbone is not used: Prismatic's loader, prismatic.load, builds the "
                "backbone from the pretrained timm weights)"
            )
            if "vision_backbone" in ck_model
            else ""
        )
        if src is not None:
            if src.is_file():
                timm_file = src
                if (src.parent / "config.json").is_file():
                    timm_cfg = json.loads((src.parent / "config.json").read_text())
            else:
                conf = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
                if "model_type" in conf:
                    hf_dir = src
                else:
                    timm_cfg = conf
                    timm_file = next((src / f for f in TIMM_WEIGHT_FILES if (src / f).is_file()), None)
                    if timm_file is None:
                        raise MchError(
                            f"model {self._name()!r}: {src} holds none of {', '.join(TIMM_WEIGHT_FILES)}, "
                            f"nor an HF config.json{own}; pass the model option vision= with the timm "
                            f"weights"
                        )
        else:
            hubs = " or ".join(info.hub_ids) if info else "its timm weights"
            raise MchError(
                f"model {self._name()!r}: the vision backbone weights ({hubs}) are not available locally "
                f"and mch does not download at run time{own}; download them (`huggingface-cli download "
                f"{info.hub_ids[0] if info else '<timm repo>'}`), or put a local copy (timm or HF format, "
                f"or a link to one) at {run}/vision, or set the model option vision=PATH"
            )
        pcfg = timm_cfg.get("pretrained_cfg", {}) if isinstance(timm_cfg, dict) else {}
        mean = tuple(pcfg.get("mean", mean))
        std = tuple(pcfg.get("std", std))
        transform = ImageTransform(size, cfg.get("image_resize_strategy", "letterbox"), mean, std)
        what = f"model {self._name()!r}: the vision backbone weights"
        if hf_dir is not None:
            featurizer = self._hf_featurizer(cls, hf_dir, family, size, what)
        else:
            assert timm_file is not None
            timm_sd, where = _load_tensors(timm_file, self.trust_remote_code, "vision weights"), str(timm_file)
            if isinstance(timm_sd, dict) and "state_dict" in timm_sd and isinstance(timm_sd["state_dict"], dict):
                timm_sd = timm_sd["state_dict"]
            arch = timm_cfg.get("architecture") or (info.timm_arch if info else "")
            heads = (timm_cfg.get("model_args") or {}).get("num_heads") or TIMM_HEADS.get(arch)
            if not heads:
                raise MchError(
                    f"model {self._name()!r}: cannot tell the number of attention heads of the vision "
                    f"weights in {where}; put timm's config.json (with `architecture`) beside them"
                )
            hf_cfg, hf_sd = timm_to_hf(family, timm_sd, int(heads), size, what=f"vision weights in {where}")
            featurizer = from_state_dict(cls, hf_cfg, hf_sd, self.torch_dtype, what)
        return VisionBackbone(featurizer, family), transform

    def _hf_featurizer(self, cls: Any, path: Path, family: str, size: int, what: str) -> nn.Module:
        try:
            with _quiet_transformers():
                conf = cls.config_class.from_pretrained(str(path), local_files_only=True)
                if family == "siglip":
                    conf.hidden_act = "gelu"  # what Prismatic's timm model computed
                model = cls.from_pretrained(str(path), config=conf, dtype=torch.float32, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise MchError(f"{what} in {path} cannot be loaded as {cls.__name__} ({_one_line(exc)})") from None
        grid = size // conf.patch_size
        sd = dict(model.state_dict())
        if family == "dinov2":
            pos = sd["embeddings.position_embeddings"]
            sd["embeddings.position_embeddings"] = torch.cat([pos[:, :1], resample_pos(pos[:, 1:], grid)], 1)
        else:
            key = "embeddings.position_embedding.weight"
            sd[key] = resample_pos(sd[key][None], grid)[0]
        conf.image_size = size
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
        return from_state_dict(cls, conf, sd, self.torch_dtype, what)
