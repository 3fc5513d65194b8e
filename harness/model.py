"""The model-plugin base class and the prepared-batch type capture consumes.

A model plugin owns everything model-specific: loading (checkpoint, revision, dtype,
device, PEFT adapter), preprocessing into inputs plus token spans (`prepare`), the stage map
(stage name -> module path, as data), and scoring continuations (`score`). The harness only
hooks the modules the stage map names and pools them with the masks `prepare` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .api import MchError, ModelSpec, Sample, stage_sort_key  # noqa: F401 - re-exported

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

    logits: torch.Tensor   # (B, P, V)
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
    continuation k as they follow that prompt."""

    lm: torch.nn.Module
    prefixes: list[torch.Tensor]
    continuations: list[list[int]]


@dataclass
class Scores:
    """log p(continuation | prompt) summed over the continuation's tokens, (B, K), and the
    token count of each continuation, (K,) or (B, K)."""

    logp: Any
    n_tokens: Any


def stage_group(stage: str) -> str:
    return "llm" if stage.startswith("llm.") else stage


def resolve_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
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


class ModelPlugin:
    """Base for model plugins. Subclasses implement `load`, `stage_map`, `prepare`, `score`.

    `self.module` is the loaded `nn.Module` every stage path is relative to. `forward(inputs)`
    runs it as far as capture needs (no LM head) and is what capture calls."""

    modality = "speech"

    def __init__(
        self,
        spec: ModelSpec,
        checkpoint: str | None = None,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        **options: Any,
    ) -> None:
        self.spec = spec
        self.checkpoint = checkpoint or spec.checkpoint
        self.revision = revision if revision is not None else spec.revision
        self.device = device
        self.dtype_name = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        self.adapter = adapter
        self.trust_remote_code = trust_remote_code
        self.options = {**spec.options, **options}
        self.module: torch.nn.Module | None = None

    # -- identity, recorded in every store key and result
    def identity(self) -> dict[str, Any]:
        from .checkpoints import is_smoke_checkpoint

        ident = {
            "name": self.spec.name,
            "checkpoint": self.checkpoint,
            "revision": self.revision,
            "adapter": self.adapter,
            "dtype": self.dtype_name,
        }
        if is_smoke_checkpoint(self.checkpoint):  # random weights built for tests (checkpoints.SMOKE_KEY)
            ident["smoke"] = True
        return ident

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[self.dtype_name]
        except KeyError:
            raise MchError(f"unknown --dtype {self.dtype_name!r}; use float32, bfloat16 or float16") from None

    # -- to implement
    def load(self) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def stage_map(self, view: str = "modal") -> dict[str, str]:
        """Stage name -> module path relative to `self.module`, for `view` modal or text."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        raise NotImplementedError  # pragma: no cover - abstract

    def score(self, samples: Sequence[Sample], query: str, continuations: Sequence[str],
              protocol: str, view: str = "modal") -> Scores:
        raise NotImplementedError  # pragma: no cover - abstract

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
        """The logits and aligned targets `loss` averages over (see `loss`)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def score_parts(self, samples: Sequence[Sample], query: str, continuations: Sequence[str],
                    protocol: str, view: str = "modal", grad: bool = False) -> ScoreParts:
        """The decoder inputs `score` runs on (prompt + query per sample, continuation ids), as
        ordinary tensors (no inference mode) so a caller may train through the LM (LoRA) or,
        with `grad=True`, differentiate through the prompt's encoder and adapter."""
        raise NotImplementedError  # pragma: no cover - abstract

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
        for stage, path in self.stage_map(view).items():
            try:
                resolve_module(self.module, path)
            except AttributeError:
                raise MchError(
                    f"model {self.spec.name!r}: stage {stage!r} maps to module path {path!r}, "
                    f"which does not exist in the loaded model"
                ) from None
