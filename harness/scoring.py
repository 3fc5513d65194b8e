"""Scoring continuations after a prompt with a shared prefix.

GMI asks a decoder for log p(v | Q(x)) for every verbalizer v of every class: K short
continuations after one long prompt (hundreds of modality tokens). Running the prompt once
and reusing its KV cache for the K continuations costs about one forward pass instead of K.
`score_full` is the plain way (each continuation as a full sequence): the benchmark's
baseline and the tests' reference.
"""

from __future__ import annotations

from typing import Sequence

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
        out[i, P - e.shape[0]:] = e
        mask[i, P - e.shape[0]:] = 1
    return out, mask


@torch.inference_mode()
def score_shared_prefix(lm: torch.nn.Module, prefix_embeds: torch.Tensor, prefix_mask: torch.Tensor,
                        continuations: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(continuation_k | prefix_b) summed over tokens, for a left-padded prefix batch.

    `lm` is an HF causal LM accepting `inputs_embeds`, `attention_mask`, `position_ids`,
    `past_key_values`. Returns (B, K) float32 log-probs and (K,) token counts."""
    B = prefix_embeds.shape[0]
    K = len(continuations)
    if any(len(c) == 0 for c in continuations):
        raise ValueError("a continuation tokenized to nothing")
    out = lm(inputs_embeds=prefix_embeds, attention_mask=prefix_mask, position_ids=_positions(prefix_mask),
             use_cache=True)
    first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
    Lc = max(len(c) for c in continuations)
    dev = prefix_embeds.device
    cont = torch.zeros(K, Lc, dtype=torch.long, device=dev)
    cmask = torch.zeros(K, Lc, dtype=torch.long, device=dev)
    for k, c in enumerate(continuations):
        cont[k, : len(c)] = torch.tensor(list(c), device=dev)
        cmask[k, : len(c)] = 1
    n_tokens = cmask.sum(-1)
    total = first_logp[:, cont[:, 0]]  # (B, K)
    if Lc > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(K)
        full_mask = torch.cat([prefix_mask.repeat_interleave(K, 0), cmask.repeat(B, 1)], dim=1)
        pos = _positions(full_mask)[:, prefix_mask.shape[1]:]
        ids = cont.repeat(B, 1)  # row b*K + k
        step = lm(input_ids=ids[:, :-1], attention_mask=full_mask[:, :-1], position_ids=pos[:, :-1],
                  past_key_values=cache, use_cache=True)
        logp = torch.log_softmax(step.logits.float(), dim=-1)  # (B*K, Lc-1, V)
        tok = torch.gather(logp, -1, ids[:, 1:, None]).squeeze(-1) * cmask.repeat(B, 1)[:, 1:]
        total = total + tok.sum(-1).view(B, K)
    return total.float().cpu(), n_tokens.cpu()


@torch.inference_mode()
def score_full(lm: torch.nn.Module, prefix_embeds: torch.Tensor, prefix_mask: torch.Tensor,
               continuations: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers as `score_shared_prefix`, running prefix + continuation K times."""
    emb = lm.get_input_embeddings()
    B = prefix_embeds.shape[0]
    res = torch.zeros(B, len(continuations))
    for k, c in enumerate(continuations):
        ids = torch.tensor(list(c), device=prefix_embeds.device)
        ce = emb(ids)[None].expand(B, -1, -1).to(prefix_embeds.dtype)
        x = torch.cat([prefix_embeds, ce], dim=1)
        m = torch.cat([prefix_mask, torch.ones(B, len(c), dtype=prefix_mask.dtype, device=prefix_mask.device)], 1)
        logits = lm(inputs_embeds=x, attention_mask=m, position_ids=_positions(m)).logits.float()
        P = prefix_embeds.shape[1]
        logp = torch.log_softmax(logits[:, P - 1: P - 1 + len(c)], dim=-1)
        res[:, k] = torch.gather(logp, -1, ids[None, :, None].expand(B, -1, 1)).squeeze(-1).sum(-1).cpu()
    return res, torch.tensor([len(c) for c in continuations])


def continuation_logits(lm: torch.nn.Module, prefixes: Sequence[torch.Tensor],
                        continuations: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i's continuation after row i's prefix in one forward pass, differentiable (for
    losses and training, where each row has its own target). Returns logits (B, Lc, V), where
    `logits[i, t]` predicts `targets[i, t]`, and targets (B, Lc) with -100 past each
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
    emb = lm.get_input_embeddings()(ids).to(x.dtype)
    full = torch.cat([x, emb], 1)
    fmask = torch.cat([m, cmask], 1)
    # only the last Lc + 1 positions' logits are needed: [P-1, P+Lc-1)
    kw = dict(inputs_embeds=full, attention_mask=fmask, position_ids=_positions(fmask), use_cache=False)
    try:
        logits = lm(**kw, logits_to_keep=Lc + 1).logits
    except TypeError:  # an LM without logits_to_keep
        logits = lm(**kw).logits
    start = logits.shape[1] - (Lc + 1)  # 0 when only the kept positions came back, else P - 1
    logits = logits[:, start: start + Lc]
    return logits, ids.masked_fill(cmask == 0, -100)
