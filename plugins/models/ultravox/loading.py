"""Reading an Ultravox checkpoint: config, the weight index of the checkpoint and of the base
checkpoints it names, and `UltravoxLoader`, the plugin's loading half (weights, tokenizer,
feature extractor, `--adapter`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from mch.api import MchError
from mch.model import ModelPlugin

from .convert import _lora_to_peft_dir
from .modeling import UltravoxModel
from .transforms import SAMPLE_RATE


def _weight_index(d: Path) -> dict[str, Path]:
    """key -> safetensors file of a checkpoint directory (one file or an index of shards)."""
    index = d / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: d / f for k, f in wm.items()}
    files = sorted(d.glob("*.safetensors"))
    if (d / "model.safetensors").exists():
        files = [d / "model.safetensors"]
    out: dict[str, Path] = {}
    from safetensors import safe_open

    for f in files:
        if f.name.startswith("adapter_"):
            continue
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = f
    return out


def _read_config(d: Path) -> dict[str, Any]:
    p = d / "config.json"
    if not p.exists():
        raise MchError(
            f"model 'ultravox': {d} has no config.json; pass --checkpoint with an Ultravox checkpoint directory"
        )
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MchError(
            f"model 'ultravox': {p} cannot be read as JSON ({exc}); restore the checkpoint's config.json"
        ) from None
    if not isinstance(cfg, dict):
        raise MchError(
            f"model 'ultravox': {p} holds a JSON {type(cfg).__name__}, not an object; restore the "
            f"checkpoint's config.json"
        )
    return cfg


def _latency_block(cfg: dict[str, Any], max_frames: int, where: Path) -> int | None:
    """The release's `audio_latency_block_size` (a streaming mask on the encoder), checked as
    the release's `init_latency_mask` does, with one sentence instead of an assertion."""
    b = cfg.get("audio_latency_block_size")
    if b is None:
        return None
    if isinstance(b, bool) or not isinstance(b, int) or b <= 0 or max_frames % b:
        raise MchError(
            f"model 'ultravox': {where}/config.json sets audio_latency_block_size to {b!r}; the release "
            f"accepts null or a positive integer that divides {max_frames} (its encoder's mel-frame "
            f"context); fix config.json"
        )
    return b


def _positive(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{key} must be a positive integer, got {v!r}")
    return v


def _make_config(d: dict[str, Any], default_type: str) -> Any:
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", default_type)
    for k in ("_name_or_path", "transformers_version", "_attn_implementation_autoset"):
        d.pop(k, None)
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError, TypeError) as exc:
        raise MchError(
            f"model 'ultravox': cannot build a {model_type!r} config from the checkpoint "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


class UltravoxLoader(ModelPlugin):
    """The loading half of `Ultravox` (`plugin.py` holds `load`, which puts the parts
    together): the checkpoint and its base checkpoints, each part read and checked."""

    # -- loading
    def checkpoint_paths(self) -> list[Path]:
        """The checkpoint and the base checkpoints its config names, when they are here: a
        release checkpoint holds the projector and reads the LLM and Whisper from those."""
        from mch.checkpoints import resolve_checkpoint

        paths = [resolve_checkpoint(self.checkpoint, self.revision, self.spec.name)]
        try:
            cfg = json.loads((paths[0] / "config.json").read_text())
        except (OSError, ValueError):
            return paths
        for kind in ("audio", "text"):
            ident = self.options.get(f"{kind}_model") or (
                cfg.get(f"{kind}_model_id") if isinstance(cfg, dict) else None
            )
            if ident:
                try:
                    paths.append(resolve_checkpoint(str(ident), None, self.spec.name))
                except MchError:
                    pass  # not here: the load says so if it needs it
        return paths

    def _base_dir(self, kind: str) -> Path:
        """Local directory of the base checkpoint the config names (`audio_model_id` or
        `text_model_id`), or the one given by option `audio_model`/`text_model`."""
        from mch.checkpoints import resolve_checkpoint

        if kind in self._bases:
            return self._bases[kind]
        ident = self.options.get(f"{kind}_model") or self.config.get(f"{kind}_model_id")
        what = "audio encoder" if kind == "audio" else "LLM"
        if not ident:
            raise MchError(
                f"model {self.spec.name!r}: the checkpoint lacks {what} weights or config and names no "
                f"{kind}_model_id; pass the option {kind}_model=/path/to/the/{what.split()[-1]}"
            )
        try:
            path = resolve_checkpoint(str(ident), None, self.spec.name)
        except MchError:
            raise MchError(
                f"model {self.spec.name!r}: its config names the {what} checkpoint {ident}, which is neither a local "
                f"directory nor in the local Hugging Face cache; download it (`huggingface-cli download {ident}`) "
                f"or pass the option {kind}_model=/path/to/a/local/copy"
            ) from None
        self._bases[kind] = path
        return path

    def _sub_config(self, kind: str, default_type: str) -> Any:
        embedded = self.config.get(f"{kind}_config")
        if isinstance(embedded, dict) and embedded.get("model_type") and not self.options.get(f"{kind}_model"):
            return _make_config(embedded, default_type)
        return _make_config(_read_config(self._base_dir(kind)), default_type)

    def _load_weights(self, module: UltravoxModel, dev: torch.device) -> None:
        from safetensors import safe_open

        name = self.spec.name
        own = _weight_index(self.root)
        if not own:
            raise MchError(
                f"model {name!r}: {self.root} holds no safetensors weights (model.safetensors or an "
                f"index of shards); pass --checkpoint with an Ultravox release directory"
            )
        wanted = list(module.state_dict().keys())
        known_prefixes = ("audio_tower.", "multi_modal_projector.", "language_model.")
        wanted_set = set(wanted)
        # rotary frequencies are recomputed, never loaded (older saves include them)
        stray = [k for k in own if k not in wanted_set and not k.endswith("rotary_emb.inv_freq")]
        if stray:
            hint = "" if stray[0].startswith(known_prefixes) else " (not an Ultravox weight name)"
            raise MchError(
                f"model {name!r}: checkpoint {self.root} has a weight {stray[0]!r} that this "
                f"architecture does not have{hint}; is its config.json right?"
            )
        sources: dict[str, tuple[Path, str]] = {}
        base_index: dict[str, dict[str, Path]] = {}
        for key in wanted:
            if key in own:
                sources[key] = (own[key], key)
                continue
            kind = "audio" if key.startswith("audio_tower.") else "text" if key.startswith("language_model.") else None
            if kind is None:
                raise MchError(f"model {name!r}: checkpoint {self.root} lacks the projector weight {key!r}")
            if kind not in base_index:
                base_index[kind] = _weight_index(self._base_dir(kind))
            rest = key.split(".", 1)[1]
            cands = [f"model.encoder.{rest}", f"encoder.{rest}", rest] if kind == "audio" else [rest, f"model.{rest}"]
            hit = next((c for c in cands if c in base_index[kind]), None)
            if hit is None:
                if key == "language_model.lm_head.weight" and getattr(
                    self._text_cfg(module), "tie_word_embeddings", False
                ):
                    continue
                raise MchError(
                    f"model {name!r}: weight {key!r} is neither in {self.root} nor in the "
                    f"{kind} base checkpoint {self._base_dir(kind)}"
                )
            sources[key] = (base_index[kind][hit], hit)
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for key, (f, src) in sources.items():
            by_file.setdefault(f, []).append((key, src))
        state: dict[str, torch.Tensor] = {}
        dtype = self.torch_dtype
        ref = module.state_dict()
        for f, pairs in by_file.items():
            with safe_open(str(f), framework="pt", device=str(dev)) as fh:
                for key, src in pairs:
                    t = fh.get_tensor(src)
                    if tuple(t.shape) != tuple(ref[key].shape):
                        raise MchError(
                            f"model {name!r}: weight {src!r} in {f} has shape {tuple(t.shape)}, the "
                            f"architecture from config.json expects {tuple(ref[key].shape)}"
                        )
                    state[key] = t.to(dtype) if t.is_floating_point() else t
        missing = [k for k in wanted if k not in state]
        tied = missing == ["language_model.lm_head.weight"]
        if tied:
            state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
        module.load_state_dict(state, strict=True, assign=True)
        if tied:
            module.language_model.lm_head.weight = module.language_model.model.embed_tokens.weight
        # non-persistent buffers (rotary frequencies) were built on the meta device
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if any(b.is_meta for b in child.buffers(recurse=False)) and hasattr(child, "config"):
                    with torch.device(dev):
                        setattr(parent, child_name, type(child)(config=child.config))
        left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if left:
            raise MchError(f"model {name!r}: no weights were found for {left[0]!r}")
        module.to(dev)

    @staticmethod
    def _text_cfg(module: UltravoxModel) -> Any:
        return module.language_model.config

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        roots = [self.root]
        if not ((self.root / "tokenizer.json").exists() or (self.root / "tokenizer_config.json").exists()):
            roots = [self._base_dir("text")]
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # it warns that config.json's model_type is not a tokenizer's
        try:
            # explicit flag: with None, transformers asks on stdin whether to run the code that the
            # release's config.json names in `auto_map` (and runs it on "y")
            tok = AutoTokenizer.from_pretrained(
                str(roots[0]), local_files_only=True, trust_remote_code=bool(self.trust_remote_code)
            )
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the same to the user
            lines = str(exc).strip().splitlines()
            hint = (
                "; it is custom code, which mch runs only with --trust-remote-code"
                if "trust_remote_code" in str(exc)
                else ""
            )
            raise MchError(
                f"model {self.spec.name!r}: cannot load the tokenizer from {roots[0]} "
                f"({type(exc).__name__}: {lines[0][:200] if lines else ''}){hint}"
            ) from None
        finally:
            hf_logging.set_verbosity(level)
        if tok.eos_token is None:
            raise MchError(
                f"model {self.spec.name!r}: the tokenizer in {roots[0]} has no EOS token, which Ultravox "
                f"uses for its audio slots"
            )
        return tok

    def _load_feature_extractor(self, n_mels: int) -> Any:
        from transformers import WhisperFeatureExtractor

        dirs = [self.root]
        if self.config.get("audio_model_id") or self.options.get("audio_model"):
            try:
                dirs.append(self._base_dir("audio"))
            except MchError:
                pass  # weights and config were in the checkpoint; Whisper's defaults are the same
        for d in dirs:
            if (d / "preprocessor_config.json").exists():
                fe = WhisperFeatureExtractor.from_pretrained(str(d))
                break
        else:
            fe = WhisperFeatureExtractor(feature_size=n_mels)  # Whisper's own defaults otherwise
        if fe.feature_size != n_mels or fe.sampling_rate != SAMPLE_RATE:
            raise MchError(
                f"model {self.spec.name!r}: the feature extractor gives {fe.feature_size} mel bins at "
                f"{fe.sampling_rate} Hz, the encoder expects {n_mels} at {SAMPLE_RATE}"
            )
        return fe

    def _apply_adapter(self, d: Path) -> None:
        from mch.checkpoints import load_lora_adapter

        assert self.module is not None
        try:
            if not (d / "adapter_config.json").exists() and (d / "model.safetensors").exists():
                with tempfile.TemporaryDirectory() as tmp:
                    _lora_to_peft_dir(d, Path(tmp))
                    self.module.language_model = load_lora_adapter(self.module.language_model, tmp, merge=True)
            else:
                self.module.language_model = load_lora_adapter(self.module.language_model, d, merge=True)
        except RuntimeError as exc:  # shape mismatches surface from load_state_dict
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
            raise MchError(f"--adapter {d}: its weights do not fit this model's LLM ({detail[:200]})") from None
        self.module.requires_grad_(False)
