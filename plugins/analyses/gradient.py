"""`gradient`: how sensitive the decoder's log-likelihood is along each eigenmode of its input
(science.md §5; the reference's script 11, analyses-causal-lora-tables.md §2).

A forward hook makes the adapter output a leaf z (float32); the model's log-likelihood
ℓ = -loss (default: content tokens; paper: prompt tokens) is differentiated with respect to
it, g = ∂ℓ/∂z (R, T, D), and reduced over each sample's modality tokens:
    paper    ḡ = the token mean of g, proj_k = |ḡ · u_k|            (the reference)
    default  ḡ = the token sum of g (the derivative for moving the sample's pooled vector,
             i.e. every token, by one unit), proj_k = |ḡ · u_k| · √λ_k: the change of ℓ for a
             typical (one standard deviation) displacement along mode k (W7)
g_k = mean over samples of proj_k; g_MS / g_TA = unweighted means of g_k over MS / TA modes;
g_ta_over_g_ms = g_TA / max(g_MS, 1e-10); correlation_g_alpha = Pearson r of (g_k, α_k).
CIs: bootstrap over samples. Paper modes: top 100, float64, Σ_T from the text baseline's
llm.final (script 11's quirk B3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric

from ._causal import (adapter_pool, batches, bootstrap, compute_modes, digest, edit_adapter, finite, frozen,
                      ids_digest, select_samples, text_stage_for)
from ._causal import grouped, sample_groups  # group bootstrap (science.md §8)
from ._params import check_params


def _stats(proj: np.ndarray, ms: np.ndarray, alpha: np.ndarray) -> tuple[float, float, float, float]:
    g = proj.mean(0)
    g_ms = float(g[ms].mean()) if ms.any() else 0.0
    g_ta = float(g[~ms].mean()) if (~ms).any() else 0.0
    ratio = g_ta / max(g_ms, 1e-10)
    corr = float(np.corrcoef(g, alpha)[0, 1]) if len(g) > 1 and g.std() > 0 and alpha.std() > 0 else float("nan")
    return g_ms, g_ta, ratio, corr


class Gradient(Analysis):
    name = "gradient"
    needs_model = True

    def default_params(self, protocol: str) -> dict[str, Any]:
        return {"n_samples": 200, "n_modes": 100 if protocol == "paper" else None, "threshold": 0.5,
                "alpha_scale": "none" if protocol == "paper" else "trace", "text_stage": None, "batch_size": 8,
                "scale_by_sqrt_lambda": protocol != "paper", "n_boot": 2000}

    def run(self, ctx: Any) -> AnalysisOutput:
        import torch

        from mch.capture import pool as pool_rows

        p, protocol = ctx.params, ctx.protocol
        check_params(self.name, p, self.default_params(protocol))
        stage = text_stage_for(ctx, protocol, p.get("text_stage"), quirk_final=True)
        modes = compute_modes(ctx, protocol, stage, p.get("n_modes"), float(p["threshold"]), str(p["alpha_scale"]),
                              analysis=self.name)
        rows = select_samples(ctx, p.get("n_samples"), protocol, need_text=protocol != "paper")
        samples = [ctx.samples[int(i)] for i in rows]
        token_sum = protocol != "paper"
        key = {"protocol": protocol, "samples": ids_digest(samples), "U": digest(modes.vectors), "span": ctx.span,
               "token_sum": token_sum}

        def compute() -> np.ndarray:
            model = ctx.model
            dev = next(model.module.parameters()).device
            U = torch.tensor(modes.vectors, dtype=torch.float32, device=dev)
            out = np.zeros((len(samples), U.shape[1]))
            at = 0
            with ctx.progress.task("gradient projection", len(samples)) as advance, frozen(model.module):
                for batch in batches(samples, int(p["batch_size"])):
                    n = len(batch)
                    pool = adapter_pool(model, batch, protocol)
                    leaf: dict[str, torch.Tensor] = {}

                    def fn(z: torch.Tensor) -> torch.Tensor:
                        leaf["z"] = z.detach().float().requires_grad_(True)
                        return leaf["z"].to(z.dtype)

                    with edit_adapter(model, fn):
                        loglik = -model.loss(batch, protocol, grad=True)
                    # rows of one sample only feed that sample's loss, so one backward gives every sample's g
                    (g,) = torch.autograd.grad(loglik.sum(), leaf["z"], allow_unused=True)
                    if g is None:  # the loss never read the adapter output
                        g = torch.zeros_like(leaf["z"])
                    gbar = pool_rows(g, pool, ctx.span, n)  # token mean per sample
                    if token_sum:
                        mask = pool.masks.get(ctx.span, pool.masks.get("all")) if pool is not None else None
                        counts = torch.zeros(n, device=g.device)
                        if mask is None:
                            counts += g.shape[1] if g.dim() == 3 else 1
                        else:
                            counts.index_add_(0, pool.owner.to(g.device), mask.to(g.device).float().sum(1))
                        gbar = gbar * counts[:, None]
                    out[at: at + n] = (gbar @ U).abs().detach().cpu().numpy()
                    at += n
                    advance(n)
            return out

        proj = ctx.cached("gradient_projections", key, compute)
        if bool(p["scale_by_sqrt_lambda"]):
            proj = proj * np.sqrt(np.maximum(modes.eigvals, 0))[None, :]
        return self._output(ctx, modes, samples, proj)

    def _output(self, ctx: Any, modes: Any, samples: list[Any], proj: np.ndarray) -> AnalysisOutput:
        n, seed, n_boot = len(samples), sample_groups(ctx, samples), int(ctx.params["n_boot"])
        ms, alpha = modes.ms, modes.alpha
        g_ms, g_ta, ratio, corr = _stats(proj, ms, alpha)
        cis = [bootstrap(lambda idx, j=j: _stats(proj[idx], ms, alpha)[j], n, seed, n_boot) for j in range(4)]
        names = ("g_ms", "g_ta", "g_ta_over_g_ms", "correlation_g_alpha")
        metrics = [Metric(name, finite(v), "adapter", None, finite(lo), finite(hi), n)
                   for name, v, (lo, hi) in zip(names, (g_ms, g_ta, ratio, corr), cis)]
        g = proj.mean(0)
        order = np.argsort(-g)[:10]
        summary: dict[str, Any] = {
            **modes.split_summary(), "n_samples": n,
            "scaled_by_sqrt_lambda": bool(ctx.params["scale_by_sqrt_lambda"]),
            "reduction": "token sum" if ctx.protocol != "paper" else "token mean",
            "modes": [{"mode": int(k), "eigenvalue": float(modes.eigvals[k]), "alpha": float(alpha[k]),
                       "g_k": float(g[k]), "g_k_std": float(proj[:, k].std()), "type": "MS" if ms[k] else "TA"}
                      for k in range(len(g))],
            "top_modes": [int(k) for k in order],
            "sample_ids": [s.sample_id for s in samples],
        }
        notes = []
        if not ms.any() or ms.all():
            notes.append(f"every mode is {'TA' if not ms.any() else 'MS'}: the ratio compares with an empty set (0)")
        if ctx.protocol == "paper":
            summary.update({"model": getattr(ctx.run_config, "model", None), "g_ms_mean": g_ms, "g_ta_mean": g_ta,
                            "g_ta_over_g_ms": ratio, "correlation_g_alpha": finite(corr)})
        return grouped(AnalysisOutput(metrics=metrics, summary=summary, notes=notes), seed)
