"""Forward hooks on declared stages, span-aware pooling, and an early stop.

One forward pass captures every requested stage. Each hook pools its output at once
(masked mean over the span, per sample, summing a sample's rows when it owns several, e.g.
Ultravox chunks) so nothing of size (B, T, D) is kept. After the deepest requested stage
has fired, the forward pass is stopped: layers above it and the LM head are never computed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .api import MchError
from .hooks import Fired, Trace
from .model import ModelPlugin, Pool, Prepared, stage_group, stage_map_of, stage_sort_key


def pool(hidden: torch.Tensor, spec: Pool | None, span: str, n: int) -> torch.Tensor:
    """Masked mean of (R, T, D) (or (R, D)) into (n, D) float32, per owner sample. A
    `Pool.proportional` spec flattens the output to rows first and splits them over samples."""
    if spec is not None and spec.split is not None:
        hidden = hidden.reshape(-1, 1, hidden.shape[-1])
        owner = spec.split_owner(hidden.shape[0])
        rows = torch.ones(hidden.shape[0], 1, dtype=torch.bool)
        if span == "last":  # each sample's last row
            rows[:-1, 0] = owner[1:] != owner[:-1]
        spec = Pool(owner, {span: rows, "all": rows})
    if hidden.dim() == 2:
        hidden = hidden[:, None, :]
    hidden = hidden.float()
    R, T, _ = hidden.shape
    if spec is None:
        if R != n:
            raise MchError(f"stage output has {R} rows for {n} samples and the model gave no pooling spec")
        owner = torch.arange(n, device=hidden.device)
        mask = torch.ones(R, T, dtype=torch.bool, device=hidden.device)
    else:
        owner = spec.owner.to(hidden.device)
        given = spec.masks.get(span)
        if given is None:
            given = spec.masks.get("all")
        if given is None:
            given = torch.ones(R, T, dtype=torch.bool)
        mask = given.to(hidden.device)
        if mask.shape != (R, T):
            raise MchError(f"span mask {tuple(mask.shape)} does not match stage output {(R, T)}")
    if span == "last":
        # keep only the last True position of each row
        idx = torch.arange(T, device=hidden.device).expand(R, T)
        last = torch.where(mask, idx, -1).max(dim=1).values
        mask = idx == last[:, None]
    w = mask.to(hidden.dtype)
    sums = torch.einsum("rt,rtd->rd", w, hidden)
    counts = w.sum(dim=1)
    out = torch.zeros(n, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    cnt = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    out.index_add_(0, owner, sums)
    cnt.index_add_(0, owner, counts)
    if bool((cnt == 0).any()):
        bad = torch.nonzero(cnt == 0).flatten().tolist()
        raise MchError(f"span {span!r} covers no position for batch rows {bad}")
    return out / cnt[:, None]


def capture(
    plugin: ModelPlugin,
    prepared: Prepared,
    stages: Iterable[str],
    span: str,
    view: str = "modal",
    protocol: str | None = None,
) -> dict[str, torch.Tensor]:
    """Run one forward pass and return {stage: (n, D) float32 CPU tensor}. The stage map is
    the one of `protocol` (default: the one `prepare` recorded in `prepared.info`)."""
    protocol = protocol or prepared.info.get("protocol", "default")
    stage_map = stage_map_of(plugin, view, protocol)
    stages = sorted(set(stages), key=stage_sort_key)
    unknown = [s for s in stages if s not in stage_map]
    if unknown:
        raise MchError(
            f"model {plugin.spec.name!r} has no stage {unknown[0]!r} in view {view!r}; "
            f"it declares: {', '.join(sorted(stage_map, key=stage_sort_key))}"
        )
    assert plugin.module is not None
    out: dict[str, torch.Tensor] = {}

    def pool_now(fired: Fired) -> None:  # pooled at once: nothing (B, T, D) is kept
        group = stage_group(fired.name)
        out[fired.name] = pool(fired.x.detach(), prepared.pools.get(group), span, prepared.n).cpu()

    with torch.inference_mode(), Trace(plugin.module, {s: stage_map[s] for s in stages}, fn=pool_now, stop=True):
        plugin.forward(prepared)
    remaining = [s for s in stages if s not in out]
    if remaining:
        raise MchError(f"model {plugin.spec.name!r}: stages {remaining} never fired during the forward pass")
    return out
