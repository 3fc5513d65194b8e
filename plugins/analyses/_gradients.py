"""The decoder's log-likelihood and its gradient with respect to the adapter output, per sample
(lipschitz, bound): a forward hook makes the adapter output a float32 leaf, `ModelPlugin.loss`
gives the per-sample losses, and the gradient is reduced over each sample's span; and the
rows these analyses select."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mch.api import MchError, Sample

# --------------------------------------------------------------------------- gradient machinery


@contextlib.contextmanager
def adapter_leaf(model: Any, edit: Callable[[Any], Any] | None = None) -> Iterator[dict[str, Any]]:
    """While active, the adapter output z is replaced by a float32 leaf (state["z"]) that
    requires grad, passed through `edit` (z -> z') first if given."""
    from ._causal import edit_adapter

    state: dict[str, Any] = {"calls": 0}

    def leaf(h: Any) -> Any:
        z = h.detach().float().clone().requires_grad_(True)
        state["z"] = z
        state["calls"] += 1
        return (z if edit is None else edit(z)).to(h.dtype)

    with edit_adapter(model, leaf):
        yield state


def _layout(model: Any, batch: Sequence[Sample], protocol: str, span: str, z: Any) -> tuple[Any, Any]:
    """(owner (R,), mask (R, T)) of the adapter output rows, from the plugin's own pooling spec."""
    import torch

    R = z.shape[0]
    T = z.shape[1] if z.dim() == 3 else 1
    pool = model.prepare(batch, protocol, "modal").pools.get("adapter")
    if pool is not None:
        pool = pool.for_output(z)  # a proportional pool: laid out on z's rows
        mask = pool.masks.get(span)
        if mask is None:
            mask = pool.masks.get("all")
        if mask is not None and tuple(mask.shape) == (R, T) and pool.owner.shape[0] == R:
            return pool.owner.to(z.device), mask.to(z.device)
    if R == len(batch):
        return torch.arange(R, device=z.device), torch.ones(R, T, dtype=torch.bool, device=z.device)
    raise MchError(
        f"model {model.spec.name!r}: the adapter output has {R} rows for {len(batch)} samples and no "
        f"matching pooling spec; run lipschitz with --param lipschitz.batch_size=1"
    )


def _per_sample(g: Any, owner: Any, mask: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sequence norm, pooled gradient (n, D), pooled norm and span length per sample."""
    import torch

    if g.dim() == 2:
        g = g[:, None, :]
    sq = torch.zeros(n, dtype=torch.float64, device=g.device)
    sq.index_add_(0, owner, (g.double() ** 2).sum((1, 2)))
    w = mask.to(g.dtype)
    pooled = torch.zeros(n, g.shape[-1], dtype=torch.float64, device=g.device)
    pooled.index_add_(0, owner, torch.einsum("rt,rtd->rd", w, g).double())
    T = torch.zeros(n, dtype=torch.float64, device=g.device)
    T.index_add_(0, owner, w.sum(1).double())
    return (sq.sqrt().cpu().numpy(), pooled.cpu().numpy(), pooled.norm(dim=1).cpu().numpy(), T.cpu().numpy())


def decoder_gradients(
    model: Any, samples: Sequence[Sample], protocol: str, span: str, *, shift: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """log q and its gradient with respect to the adapter output for one batch.

    `shift` (B, D) is added to every position of sample b's span (the pooled vector moves by
    exactly shift[b]). Returns logq (B,), L_seq, L_pooled, T (B,), grad_pooled (B, D),
    and the tensors z, g, owner, mask for finite differences."""
    import torch

    B = len(samples)
    holder: dict[str, Any] = {}

    def layout(z):
        if "layout" not in holder:
            holder["layout"] = _layout(model, samples, protocol, span, z)
        return holder["layout"]

    def edit(z):
        if shift is None:
            return z
        owner, mask = layout(z)
        s = torch.as_tensor(shift, dtype=z.dtype, device=z.device)[owner]
        return z + (mask.to(z.dtype)[..., None] * s[:, None, :] if z.dim() == 3 else s)

    with adapter_leaf(model, edit) as st:
        loss = model.loss(samples, protocol, grad=True)
        if st["calls"] != 1:
            raise MchError(
                f"model {model.spec.name!r}: its adapter ran {st['calls']} times in one loss pass; "
                f"lipschitz needs exactly one adapter call per forward"
            )
        logq = -loss.float()
        (g,) = torch.autograd.grad(logq.sum(), st["z"])
    z = st["z"].detach()
    owner, mask = layout(z)
    L_seq, pooled, L_pooled, T = _per_sample(g.detach(), owner, mask, B)
    return {
        "logq": logq.detach().double().cpu().numpy(),
        "L_seq": L_seq,
        "L_pooled": L_pooled,
        "T": T,
        "grad_pooled": pooled,
        "z": z,
        "g": g.detach(),
        "owner": owner,
        "mask": mask,
    }


# --------------------------------------------------------------------------- rows


def select_rows(n_total: int, n: int, protocol: str, seed: int) -> np.ndarray:
    """paper: the first n rows (the reference's order); default: a seeded random subset."""
    n = min(int(n), n_total)
    if protocol == "paper":
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def rows_digest(rows: np.ndarray, ctx: Any) -> str:
    h = hashlib.sha256()
    for i in rows:
        h.update(ctx.samples[int(i)].sample_id.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def batched(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]
