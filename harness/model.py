"""The model-plugin base class and the prepared-batch type capture consumes.

A model plugin owns everything model-specific: loading (checkpoint, revision, dtype,
device, PEFT adapter), preprocessing into inputs plus token spans (`prepare`), the stage map
(stage name -> module path, as data), and scoring continuations (`score`). The harness only
hooks the modules the stage map names and pools them with the masks `prepare` returns.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .api import MchError, ModelSpec, Param, Sample, check_options, stage_sort_key  # also re-exported from here

STAGE_ORDER_GROUPS = ("encoder", "adapter", "llm")


@dataclass
class Pool:
    """How to pool one group of stages (`encoder`, `adapter` or `llm`).

    The hooked tensor has shape (R, T, D). `owner[r]` is the sample row r belongs to (R may
    exceed the batch: Ultravox emits one row per 30 s chunk); `masks[span]` is a bool (R, T)
    saying which positions the span covers. A missing span falls back to `all` = every
    non-padding position given by masks['all'] (or every position if that is absent too)."""

    owner: torch.Tensor
    masks: dict[str, torch.Tensor]
    split: torch.Tensor | None = None

    @classmethod
    def proportional(cls, weights: Sequence[int] | torch.Tensor) -> Pool:
        """A pool for a stage whose output, flattened to rows (every dim but the last), holds
        each sample's rows in batch order, as many as `weights[i]` times a common factor
        (e.g. projector rows per modality token: 1 in LLaVA, 4 before a 2x2 patch merger).
        Every row is real: spans `modality` and `all` both take them all."""
        w = torch.as_tensor(weights, dtype=torch.long)
        return cls(owner=torch.arange(len(w)), masks={}, split=w)

    def for_output(self, hidden: torch.Tensor) -> Pool:
        """This pool laid out for one stage output `hidden` (R, T, D) or (R, D): a proportional
        pool becomes an ordinary one (owner per row, every position real); others come back
        as they are. For code that reads `owner`/`masks` against a hooked tensor."""
        if self.split is None:
            return self
        R, T = hidden.shape[0], (hidden.shape[1] if hidden.dim() == 3 else 1)
        flat = self.split_owner(R * T).view(R, T)
        if bool((flat != flat[:, :1]).any()):
            raise MchError(f"a stage output of shape {tuple(hidden.shape)} has rows shared by two samples")
        ones = torch.ones(R, T, dtype=torch.bool)
        return Pool(flat[:, 0].clone(), {"modality": ones, "all": ones})

    def split_owner(self, rows: int) -> torch.Tensor:
        """Owner of each of `rows` flattened rows under `proportional` (one clear error if the
        rows cannot be split that way)."""
        assert self.split is not None
        total = int(self.split.sum())
        if total <= 0 or rows % total or bool((self.split <= 0).any()):
            raise MchError(
                f"a stage output of {rows} rows cannot be split over samples in proportion to {self.split.tolist()}"
            )
        return torch.repeat_interleave(torch.arange(len(self.split)), self.split * (rows // total))


@dataclass
class Prepared:
    inputs: dict[str, Any]
    pools: dict[str, Pool]
    n: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossTerms:
    """What a decoder loss is computed from: logits at the positions the loss scores, aligned
    with their targets (`logits[b, p]` is the distribution that predicts `targets[b, p]`;
    -100 = position not scored). Kept whole so analyses can also compare distributions (KL)."""

    logits: torch.Tensor  # (B, P, V)
    targets: torch.Tensor  # (B, P) long

    @property
    def valid(self) -> torch.Tensor:
        return self.targets != -100

    def token_nll(self) -> torch.Tensor:
        """(B, P) float32 negative log-likelihood of each target, 0 where not scored."""
        lp = torch.log_softmax(self.logits.float(), dim=-1)
        nll = -torch.gather(lp, -1, self.targets.clamp(min=0)[..., None]).squeeze(-1)
        return nll * self.valid

    def mean_nll(self) -> torch.Tensor:
        """(B,) mean cross-entropy (nats) over each row's scored positions."""
        return self.token_nll().sum(1) / self.valid.sum(1).clamp(min=1)


@dataclass
class ScoreParts:
    """What continuation scoring runs on: `lm`, a causal LM accepting `inputs_embeds`,
    `attention_mask`, `position_ids` (returns `.logits`); `prefixes[i]` (P_i, D), the exact
    decoder input of sample i's prompt (media merged in); `continuations[k]`, the token ids of
    continuation k as they follow that prompt; `positions[i]`, prompt i's own position ids,
    (P_i,) or (A, P_i) for a model with A position axes (M-RoPE), when they are not 0..P_i-1
    (pass them to `mch.scoring`'s functions)."""

    lm: torch.nn.Module
    prefixes: list[torch.Tensor]
    continuations: list[list[int]]
    positions: list[torch.Tensor] | None = None


@dataclass
class Scores:
    """log p(continuation | prompt) summed over the continuation's tokens, (B, K), and the
    token count of each continuation, (K,) or (B, K)."""

    logp: Any
    n_tokens: Any


def stage_map_of(plugin: ModelPlugin, view: str, protocol: str) -> dict[str, str]:
    """`plugin.stage_map(view, protocol)`; a plugin written before the protocol argument
    (one stage map for both protocols) is called with the view alone."""
    import inspect

    try:
        takes = "protocol" in inspect.signature(plugin.stage_map).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        takes = True
    return plugin.stage_map(view, protocol) if takes else plugin.stage_map(view)


def stage_group(stage: str) -> str:
    return "llm" if stage.startswith("llm.") else stage


def resolve_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The module at a dotted `path` of `root`; a trailing `:input` (a hook point on the
    module's input, see `mch.hooks`) is ignored."""
    if path.endswith(":input"):
        path = path[: -len(":input")]
    mod: Any = root
    for part in path.split("."):
        if part.isdigit() and isinstance(mod, (torch.nn.ModuleList, torch.nn.Sequential)):
            idx = int(part)
            if idx >= len(mod):
                raise AttributeError(part)
            mod = mod[idx]
        else:
            mod = getattr(mod, part)
    if not isinstance(mod, torch.nn.Module):
        raise AttributeError(path)
    return mod


class ModelPlugin(abc.ABC):
    """Base for model plugins. Subclasses implement `load`, `stage_map`, `prepare`, `score`
    (abstract: a class missing one cannot be created); `loss_terms` and `score_parts` where
    the analyses that use them (ablation, swap, gradient, lipschitz, bound, lora) should run.

    `self.module` is the loaded `nn.Module` every stage path is relative to. `forward(inputs)`
    runs it as far as capture needs (no LM head) and is what capture calls."""

    modality = "speech"
    # the options this model takes (registry `options:`, --model-option), checked before any
    # work; None: undeclared, passed unchecked. Every model also takes `default_dataset`.
    option_specs: ClassVar[dict[str, Param] | None] = None
    # the only datasets this model can read (None: any dataset of its modality)
    datasets: ClassVar[tuple[str, ...] | None] = None
    # can `load` split the model over devices (--device-map, --max-memory; `place`)?
    supports_device_map: ClassVar[bool] = False

    def __init__(
        self,
        spec: ModelSpec,
        checkpoint: str | None = None,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        device_map: str | None = None,
        max_memory: dict[Any, str] | None = None,
        **options: Any,
    ) -> None:
        self.spec = spec
        self.checkpoint = checkpoint or spec.checkpoint
        self.revision = revision if revision is not None else spec.revision
        self.device = device
        self.dtype_name = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        self.adapter = adapter
        self.trust_remote_code = trust_remote_code
        self.options = check_options("model", spec.name, self.option_specs, {**spec.options, **options})
        self.module: torch.nn.Module | None = None
        self.device_map = device_map  # accelerate's placement strategy (mch.placement), or None: one device
        self.max_memory = max_memory

    # -- where the weights go (mch.placement)
    def pretrained_kwargs(self) -> dict[str, Any]:
        """What `from_pretrained` gets for --device-map/--max-memory ({} on one device)."""
        if self.device_map is None:
            return {}
        from . import dist, placement

        return {
            "device_map": self.device_map,
            "max_memory": placement.max_memory_map(self.device, self.max_memory, dist.ranks()),
        }

    def place(self, module: torch.nn.Module, no_split: Sequence[str] = ()) -> torch.nn.Module:
        """`module` on --device, or split by --device-map: a module `from_pretrained` already
        placed (with `pretrained_kwargs`) is checked; one built in code is dispatched with
        accelerate, keeping each `no_split` class (decoder layers) on one device."""
        if self.device_map is None:
            return module.to(self.device)
        from . import dist, placement

        if getattr(module, "_mch_placed", False) or hasattr(module, "hf_device_map"):
            placement.check_fits(module, self.spec.name, self.device_map, self.max_memory)
            return module
        return placement.dispatch(
            module,
            self.spec.name,
            self.device,
            self.device_map,
            self.max_memory,
            dist.ranks(),
            list(no_split),
            self.torch_dtype,
        )

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: --device, or under --device-map the device of the first module that
        reads them (the input embeddings; accelerate's hooks move what later blocks need)."""
        if self.device_map is None or self.module is None:
            return torch.device(self.device)
        get = getattr(self.module, "get_input_embeddings", None)
        first = None
        try:
            first = get() if callable(get) else None
        except (NotImplementedError, AttributeError):
            first = None
        for m in ([first] if first is not None else []) + [self.module]:
            where = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
            if where is not None:
                return torch.device(where)
            for t in m.parameters():
                if not t.is_meta:
                    return t.device
        return torch.device(self.device)

    def placement(self) -> dict[str, Any] | None:
        """How --device-map placed the loaded model (for the manifest and records), or None."""
        if self.device_map is None or self.module is None:
            return None
        from . import placement

        return {"device_map": placement.summary(self.device_map, self.max_memory, self.module)}

    # -- identity, recorded in every store key and result
    def identity(self) -> dict[str, Any]:
        from .checkpoints import is_smoke_checkpoint

        ident: dict[str, Any] = {
            "name": self.spec.name,
            "checkpoint": self.checkpoint,
            "revision": self.revision,
            "adapter": self.adapter,
            "dtype": self.dtype_name,
        }
        if is_smoke_checkpoint(self.checkpoint):  # random weights built for tests (checkpoints.SMOKE_KEY)
            ident["smoke"] = True
        return ident

    def check_checkpoint(self, path: Any) -> None:
        """Raise MchError when `path` (the resolved checkpoint, `checkpoint_paths()[0]`) does not
        have the shape `load` needs. The runner calls it before anything reads the files (the
        fingerprint hashes them), so `--checkpoint /tmp` is one sentence, not a walk of /tmp.
        Default: a Hugging Face directory, with config.json at its top; override for others."""
        from pathlib import Path

        p = Path(str(path)).expanduser()
        if p.is_dir() and not (p / "config.json").is_file():
            raise MchError(
                f"model {self.spec.name!r}: --checkpoint {p} is not a checkpoint directory (no config.json "
                f"at its top); pass --checkpoint with the model's own directory (config.json, weights, "
                f"tokenizer) or an HF id in the local cache"
            )

    def checkpoint_paths(self) -> list[Any]:
        """The local directories (or files) this plugin reads weights, configs and tokenizers
        from: the resolved `checkpoint` (a local directory or its Hugging Face cache snapshot).
        The runner fingerprints them into the store key, so weights rebuilt in place are
        extracted again. Override to add what else `load` reads (base checkpoints a config
        names, `builtin:` weights); raise MchError when the checkpoint is not here."""
        from .checkpoints import resolve_checkpoint

        return [resolve_checkpoint(str(self.checkpoint), self.revision, self.spec.name)]

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[self.dtype_name]
        except KeyError:
            raise MchError(f"unknown --dtype {self.dtype_name!r}; use float32, bfloat16 or float16") from None

    # -- to implement
    @abc.abstractmethod
    def load(self) -> None:
        """Load the checkpoint (and `adapter`) onto `device` in `dtype`; set `self.module`. A
        checkpoint that is not here is one MchError naming it and the flag that sets it."""

    @abc.abstractmethod
    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """Stage name -> hook point relative to `self.module` for `view` (modal or text) under
        `protocol`: a module path (its output) or `path:input` (its first input)."""

    @abc.abstractmethod
    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        """The model's inputs for a batch and, per stage group, how to pool them (`Pool`)."""

    @abc.abstractmethod
    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        """log p(continuation | sample's prompt + query) for every continuation (GMI)."""

    def loss(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> torch.Tensor:
        """Per-sample mean next-token cross-entropy (nats), shape (B,), for causal tests.

        `default`: on the content tokens (the paired transcript/caption placed after the
        modal prompt), logits aligned to labels for this architecture; `paper`: over the
        prompt's own input ids, as the reference did. Analyses edit the decoder input by a
        forward hook on the module at `stage_map()["adapter"]`; with `grad=True` the graph is
        kept so they can differentiate with respect to that module's output.
        Computed from `loss_terms`, which a plugin implements."""
        return self.loss_terms(samples, protocol, grad).mean_nll()

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> LossTerms:
        """The logits and aligned targets `loss` averages over (see `loss`). Optional: the
        analyses that need a decoder loss need it."""
        raise MchError(
            f"model {self.spec.name!r} does not implement loss_terms (the decoder loss this analysis "
            f"needs); see docs/contributing-a-model.md"
        )

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> ScoreParts:
        """The decoder inputs `score` runs on (prompt + query per sample, continuation ids), as
        ordinary tensors (no inference mode) so a caller may train through the LM (LoRA) or,
        with `grad=True`, differentiate through the prompt's encoder and adapter. Optional:
        the analyses that differentiate through scoring need it."""
        raise MchError(
            f"model {self.spec.name!r} does not implement score_parts (the scoring inputs this analysis "
            f"needs); see docs/contributing-a-model.md"
        )

    def lora_target(self) -> str:
        """Path (relative to `self.module`) of the LLM module a PEFT `--adapter` is applied
        to; an adapter trained on this module loads back through `--adapter`."""
        raise MchError(f"model {self.spec.name!r} does not support LoRA adapters")

    def forward(self, prepared: Prepared) -> Any:
        assert self.module is not None
        return self.module(**prepared.inputs)

    # -- shared helpers
    def stages(self, view: str = "modal") -> list[str]:
        return sorted(self.stage_map(view), key=stage_sort_key)

    def validate_stage_map(self, view: str = "modal") -> None:
        """Every declared stage must resolve in the loaded module tree: one clear error if not."""
        if self.module is None:
            raise MchError(f"model {self.spec.name!r} is not loaded")
        points = {(st, p) for protocol in ("default", "paper") for st, p in stage_map_of(self, view, protocol).items()}
        for stage, path in sorted(points):
            try:
                resolve_module(self.module, path)
            except AttributeError:
                raise MchError(
                    f"model {self.spec.name!r}: stage {stage!r} maps to module path {path!r}, "
                    f"which does not exist in the loaded model"
                ) from None
