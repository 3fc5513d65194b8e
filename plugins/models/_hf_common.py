"""Code shared by mch's transformers-based model plugins (LLaVA, Qwen2-Audio, text baselines).

What lives here: offline loading with one clear error, stage-path resolution against the
module tree (never copied strings), right-padded collation with explicit position ids (so a
pooled vector does not depend on its batch), text spans from tokenizer offsets, and
continuation scoring on the exact decoder input (media already merged in), which reuses the
prompt's KV cache for all K continuations (`mch.scoring.score_shared_prefix`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mch.api import MchError, Sample, SampleError
from mch.checkpoints import (
    check_architecture,
    load_lora_adapter,
    one_line as _one_line,
    resolve_checkpoint,
)  # hf_generic imports them from here
from mch.hooks import Trace
from mch.model import ModelPlugin, Pool, Prepared, Scores, resolve_module
from mch.plugins._audio import resample
from mch.scoring import left_pad, score_shared_prefix

if TYPE_CHECKING:
    from mch.model import LossTerms, ScoreParts


def exists(root: torch.nn.Module, path: str) -> bool:
    try:
        resolve_module(root, path)
        return True
    except AttributeError:
        return False


def locate(root: torch.nn.Module, candidates: Sequence[str], what: str, model_name: str) -> str:
    """First of `candidates` that is a module of `root` (module layouts move between
    transformers versions, e.g. CLIP's `vision_model` level disappeared in v5)."""
    for c in candidates:
        if exists(root, c):
            return c
    raise MchError(
        f"model {model_name!r}: cannot find the {what} in the loaded model (looked for "
        f"{', '.join(candidates)}); this transformers version lays the model out differently"
    )


def decoder_stage_paths(decoder_path: str, n_layers: int) -> dict[str, str]:
    stages = {f"llm.{i}": f"{decoder_path}.layers.{i}" for i in range(n_layers)}
    stages["llm.final"] = f"{decoder_path}.norm"
    return stages


def set_module(root: torch.nn.Module, path: str, new: torch.nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = resolve_module(root, parent_path) if parent_path else root
    setattr(parent, name, new)


def checkpoint_dir(plugin: ModelPlugin) -> Path:
    return resolve_checkpoint(plugin.checkpoint, plugin.revision, plugin.spec.name)


def load_pretrained(plugin: ModelPlugin, cls: Any, path: Path, what: str) -> Any:
    """`cls.from_pretrained(path)` offline, in the plugin's dtype; any failure is one MchError."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # mch prints its own progress
    placed = {"device_map": planned_device_map(plugin, cls, path)} if plugin.device_map is not None else {}
    try:
        model = cls.from_pretrained(
            str(path),
            dtype=plugin.torch_dtype,
            local_files_only=True,
            trust_remote_code=bool(plugin.trust_remote_code),
            **placed,
        )
        if placed:
            model._mch_placed = True  # placed by accelerate through from_pretrained (ModelPlugin.place checks it)
        return model
    except MchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken checkpoint is a user error
        raise MchError(
            f"model {plugin.spec.name!r}: cannot load {path} as a {what} checkpoint "
            f"({_one_line(exc)}); pass --checkpoint with a directory saved by {what}.save_pretrained "
            f"or a Hugging Face snapshot of {plugin.spec.checkpoint}"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def planned_device_map(plugin: ModelPlugin, cls: Any, path: Path) -> dict[str, Any]:
    """The device map --device-map/--max-memory give the model in `path`, computed on its
    module tree built from the config on the meta device (no weights read) with accelerate,
    as `from_pretrained` would: a model that does not fit is one sentence before any weight
    is loaded (transformers would otherwise offload the rest to disk)."""
    from transformers import AutoConfig

    from mch import dist, placement

    trust = bool(plugin.trust_remote_code)
    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
        with torch.device("meta"):
            make = getattr(cls, "from_config", None)
            meta = (
                make(cfg, dtype=plugin.torch_dtype, trust_remote_code=trust)
                if make is not None
                else cls._from_config(cfg, dtype=plugin.torch_dtype)
            )
    except Exception as exc:  # noqa: BLE001 - the load below says what is wrong with the checkpoint
        raise MchError(
            f"model {plugin.spec.name!r}: cannot build the module tree of {path} to place it over devices "
            f"({_one_line(exc)})"
        ) from None
    mm = placement.max_memory_map(plugin.device, plugin.max_memory, dist.ranks())
    dmap = placement.infer_map(meta, str(plugin.device_map), mm, [], plugin.torch_dtype)
    placement.refuse_disk(dmap, plugin.spec.name, str(plugin.device_map), plugin.max_memory)
    return dict(dmap)


def needs_torchvision(exc: BaseException) -> bool:
    """A processor that failed because it includes a video processor, which transformers 5
    builds only with torchvision (ImportError loading one; AttributeError '_extra_content' on
    the torchvision-less VIDEO_PROCESSOR_MAPPING when a processor checks its arguments)."""
    text = str(exc)
    return "torchvision" in text.lower() or "_extra_content" in text


def load_processor(plugin: ModelPlugin, loader: Any, path: Path, what: str) -> Any:
    try:
        return loader.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=bool(plugin.trust_remote_code)
        )
    except Exception as exc:  # noqa: BLE001
        if needs_torchvision(exc):
            raise MchError(
                f"model {plugin.spec.name!r}: the {what} in {path} includes a video processor, which "
                f"transformers builds only with torchvision, and torchvision is not usable here; install "
                f"a torchvision that matches torch, or load the image processor (AutoImageProcessor picks "
                f"its PIL variant) and the tokenizer separately (docs/contributing-a-model.md)"
            ) from None
        raise MchError(
            f"model {plugin.spec.name!r}: cannot load the {what} from {path} ({_one_line(exc)}); "
            f"the checkpoint directory must hold the tokenizer and processor files of its release"
        ) from None


def apply_adapter(plugin: ModelPlugin, root: torch.nn.Module, decoder_path: str) -> None:
    """Merge a PEFT LoRA adapter (made on the LLM decoder stack at `decoder_path`) into it."""
    if not plugin.adapter:
        return
    decoder = resolve_module(root, decoder_path)
    try:
        merged = load_lora_adapter(decoder, plugin.adapter, merge=True)
    except RuntimeError as exc:  # size mismatch from load_state_dict
        raise MchError(
            f"--adapter {plugin.adapter}: its weights do not fit this model's LLM ({_one_line(exc)[:200]})"
        ) from None
    set_module(root, decoder_path, merged)


# --------------------------------------------------------------------------- batching


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and attention mask, padding on the right: with causal attention and explicit
    positions, a real token never sees a pad, so pooled vectors do not depend on the batch."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        att[i, : len(s)] = 1
    return ids, att


def positions(att: torch.Tensor) -> torch.Tensor:
    return (att.long().cumsum(-1) - 1).clamp(min=0)


def pad_id(tokenizer: Any, media_token_id: int | None = None) -> int:
    """The tokenizer's pad id, or 0 where it has none or pads with the media token (a pad must
    never be counted as a modality position)."""
    pad = tokenizer.pad_token_id
    return 0 if pad is None or pad == media_token_id else pad


def span_mask(att: torch.Tensor, inside: Sequence[Sequence[bool]]) -> torch.Tensor:
    """(B, L) mask of the positions `inside[i]` marks in row i (the text view's span)."""
    mod = torch.zeros_like(att, dtype=torch.bool)
    for i, m in enumerate(inside):
        mod[i, : len(m)] = torch.tensor(m)
    return mod


def token_pool(mod: torch.Tensor, real: torch.Tensor) -> Pool:
    """The decoder stages' pool of a batch: span `modality` = `mod`, `all` = the real tokens,
    `text` = the real tokens outside the modality."""
    return Pool(torch.arange(mod.shape[0]), {"modality": mod, "all": real, "text": real & ~mod})


def text_span(tokenizer: Any, prompt: str, start: int, end: int, sample_id: str) -> tuple[list[int], list[bool]]:
    """Token ids of `prompt` (with the tokenizer's special tokens) and which tokens overlap the
    characters [start, end) (the paired text placed where the media would be)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    inside = [e > start and s < end and e > s for s, e in enc["offset_mapping"]]
    if not any(inside):
        raise SampleError(f"sample {sample_id}: its text tokenized to no tokens", sample_id=sample_id)
    return ids, inside


def require_text(sample: Sample) -> str:
    text = (sample.text or "").strip()
    if not text:
        raise SampleError(
            f"sample {sample.sample_id} has no paired text, which the text view needs", sample_id=sample.sample_id
        )
    return text


def continuation_ids(tokenizer: Any, context: str, continuations: Sequence[str], sep: str = " ") -> list[list[int]]:
    """Token ids of each continuation (after `sep`, a leading space by default) as they
    tokenize right after `context`: the ids that extend the context's own tokens."""
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    out = []
    for c in continuations:
        full = tokenizer(context + sep + c.strip(), add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(base), len(full)) and base[k] == full[k]:
            k += 1
        ids = list(full[k:])
        if not ids:
            raise MchError(f"continuation {c!r} tokenizes to nothing")
        out.append(ids)
    return out


def decoder_call(
    inner: torch.nn.Module, decoder_path: str, inputs: dict[str, Any], root: torch.nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The embeddings the LLM decoder (at `decoder_path` of `root`, default `inner`) receives
    for `inputs` (media already scattered in), and the keyword arguments it is called with
    (position ids as the model computes them, e.g. M-RoPE's), caught at the decoder's entry;
    the decoder itself does not run."""
    seen: dict[str, Any] = {}
    with Trace(
        root if root is not None else inner,
        {"x": f"{decoder_path}:input"},
        fn=lambda f: seen.update(x=f.x, kwargs=f.kwargs),
        stop=True,
    ):
        inner(**inputs)
    if seen.get("x") is None:
        raise MchError("the LLM decoder was not called with input embeddings")
    return seen["x"], seen["kwargs"]


def decoder_inputs(inner: torch.nn.Module, decoder: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The embeddings the LLM decoder receives for `inputs` (see `decoder_call`)."""
    path = next(name for name, m in inner.named_modules() if m is decoder)
    return decoder_call(inner, path, inputs)[0]


# The options every plugin of this package takes (each declares its own `option_specs`
# from this; mch.api.Param).
from mch.api import Param  # noqa: E402

HF_OPTIONS = {"batch_size": Param(int, ge=1, help="samples per score() call (GMI), default 8")}


class HFPluginMixin(abc.ABC):
    """Scoring, losses and helpers shared by the plugins of this package. A subclass provides
    the abstract methods below, `self.tokenizer`, `views`, `decoder_path` (the LLM decoder
    stack, where LoRA adapters go) and `inner_path` (the module without LM head whose forward
    takes the inputs)."""

    decoder_path: str = ""
    inner_path: str = ""
    supports_device_map = True  # --device-map / --max-memory go to from_pretrained (mch.placement)
    hf_class = "AutoModelForCausalLM"  # transformers class whose module tree the stage paths live in
    answer_sep = " "  # between the prompt and the content (loss) in the default protocol
    batch_size_default = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paths: dict[str, str] | None = None
        self.processor: Any = None
        self.tokenizer: Any = None

    def check_checkpoint(self, path: Any) -> None:
        super().check_checkpoint(path)  # ModelPlugin's, next in the MRO
        if not self.hf_class.startswith("Auto"):  # another model's checkpoint: one sentence, not a traceback
            check_architecture(self.spec.name, path, self.hf_class)

    @abc.abstractmethod
    def _prepare_inputs(
        self,
        samples: Sequence[Sample],
        protocol: str,
        view: str,
        query: str = "",
        suffix: Sequence[Sequence[int]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(inputs, info): right-padded `input_ids`/`attention_mask` (and the media inputs) of
        the prompts, `query` after each, per-sample `suffix` token ids appended after it."""

    @abc.abstractmethod
    def render_prompt(
        self, protocol: str, view: str = "modal", text: str | None = None, query: str = ""
    ) -> tuple[str, tuple[int, int] | None]:
        """The prompt string and, in text view, the character span of the text in it."""

    @abc.abstractmethod
    def _instruction(self, protocol: str) -> str:
        """The instruction of `protocol`'s prompt (part of the store key's prompt id)."""

    @abc.abstractmethod
    def _score_context(self, protocol: str, view: str, query: str) -> str:
        """The text continuations are scored after (their tokenization depends on it)."""

    @abc.abstractmethod
    def _build_paths(self, model: torch.nn.Module) -> dict[str, str]:
        """Stage and decoder paths, found in `model`'s module tree (meta device or loaded)."""

    def _load_model(self, cls: Any, path: Path, what: str) -> torch.nn.Module:
        """`cls` from `path` (load_pretrained), its stage paths found, `--adapter` merged into
        its decoder, placed on the devices: `self.module`, `self.config`."""
        model = load_pretrained(self, cls, path, what)  # type: ignore[arg-type]
        self._paths = self._build_paths(model)
        self.decoder_path = self._paths["decoder"]
        apply_adapter(self, model, self.decoder_path)  # type: ignore[arg-type]
        self.module = self.place(model).eval()  # type: ignore[attr-defined]
        self.config = model.config
        return model

    def _stages(self, view: str, encoder: str = "encoder") -> dict[str, str]:
        """The stage map of a model with a modal and a text view: decoder blocks and final norm;
        modal: `encoder` = the path named `encoder` in `_build_paths`, `adapter`; text: `adapter` =
        the token embeddings."""
        p = self._ensure_paths()
        stages = decoder_stage_paths(p["decoder"], self.n_layers)  # type: ignore[attr-defined]
        if view == "text":
            stages["adapter"] = p["embed"]
        elif view == "modal":
            stages.update(encoder=p[encoder], adapter=p["adapter"])
        else:
            raise MchError(f"model {self.spec.name!r} has no view {view!r}; use modal or text")  # type: ignore[attr-defined]
        return stages

    def _text_ids(self, sample: Sample, protocol: str, query: str = "") -> tuple[list[int], list[bool]]:
        """The text view's prompt ids for `sample` (its paired text where the media would be)
        and which of them are the text."""
        prompt, span = self.render_prompt(protocol, "text", require_text(sample), query)
        assert span is not None
        return text_span(self.tokenizer, prompt, span[0], span[1], sample.sample_id)  # type: ignore[attr-defined]

    def decoder(self) -> torch.nn.Module:
        return resolve_module(self.module, self.decoder_path)  # type: ignore[attr-defined]

    def inner(self) -> torch.nn.Module:
        return resolve_module(self.module, self.inner_path) if self.inner_path else self.module  # type: ignore[attr-defined]

    def _ensure_paths(self) -> dict[str, str]:
        """Stage paths before the weights are loaded: the module tree built from the
        checkpoint's config on the meta device (no memory)."""
        if self._paths is None:  # type: ignore[has-type]
            import transformers
            from transformers import AutoConfig

            path = checkpoint_dir(self)  # type: ignore[arg-type]
            trust = bool(self.trust_remote_code)  # type: ignore[attr-defined]  # never None: None prompts on stdin
            try:
                cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
            except Exception as exc:  # noqa: BLE001
                raise MchError(
                    f"model {self.spec.name!r}: cannot read the config in {path} ({_one_line(exc)})"
                ) from None  # type: ignore[attr-defined]
            cls = getattr(transformers, self.hf_class)
            with torch.device("meta"):
                model = cls.from_config(cfg, trust_remote_code=trust) if self.hf_class.startswith("Auto") else cls(cfg)
                self._paths = self._build_paths(model)  # type: ignore[attr-defined]
        return self._paths

    def lora_target(self) -> str:
        """The LLM decoder stack: where `--adapter` LoRAs are merged (known before load too)."""
        return self.decoder_path or self._ensure_paths()["decoder"]  # type: ignore[attr-defined]

    def prompt_id(self, protocol: str, view: str) -> str:
        """What identifies the prompt in store keys (known before the model loads)."""
        return f"{protocol}/{view}/{self._instruction(protocol)}"  # type: ignore[attr-defined]

    def prompt_embeds(
        self, samples: Sequence[Sample], query: str, view: str = "modal", protocol: str = "default", grad: bool = False
    ) -> list[torch.Tensor]:
        """Per-sample decoder input (P_i, D) for a scoring prompt: media (or text) + query."""
        inputs, _ = self._prepare_inputs(samples, protocol, view, query)  # type: ignore[attr-defined]
        with torch.enable_grad() if grad else torch.no_grad():
            x = decoder_inputs(self.inner(), self.decoder(), inputs)
        att = inputs["attention_mask"].bool()
        return [x[i][att[i]] for i in range(x.shape[0])]

    def _continuations(self, protocol: str, view: str, query: str, continuations: Sequence[str]) -> list[list[int]]:
        return continuation_ids(self.tokenizer, self._score_context(protocol, view, query), continuations)  # type: ignore[attr-defined]

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> ScoreParts:
        from mch.model import ScoreParts

        self._require_loaded()
        conts = self._continuations(protocol, view, query, continuations)
        return ScoreParts(self.module, self.prompt_embeds(samples, query, view, protocol, grad=grad), conts)  # type: ignore[attr-defined]

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        self._require_loaded()
        conts = self._continuations(protocol, view, query, continuations)
        bs = int(self.options.get("batch_size", self.batch_size_default))  # type: ignore[attr-defined]
        rows = []
        for i in range(0, len(samples), bs):
            with torch.inference_mode():
                x, m = left_pad(self.prompt_embeds(samples[i : i + bs], query, view, protocol))
                logp, _ = score_shared_prefix(self.module, x, m, conts)  # type: ignore[attr-defined]
            rows.append(logp)
        logp = torch.cat(rows, 0) if rows else torch.zeros(0, len(conts))
        return Scores(logp=logp.numpy(), n_tokens=np.array([len(c) for c in conts]))

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> LossTerms:
        """Next-token logits and targets for causal tests (position t predicts token t+1).
        default: the paired text as the answer after the modal prompt, scored on its tokens;
        paper: the reference's quantity, labels = the prompt's own input ids at every position."""
        from mch.model import LossTerms

        self._require_loaded()
        view = self.views[0]  # type: ignore[attr-defined]
        if protocol == "paper":
            inputs, _ = self._prepare_inputs(samples, "paper", view)  # type: ignore[attr-defined]
            targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        else:
            context = self._score_context("default", view, "")  # type: ignore[attr-defined]
            suffix = [
                continuation_ids(self.tokenizer, context, [require_text(s)], sep=self.answer_sep)[0]  # type: ignore[attr-defined]
                for s in samples
            ]
            inputs, _ = self._prepare_inputs(samples, "default", view, suffix=suffix)  # type: ignore[attr-defined]
            targets = torch.full_like(inputs["input_ids"], -100)
            lengths = inputs["attention_mask"].sum(1).tolist()
            for i, (n, suf) in enumerate(zip(lengths, suffix, strict=True)):
                targets[i, n - len(suf) : n] = torch.tensor(suf, device=targets.device)
        with torch.enable_grad() if grad else torch.inference_mode():
            logits = self.module(**inputs).logits  # type: ignore[attr-defined]
        return LossTerms(logits[:, :-1], targets[:, 1:])

    def _require_loaded(self) -> None:
        if self.module is None:  # type: ignore[attr-defined]
            raise MchError(f"model {self.spec.name!r} is not loaded")  # type: ignore[attr-defined]

    def forward(self, prepared: Prepared) -> Any:
        return self.inner()(**prepared.inputs)


def mono_waveform(s: Any, model: str, target: int) -> np.ndarray:
    """A sample's (waveform, sample_rate) media as a mono float32 waveform at `target` Hz; a
    sample without one is a SampleError naming it (the audio plugins' one reader)."""
    from mch.api import SampleError

    media = s.media
    if not (isinstance(media, tuple) and len(media) == 2):
        raise SampleError(
            f"sample {s.sample_id}: model {model!r} needs (waveform, sample_rate), got {type(media).__name__}",
            sample_id=s.sample_id,
        )
    wav, sr = np.asarray(media[0], dtype=np.float32), int(media[1])
    if wav.ndim != 1 or wav.size == 0:
        raise SampleError(
            f"sample {s.sample_id}: expected a non-empty mono waveform, got shape {wav.shape}",
            sample_id=s.sample_id,
        )
    return resample(wav, sr, target)
