"""Scoring continuations after a prompt with a shared prefix.

GMI asks a decoder for log p(v | Q(x)) for every verbalizer v of every class: K short
continuations after one long prompt (hundreds of modality tokens). Running the prompt once
and reusing its KV cache for the K continuations costs about one forward pass instead of K.
`score_full` is the plain way (each continuation as a full sequence): the benchmark's
baseline and the tests' reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(embeds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (P_i, D) prompts into (B, P, D) with left padding, plus the (B, P) mask.
    Left padding puts every prompt's last token in the last column."""
    P = max(e.shape[0] for e in embeds)
    D = embeds[0].shape[-1]
    out = embeds[0].new_zeros(len(embeds), P, D)
    mask = torch.zeros(len(embeds), P, dtype=torch.long, device=embeds[0].device)
    for i, e in enumerate(embeds):
        out[i, P - e.shape[0] :] = e
        mask[i, P - e.shape[0] :] = 1
    return out, mask


def left_pad_positions(positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-prompt position ids, (P_i,) or (A, P_i) for a model with A position axes
    (M-RoPE: A = 3), into (B, P) or (A, B, P) with left padding (pads get position 0)."""
    P = max(p.shape[-1] for p in positions)
    lead = tuple(positions[0].shape[:-1])
    out = positions[0].new_zeros(lead + (len(positions), P))
    for i, p in enumerate(positions):
        out[..., i, P - p.shape[-1] :] = p
    return out


def next_positions(position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the first token after each prompt: one past the largest position of
    its real tokens, on every axis. For 1-D positions that is the prompt's length; after an
    image under M-RoPE text resumes at max(t, h, w) + 1, as the models' own rope index does."""
    pos = position_ids if position_ids.dim() == 3 else position_ids[None]
    real = mask.bool()[None].expand_as(pos)
    return torch.where(real, pos, torch.full_like(pos, -1)).amax(dim=(0, 2)) + 1


def continuation_positions(start: torch.Tensor, length: int, axes: int | None) -> torch.Tensor:
    """Positions of `length` text tokens from `start` (B,): (B, length), or (axes, B, length)."""
    pos = start[:, None] + torch.arange(length, device=start.device)[None]
    return pos if axes is None else pos[None].expand(axes, -1, -1)


def cache_kwarg(lm: torch.nn.Module) -> str:
    """transformers 5.25 renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"


def cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def score_after_prefix(
    lm: torch.nn.Module,
    first_logits: torch.Tensor,
    cache: Any,
    prefix_mask: torch.Tensor,
    start: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    axes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The continuation half of shared-prefix scoring, for a prompt batch already run.

    `first_logits` (B, V): the logits at each prompt's last real token; `cache` the prompt's
    KV cache; `prefix_mask` (B, P) which cache positions are real (any padding side); `start`
    (B,) the position of each prompt's first continuation token (`next_positions`); `axes`
    the number of position axes (None: 1-D). Returns (B, K) summed log-probs and (K,) counts."""
    B = first_logits.shape[0]
    K = len(continuations)
    if any(len(c) == 0 for c in continuations):
        raise ValueError("a continuation tokenized to nothing")
    first_logp = torch.log_softmax(first_logits.float(), dim=-1)  # (B, V)
    Lc = max(len(c) for c in continuations)
    dev = first_logits.device
    cont = torch.zeros(K, Lc, dtype=torch.long, device=dev)
    cmask = torch.zeros(K, Lc, dtype=torch.long, device=dev)
    for k, c in enumerate(continuations):
        cont[k, : len(c)] = torch.tensor(list(c), device=dev)
        cmask[k, : len(c)] = 1
    n_tokens = cmask.sum(-1)
    total = first_logp[:, cont[:, 0]]  # (B, K)
    if Lc > 1:
        cache.batch_repeat_interleave(K)
        full_mask = torch.cat([prefix_mask.long().repeat_interleave(K, 0), cmask.repeat(B, 1)], dim=1)
        pos = continuation_positions(start.to(dev).repeat_interleave(K), Lc - 1, axes)
        ids = cont.repeat(B, 1)  # row b*K + k
        step = lm(
            input_ids=ids[:, :-1],
            attention_mask=full_mask[:, :-1],
            position_ids=pos,
            use_cache=True,
            **{cache_kwarg(lm): cache},
        )
        logp = torch.log_softmax(step.logits.float(), dim=-1)  # (B*K, Lc-1, V)
        tok = torch.gather(logp, -1, ids[:, 1:, None]).squeeze(-1) * cmask.repeat(B, 1)[:, 1:]
        total = total + tok.sum(-1).view(B, K)
    return total.float().cpu(), n_tokens.cpu()


@torch.inference_mode()
def score_shared_prefix(
    lm: torch.nn.Module,
    prefix_embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    prefix_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(continuation_k | prefix_b) summed over tokens, for a left-padded prefix batch.

    `lm` is an HF causal LM accepting `inputs_embeds`, `attention_mask`, `position_ids`,
    `past_key_values`. `prefix_positions` (B, P) or (A, B, P) are the prompts' own position
    ids (e.g. M-RoPE's, `left_pad_positions`); default 0..P_i-1. Returns (B, K) float32
    log-probs and (K,) token counts."""
    pos = _positions(prefix_mask) if prefix_positions is None else prefix_positions
    out = lm(inputs_embeds=prefix_embeds, attention_mask=prefix_mask, position_ids=pos, use_cache=True)
    return score_after_prefix(
        lm,
        out.logits[:, -1],
        cache_of(out),
        prefix_mask,
        next_positions(pos, prefix_mask),
        continuations,
        pos.shape[0] if pos.dim() == 3 else None,
    )


@torch.inference_mode()
def score_full(
    lm: torch.nn.Module,
    prefix_embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    prefix_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers as `score_shared_prefix`, running prefix + continuation K times."""
    # torch types a Module's attributes Tensor | Module; get_input_embeddings is the HF method
    emb = lm.get_input_embeddings()  # type: ignore[operator]
    B = prefix_embeds.shape[0]
    ppos = _positions(prefix_mask) if prefix_positions is None else prefix_positions
    axes = ppos.shape[0] if ppos.dim() == 3 else None
    start = next_positions(ppos, prefix_mask)
    res = torch.zeros(B, len(continuations))
    for k, c in enumerate(continuations):
        ids = torch.tensor(list(c), device=prefix_embeds.device)
        ce = emb(ids)[None].expand(B, -1, -1).to(prefix_embeds.dtype)
        x = torch.cat([prefix_embeds, ce], dim=1)
        m = torch.cat([prefix_mask, torch.ones(B, len(c), dtype=prefix_mask.dtype, device=prefix_mask.device)], 1)
        pos = torch.cat([ppos, continuation_positions(start, len(c), axes)], -1)
        logits = lm(inputs_embeds=x, attention_mask=m, position_ids=pos).logits.float()
        P = prefix_embeds.shape[1]
        logp = torch.log_softmax(logits[:, P - 1 : P - 1 + len(c)], dim=-1)
        res[:, k] = torch.gather(logp, -1, ids[None, :, None].expand(B, -1, 1)).squeeze(-1).sum(-1).cpu()
    return res, torch.tensor([len(c) for c in continuations])


def continuation_logits(
    lm: torch.nn.Module,
    prefixes: Sequence[torch.Tensor],
    continuations: Sequence[Sequence[int]],
    positions: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i's continuation after row i's prefix in one forward pass, differentiable (for
    losses and training, where each row has its own target). `positions[i]` are prefix i's
    own position ids (`ScoreParts.positions`; default 0..P_i-1). Returns logits (B, Lc, V),
    where `logits[i, t]` predicts `targets[i, t]`, and targets (B, Lc) with -100 past each
    continuation's end."""
    if len(prefixes) != len(continuations):
        raise ValueError("one continuation per prefix is needed")
    if any(len(c) == 0 for c in continuations):
        raise ValueError("a continuation tokenized to nothing")
    x, m = left_pad(prefixes)
    B, P = m.shape
    Lc = max(len(c) for c in continuations)
    ids = torch.zeros(B, Lc, dtype=torch.long, device=x.device)
    cmask = torch.zeros(B, Lc, dtype=torch.long, device=x.device)
    for i, c in enumerate(continuations):
        ids[i, : len(c)] = torch.tensor(list(c), device=x.device)
        cmask[i, : len(c)] = 1
    emb = lm.get_input_embeddings()(ids).to(x.dtype)  # type: ignore[operator]  # as in score_full
    full = torch.cat([x, emb], 1)
    fmask = torch.cat([m, cmask], 1)
    if positions is None:
        pos = _positions(fmask)
    else:
        ppos = left_pad_positions(positions).to(x.device)
        axes = ppos.shape[0] if ppos.dim() == 3 else None
        pos = torch.cat([ppos, continuation_positions(next_positions(ppos, m), Lc, axes)], -1)
    # only the last Lc + 1 positions' logits are needed: [P-1, P+Lc-1)
    kw = dict(inputs_embeds=full, attention_mask=fmask, position_ids=pos, use_cache=False)
    try:
        logits = lm(**kw, logits_to_keep=Lc + 1).logits
    except TypeError:  # an LM without logits_to_keep
        logits = lm(**kw).logits
    start = logits.shape[1] - (Lc + 1)  # 0 when only the kept positions came back, else P - 1
    logits = logits[:, start : start + Lc]
    return logits, ids.masked_fill(cmask == 0, -100)
