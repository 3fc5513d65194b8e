"""`gradient`: how sensitive the decoder's log-likelihood is along each eigenmode of its input
(science.md §5; the reference's script 11, analyses-causal-lora-tables.md §2), and the
functional split (science.md §7): the directions the decoder reads.

The adapter output is made a float32 leaf z (`edit_adapter`) and ℓ = −loss differentiated
with respect to it; the per-sample reductions, the paper's unweighted and the default's
variance-weighted TA/MS comparison (`g_ms`, `g_ta`, `sensitivity_share_ms`) are science.md §5's.
Functional split (default): the top eigenvectors of F = E[ḡḡᵀ] in the modal law's whitened
coordinates holding `functional_mass` of its trace; per attribute `var_frac_unread`, beside the
covariance split's var_frac_MS, and `known_truth`: which split put every attribute the paired
text names below every hidden one. Whitened, because in raw coordinates F's top directions are
ones the modal law barely moves along (on the toy they hold < 15% of any attribute's scatter).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric

from ._causal import (  # group bootstrap (science.md §8)
    adapter_pool,
    batches,
    bootstrap,
    causal_defaults,
    causal_specs,
    edit_adapter,
    finite,
    frozen,
    grouped,
    ids_digest,
    modes_for,
    sample_groups,
    select_samples,
)
from ._linalg import ci
from ._params import check_params


def _stats(proj: np.ndarray, ms: np.ndarray, alpha: np.ndarray) -> tuple[float, float, float, float]:
    """paper: unweighted means of g_k = mean_i proj_ik over the MS and TA modes."""
    g = proj.mean(0)
    g_ms = float(g[ms].mean()) if ms.any() else 0.0
    g_ta = float(g[~ms].mean()) if (~ms).any() else 0.0
    ratio = g_ta / max(g_ms, 1e-10)
    corr = float(np.corrcoef(g, alpha)[0, 1]) if len(g) > 1 and g.std() > 0 and alpha.std() > 0 else float("nan")
    return g_ms, g_ta, ratio, corr


def weighted_stats(dots: np.ndarray, lam: np.ndarray, ms: np.ndarray, alpha: np.ndarray) -> dict[str, float]:
    """default: TA vs MS as variance-weighted means. `dots` (n, m) = ḡ_i · u_k, `lam` (m,) the
    modal variance along u_k."""
    msq = (dots * dots).mean(0)  # m_k
    w = lam * msq  # λ_k m_k: natural variation's effect along mode k
    nan = float("nan")

    def rms(sel: np.ndarray) -> float:
        return float(np.sqrt(w[sel].sum() / lam[sel].sum())) if sel.any() and lam[sel].sum() > 0 else nan

    g_ms, g_ta = rms(ms), rms(~ms)
    g = np.abs(dots).mean(0) * np.sqrt(np.maximum(lam, 0))
    corr = float(np.corrcoef(g, alpha)[0, 1]) if len(g) > 1 and g.std() > 0 and np.nanstd(alpha) > 0 else nan
    return {
        "g_ms": g_ms,
        "g_ta": g_ta,
        "g_ta_over_g_ms": g_ta / g_ms if g_ms > 0 else nan,
        "sensitivity_share_ms": float(w[ms].sum() / w.sum()) if w.sum() > 0 else nan,
        "variance_share_ms": float(lam[ms].sum() / lam.sum()) if lam.sum() > 0 else nan,
        "correlation_g_alpha": corr,
    }


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare("gradient", **causal_specs(functional_mass=Param(float, gt=0, le=1)))


class Gradient(Analysis):
    name = "gradient"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {**causal_defaults(protocol), "scale_by_sqrt_lambda": False}
        return {**causal_defaults(protocol), "scale_by_sqrt_lambda": True, "functional_mass": 0.9}

    def run(self, ctx: Any) -> AnalysisOutput:
        import torch

        from mch.capture import pool as pool_rows

        p, protocol = ctx.params, ctx.protocol
        check_params(self.name, p, self.default_params(protocol))
        modes = modes_for(ctx, self.name, quirk_final=True)
        rows = select_samples(ctx, p.get("n_samples"), protocol, need_text=protocol != "paper")
        samples = [ctx.samples[int(i)] for i in rows]
        token_sum = protocol != "paper"
        key = {"protocol": protocol, "samples": ids_digest(samples), "span": ctx.span, "token_sum": token_sum, "v": 2}

        def compute() -> np.ndarray:
            """(n, d) pooled gradients ḡ_i of the decoder log-likelihood (float64)."""
            model = ctx.model
            out: np.ndarray | None = None
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
                    pool = pool.for_output(g) if pool is not None else None  # proportional pools: rows of g
                    gbar = pool_rows(g, pool, ctx.span, n)  # token mean per sample
                    if token_sum:
                        mask = pool.masks.get(ctx.span, pool.masks.get("all")) if pool is not None else None
                        counts = torch.zeros(n, device=g.device)
                        if mask is None:
                            counts += g.shape[1] if g.dim() == 3 else 1
                        else:
                            counts.index_add_(0, pool.owner.to(g.device), mask.to(g.device).float().sum(1))
                        gbar = gbar * counts[:, None]
                    gb = gbar.detach().double().cpu().numpy()
                    if out is None:
                        out = np.zeros((len(samples), gb.shape[1]))
                    out[at : at + n] = gb
                    at += n
                    advance(n)
            assert out is not None
            return out

        grads = ctx.cached("gradient_pooled", key, compute)
        dots = grads @ modes.vectors  # ḡ_i · u_k
        proj = np.abs(dots)
        if bool(p["scale_by_sqrt_lambda"]):
            proj = proj * np.sqrt(np.maximum(modes.eigvals, 0))[None, :]
        if protocol == "paper":
            return self._output(ctx, modes, samples, proj)
        return self._default_output(ctx, modes, samples, proj, dots, grads)

    def _default_output(
        self, ctx: Any, modes: Any, samples: list[Any], proj: np.ndarray, dots: np.ndarray, grads: np.ndarray
    ) -> AnalysisOutput:
        from ._split import (
            attribute_shares,
            functional_shares,
            functional_split,
            known_truth,
            run_split,
            whitening_basis,
        )
        from ._stats import attribute_groups

        p = ctx.params
        n, seed, n_boot = len(samples), int(ctx.seed), int(p["n_boot"])
        groups = sample_groups(ctx, samples)  # the run's shared group resamples (science.md §8)
        lam, ms, alpha = modes.eigvals, modes.ms, modes.alpha
        point = weighted_stats(dots, lam, ms, alpha)
        names = list(point)
        metrics = []
        for name in names:
            lo, hi = bootstrap(
                lambda idx, name=name: weighted_stats(dots[idx], lam, ms, alpha)[name], n, groups, n_boot
            )
            metrics.append(Metric(name, finite(point[name]), "adapter", None, finite(lo), finite(hi), n))
        g = proj.mean(0)
        # the functional split and, beside it, the covariance split's shares for each attribute
        X = ctx.reps["adapter"]
        U, wl = whitening_basis(X, float(p["rel_tol"]))
        fs = functional_split(grads, U, wl, float(p["functional_mass"]))
        sp = run_split(
            ctx, X, ctx.text_reps()[modes.text_stage], p, stage="adapter", text_stage=modes.text_stage, scores=True
        )
        attrs: dict[str, Any] = {}
        for a in ctx.attributes:
            f = functional_shares(
                fs,
                X,
                ctx.labels[a],
                ctx.groups.get(a),
                n_boot=min(n_boot, 500),
                seed=seed,
                names=("adapter", a),
                boot_groups=attribute_groups(ctx, a).codes,  # its cluster key where declared (science.md §8)
            )
            c = attribute_shares(sp, ctx.labels[a], ctx.groups.get(a), seed=seed, names=("adapter", a))
            if f is None or c is None:
                continue
            attrs[a] = {
                "var_frac_unread": finite(f["var_frac_unread"]),
                "var_frac_read": finite(f["var_frac_read"]),
                "var_frac_MS_covariance": finite(c.var_frac_MS),
            }
            lo = hi = None
            if "boot_unread" in f and np.isfinite(f["boot_unread"]).sum() > 1 and np.isfinite(f["var_frac_unread"]):
                lo, hi = (float(x) for x in ci(f["var_frac_unread"], f["boot_unread"]))
            attrs[a].update(ci=[lo, hi])
            labelled = ctx.labels[a] != ""
            n_g = f.get("n_groups") if lo is not None else None
            metrics.append(
                Metric(
                    "var_frac_unread",
                    finite(f["var_frac_unread"]),
                    "adapter",
                    a,
                    finite(lo),
                    finite(hi),
                    int(labelled.sum()),
                    n_g,
                )
            )
        truth = {
            "covariance": known_truth(
                ctx.attributes,
                {a: v["var_frac_MS_covariance"] for a, v in attrs.items() if v["var_frac_MS_covariance"] is not None},
            ),
            "functional": known_truth(
                ctx.attributes, {a: v["var_frac_unread"] for a, v in attrs.items() if v["var_frac_unread"] is not None}
            ),
        }
        summary: dict[str, Any] = {
            **modes.split_summary(),
            "n_samples": n,
            "scaled_by_sqrt_lambda": bool(p["scale_by_sqrt_lambda"]),
            "reduction": "token sum",
            "comparison": "variance-weighted (science.md §5)",
            "functional_split": {**fs.record(), "attributes": attrs, "known_truth": truth},
            "modes": [
                {
                    "mode": int(k),
                    "eigenvalue": float(lam[k]),
                    "alpha": finite(alpha[k]),
                    "g_k": float(g[k]),
                    "g_k_std": float(proj[:, k].std()),
                    "type": "MS" if ms[k] else "TA",
                }
                for k in range(len(g))
            ],
            "top_modes": [int(k) for k in np.argsort(-g)[:10]],
            "sample_ids": [s.sample_id for s in samples],
        }
        notes = [
            "g_ms, g_ta: RMS change of the log-likelihood per unit RMS displacement drawn from the modal law "
            "inside the MS (TA) modes, i.e. variance-weighted means of the squared projections",
            f"functional split: top eigenvectors of E[g g^T] in whitened coordinates holding "
            f"{p['functional_mass']:g} of its trace ({fs.n_read} directions); var_frac_unread is each attribute's "
            f"noise-corrected class scatter outside them",
            "known_truth: which split puts every attribute the paired text names (text_describable) below every "
            "hidden one (covariance: var_frac_MS; functional: var_frac_unread)",
        ]
        if not ms.any() or ms.all():
            notes.append(f"every mode is {'TA' if not ms.any() else 'MS'}: one side of the comparison is empty")
        return grouped(AnalysisOutput(metrics=metrics, summary=summary, notes=notes), groups)

    def _output(self, ctx: Any, modes: Any, samples: list[Any], proj: np.ndarray) -> AnalysisOutput:
        n, seed, n_boot = len(samples), sample_groups(ctx, samples), int(ctx.params["n_boot"])
        ms, alpha = modes.ms, modes.alpha
        g_ms, g_ta, ratio, corr = _stats(proj, ms, alpha)
        cis = [bootstrap(lambda idx, j=j: _stats(proj[idx], ms, alpha)[j], n, seed, n_boot) for j in range(4)]
        names = ("g_ms", "g_ta", "g_ta_over_g_ms", "correlation_g_alpha")
        metrics = [
            Metric(name, finite(v), "adapter", None, finite(lo), finite(hi), n)
            for name, v, (lo, hi) in zip(names, (g_ms, g_ta, ratio, corr), cis, strict=True)
        ]
        g = proj.mean(0)
        order = np.argsort(-g)[:10]
        summary: dict[str, Any] = {
            **modes.split_summary(),
            "n_samples": n,
            "scaled_by_sqrt_lambda": bool(ctx.params["scale_by_sqrt_lambda"]),
            "reduction": "token sum" if ctx.protocol != "paper" else "token mean",
            "modes": [
                {
                    "mode": int(k),
                    "eigenvalue": float(modes.eigvals[k]),
                    "alpha": float(alpha[k]),
                    "g_k": float(g[k]),
                    "g_k_std": float(proj[:, k].std()),
                    "type": "MS" if ms[k] else "TA",
                }
                for k in range(len(g))
            ],
            "top_modes": [int(k) for k in order],
            "sample_ids": [s.sample_id for s in samples],
        }
        notes = []
        if not ms.any() or ms.all():
            notes.append(f"every mode is {'TA' if not ms.any() else 'MS'}: the ratio compares with an empty set (0)")
        if ctx.protocol == "paper":
            summary.update(
                {
                    "model": getattr(ctx.run_config, "model", None),
                    "g_ms_mean": g_ms,
                    "g_ta_mean": g_ta,
                    "g_ta_over_g_ms": ratio,
                    "correlation_g_alpha": finite(corr),
                }
            )
        return grouped(AnalysisOutput(metrics=metrics, summary=summary, notes=notes), seed)
