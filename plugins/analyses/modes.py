"""`modes`: mode alignment of the decoder input with the text baseline (science.md §4).

Eigenmodes (λ_k, u_k) of the covariance of pooled modal vectors at `stage` (the adapter
output = decoder input), α_k = u_kᵀ Σ_T u_k / λ_k against the text representations, and the
TA / MS split.

- `default`: the one split of `_split` (shared with `per_type` and the causal analyses):
  scale-free α̃ (`scale_ratio` = tr Σ_T / tr Σ_M), cross-fitted over two group halves (both
  directions; pooled fractions are ratios of sums over the two), MS below the 5% quantile of
  a modal-vs-modal null at each mode; null modes dropped (λ_k > rel_tol·λ_max, k < rank).
  Σ_T from the default text baseline (the paired text through the same model's LLM) at the
  same stage. CIs: a group bootstrap of the evaluation rows, the eigenvectors and thresholds
  held fixed (they cover the variance estimates along the estimated modes, not the
  variability of the modes themselves). The record's summary field `split` names the split,
  its parameters and what it found, the same in every analysis of the run.
- `paper`: the reference's script 07 on the same vectors: all d modes, λ clipped at 1e-10,
  all-zero rows dropped, and the text vectors taken at llm.16 (else llm.final) as the
  reference took its text file's llm_hidden_16. The text vectors come, as the reference's
  did, from the separate text-only checkpoint the model's registry entry names
  (`text_baseline`: Llama-3.1-8B base, Vicuna-7B; `--text-checkpoint`); a model that names
  none (the toy) uses its own text view. The record's notes say which.
  Its summary fields keep the reference names (total_modes, n_alpha_gt_0.5, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric

from ._linalg import Modes, ci, modes
from ._params import check_params, load_pair
from ._split import check_split_params, run_split, split_defaults

PAPER_FIELDS = (
    "total_modes",
    "n_alpha_gt_0.5",
    "n_alpha_lt_0.1",
    "n_alpha_near_1",
    "mean_alpha_top10",
    "mean_alpha_top50",
    "mean_alpha_all",
)


def compute_modes(name: str, ctx: Any, *, vectors: bool = True, scores: bool = False) -> tuple[Modes, str]:
    p = ctx.params
    X, Y, text_stage = load_pair(name, ctx, p["stage"], p.get("text_stage"))
    with ctx.progress.task(f"{name}: eigenmodes at {p['stage']}", None):
        m = modes(
            X,
            Y,
            protocol=ctx.protocol,
            tau=float(p["tau"]),
            rel_tol=float(p.get("rel_tol", 1e-6)),
            n_boot=int(p.get("n_boot", 0)) if ctx.protocol == "default" else 0,
            seed=int(ctx.seed),
            vectors=vectors,
            scores=scores,
            alpha_scale=str(p.get("alpha_scale", "none")),
        )
    return m, text_stage


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import STAGE, TEXT_STAGE, Param, declare  # noqa: E402
from ._split import SPLIT_SPECS  # noqa: E402

PARAM_SPECS = declare(
    "modes",
    stage=STAGE,
    text_stage=TEXT_STAGE,
    n_boot=Param(int, ge=0, help="group-bootstrap draws of the split (0: no CIs)"),
    report_modes=Param(int, ge=1),
    **SPLIT_SPECS,
)


class ModeAlignment(Analysis):
    name = "modes"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"stage": "adapter", "text_stage": None, "tau": 0.5, "report_modes": 100}
        return {"stage": "adapter", "text_stage": None, **split_defaults(), "n_boot": 200, "report_modes": 100}

    def run(self, ctx: Any) -> AnalysisOutput:
        check_params(self.name, ctx.params, self.default_params(ctx.protocol))
        if ctx.protocol != "paper":
            return self._default(ctx)
        m, text_stage = compute_modes(self.name, ctx, vectors=False)
        stage = ctx.params["stage"]
        k = min(int(ctx.params["report_modes"]), m.n_modes)
        summary: dict[str, Any] = {
            "stage": stage,
            "text_stage": text_stage,
            "tau": m.tau,
            "n_rows": m.n_rows,
            "n_text_rows": m.n_text_rows,
            "dim": m.dim,
            "rank": m.rank,
        }
        metrics: list[Metric] = []
        if ctx.protocol == "paper":
            a = m.alpha
            fields = {
                "total_modes": m.n_modes,
                "n_alpha_gt_0.5": int((a > 0.5).sum()),
                "n_alpha_lt_0.1": int((a < 0.1).sum()),
                "n_alpha_near_1": int((np.abs(a - 1) < 0.1).sum()),
                "mean_alpha_top10": float(a[:10].mean()),
                "mean_alpha_top50": float(a[:50].mean()),
                "mean_alpha_all": float(a.mean()),
            }
            metrics += [Metric(f, float(v), stage=stage, n=m.n_rows) for f, v in fields.items()]
            cum = m.cumulative_variance
            summary["summary"] = fields
            summary["results"] = [
                {
                    "mode_index": i,
                    "eigenvalue": float(m.eigenvalues[i]),
                    "alignment_score": float(a[i]),
                    "cumulative_variance_explained": float(cum[i]),
                }
                for i in range(k)
            ]
            summary["n_TA"], summary["n_MS"] = int(m.ta.sum()), int(m.ms.sum())
            notes = [
                f"paper protocol: all {m.dim} modes of the ddof-1 covariance, λ clipped at 1e-10; with "
                f"N = {m.n_rows} rows and d = {m.dim} there are {max(m.dim - m.rank, 0)} null modes whose α "
                f"is text variance / 1e-10 (the reference's defect, kept on purpose)",
                f"text vectors at {text_stage}: the reference's layer choice (llm_hidden_16, else llm_final), "
                f"from {ctx.text_source}",
                f"summary.results holds the first {k} of {m.n_modes} modes",
            ]
            return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)

    def _default(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_split_params(p, self.name)
        stage = p["stage"]
        X, Y, text_stage = load_pair(self.name, ctx, stage, p.get("text_stage"))
        with ctx.progress.task(f"{self.name}: cross-fitted split at {stage}", None):
            sp = run_split(ctx, X, Y, p, stage=stage, text_stage=text_stage, n_boot=int(p["n_boot"]))
        pooled, boot = sp.pooled(), sp.pooled_boot()
        n = sp.n_rows
        metrics = [
            Metric("n_modes_kept", pooled["n_modes_kept"], stage=stage, n=n),
            Metric("rank", float(min(d.rank for d in sp.directions)), stage=stage, n=n),
            Metric("scale_ratio", sp.scale_ratio, stage=stage, n=n),
            Metric("n_TA", pooled["n_TA"], stage=stage, n=n),
            Metric("n_MS", pooled["n_MS"], stage=stage, n=n),
        ]
        for name in (
            "var_frac_MS_of_kept",
            "var_frac_TA_of_kept",
            "var_frac_MS_of_trace",
            "var_frac_TA_of_trace",
            "var_frac_kept_of_trace",
            "text_var_frac_MS",
            "text_var_frac_TA",
        ):
            v = pooled[name]
            lo = hi = None
            if name in boot and np.isfinite(boot[name]).sum() > 1:
                lo, hi = (float(x) for x in ci(v, boot[name], lower=0.0, upper=1.0))
            metrics.append(Metric(name, float(v), stage=stage, ci_low=lo, ci_high=hi, n=n))
        d0 = sp.primary
        k = min(int(p["report_modes"]), d0.n_modes)
        cum = np.cumsum(d0.lam) / d0.total if d0.total > 0 else np.full(d0.n_modes, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = d0.tv / d0.lam
        summary: dict[str, Any] = {
            "stage": stage,
            "text_stage": text_stage,
            "n_rows": n,
            "dim": sp.dim,
            "n_boot": int(p["n_boot"]),
            "split": sp.record(),
            "modes": [
                {
                    "mode_index": i,
                    "eigenvalue": float(d0.lam[i]),
                    "fit_eigenvalue": float(d0.fit_eigenvalues[i]),
                    "alignment_score": _f(d0.alpha[i]),
                    "alpha_raw": _f(raw[i]),
                    "threshold": _f(d0.threshold[i]),
                    "text_variance": float(d0.tv[i]),
                    "TA": bool(d0.ta[i]),
                    "cumulative_variance_of_trace": float(cum[i]),
                }
                for i in range(k)
            ],
        }
        rule = (
            f"MS: alpha below the {p['null_quantile']:g} quantile of a modal-vs-modal split-half null at each mode "
            f"({p['n_null']} cuts)"
            if p["split_rule"] == "null"
            else f"MS: alpha <= tau = {p['tau']}"
        )
        notes = [
            f"the split of science.md §4: alpha {'/ scale_ratio (tr T / tr M = ' + format(sp.scale_ratio, '.4g') + ')' if p['alpha_scale'] == 'trace' else 'unscaled'}"
            f", {'cross-fitted over two halves (by ' + (p['split_group_key'] or 'sample') + '), both directions pooled' if p['cross_fit'] else 'in-sample'}; {rule}",
            f"text baseline at {text_stage} (the paired text through this model's LLM)",
            "CIs: a group bootstrap of the evaluation rows, eigenvectors and thresholds held fixed",
            f"summary.modes holds the first {k} of {d0.n_modes} kept modes of the first direction (eigenvalue: "
            f"variance on its evaluation half; fit_eigenvalue: on the half that chose the mode)",
        ]
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
