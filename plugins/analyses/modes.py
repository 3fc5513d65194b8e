"""`modes`: mode alignment of the decoder input with the text baseline (science.md §4).

Eigenmodes (λ_k, u_k) of the covariance of pooled modal vectors at `stage` (the adapter
output = decoder input), α_k = u_kᵀ Σ_T u_k / λ_k against the text representations, and the
TA (α > τ) / MS (α ≤ τ) split. The linear algebra is `_linalg.modes`, shared with `per_type`
and the causal analyses.

- `default`: Σ_T from the default text baseline (the paired text through the same model's
  LLM) at the same stage, i.e. the text's decoder input; null modes dropped (λ_k >
  rel_tol·λ_max and k < rank); every number with a 95% CI from a paired row bootstrap with
  the eigenbasis held fixed (the CI covers the variance estimates along the estimated modes,
  not the sampling variability of the modes themselves).
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

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._linalg import Modes, ci, mode_summary, modes
from ._params import check_params, need_stage, paper_text_stage

PAPER_FIELDS = ("total_modes", "n_alpha_gt_0.5", "n_alpha_lt_0.1", "n_alpha_near_1", "mean_alpha_top10",
                "mean_alpha_top50", "mean_alpha_all")


def load_pair(name: str, ctx: Any, stage: str, text_stage: str | None) -> tuple[Any, Any, str]:
    """Modal vectors at `stage` and text vectors at `text_stage` (None: the protocol's
    choice), with all-zero rows dropped under paper as the reference did."""
    X = need_stage(name, ctx.reps, stage)
    treps = ctx.text_reps()
    if text_stage is None:
        text_stage = paper_text_stage(list(treps)) if ctx.protocol == "paper" else stage
    Y = need_stage(name, treps, text_stage, "text")
    if ctx.protocol == "paper":
        X = np.asarray(X)[np.any(np.asarray(X) != 0, axis=1)]
        Y = np.asarray(Y)[np.any(np.asarray(Y) != 0, axis=1)]
        if X.shape[1] != Y.shape[1]:  # the reference: PCA of the stacked rows to the smaller width
            from sklearn.decomposition import PCA

            pca = PCA(n_components=min(X.shape[1], Y.shape[1]), random_state=0)
            pca.fit(np.concatenate([X, Y]).astype(np.float64))
            X, Y = pca.transform(X.astype(np.float64)), pca.transform(Y.astype(np.float64))
    elif X.shape[0] != Y.shape[0]:
        raise MchError(f"analysis {name!r}: {X.shape[0]} modal rows but {Y.shape[0]} text rows; "
                       f"the default protocol needs the paired text of every sample")
    return X, Y, text_stage


def compute_modes(name: str, ctx: Any, *, vectors: bool = True, scores: bool = False) -> tuple[Modes, str]:
    p = ctx.params
    X, Y, text_stage = load_pair(name, ctx, p["stage"], p.get("text_stage"))
    with ctx.progress.task(f"{name}: eigenmodes at {p['stage']}", None):
        m = modes(X, Y, protocol=ctx.protocol, tau=float(p["tau"]), rel_tol=float(p.get("rel_tol", 1e-6)),
                  n_boot=int(p.get("n_boot", 0)) if ctx.protocol == "default" else 0, seed=int(ctx.seed),
                  vectors=vectors, scores=scores, alpha_scale=str(p.get("alpha_scale", "none")))
    return m, text_stage


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import STAGE, TEXT_STAGE, Param, declare  # noqa: E402

PARAM_SPECS = declare("modes", stage=STAGE, text_stage=TEXT_STAGE, rel_tol=Param(float, ge=0, lt=1),
                      n_boot=Param(int, ge=1), report_modes=Param(int, ge=1),
                      alpha_scale=Param(str, choices=("none", "trace")))


class ModeAlignment(Analysis):
    name = "modes"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"stage": "adapter", "text_stage": None, "tau": 0.5, "report_modes": 100}
        return {"stage": "adapter", "text_stage": None, "tau": 0.5, "rel_tol": 1e-6, "n_boot": 200,
                "report_modes": 100, "alpha_scale": "none"}

    def run(self, ctx: Any) -> AnalysisOutput:
        check_params(self.name, ctx.params, self.default_params(ctx.protocol))
        m, text_stage = compute_modes(self.name, ctx, vectors=False)
        stage = ctx.params["stage"]
        k = min(int(ctx.params["report_modes"]), m.n_modes)
        summary: dict[str, Any] = {"stage": stage, "text_stage": text_stage, "tau": m.tau, "n_rows": m.n_rows,
                                   "n_text_rows": m.n_text_rows, "dim": m.dim, "rank": m.rank}
        metrics: list[Metric] = []
        if ctx.protocol == "paper":
            a = m.alpha
            fields = {"total_modes": m.n_modes, "n_alpha_gt_0.5": int((a > 0.5).sum()),
                      "n_alpha_lt_0.1": int((a < 0.1).sum()), "n_alpha_near_1": int((np.abs(a - 1) < 0.1).sum()),
                      "mean_alpha_top10": float(a[:10].mean()), "mean_alpha_top50": float(a[:50].mean()),
                      "mean_alpha_all": float(a.mean())}
            metrics += [Metric(f, float(v), stage=stage, n=m.n_rows) for f, v in fields.items()]
            cum = m.cumulative_variance
            summary["summary"] = fields
            summary["results"] = [{"mode_index": i, "eigenvalue": float(m.eigenvalues[i]),
                                   "alignment_score": float(a[i]), "cumulative_variance_explained": float(cum[i])}
                                  for i in range(k)]
            summary["n_TA"], summary["n_MS"] = int(m.ta.sum()), int(m.ms.sum())
            notes = [f"paper protocol: all {m.dim} modes of the ddof-1 covariance, λ clipped at 1e-10; with "
                     f"N = {m.n_rows} rows and d = {m.dim} there are {max(m.dim - m.rank, 0)} null modes whose α "
                     f"is text variance / 1e-10 (the reference's defect, kept on purpose)",
                     f"text vectors at {text_stage}: the reference's layer choice (llm_hidden_16, else llm_final), "
                     f"from {ctx.text_source}",
                     f"summary.results holds the first {k} of {m.n_modes} modes"]
            return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)

        nums = mode_summary(m)
        metrics.append(Metric("n_modes_kept", float(m.n_modes), stage=stage, n=m.n_rows))
        metrics.append(Metric("n_null_modes", float(m.dim - m.n_modes), stage=stage, n=m.n_rows))
        metrics.append(Metric("rank", float(m.rank), stage=stage, n=m.n_rows))
        for name, (v, lo, hi) in nums.items():
            metrics.append(Metric(name, v, stage=stage, ci_low=lo, ci_high=hi, n=m.n_rows))
        lo, hi = ci(m.alpha, m.boot["alpha"], lower=0.0) if m.boot else (np.full(m.n_modes, np.nan),) * 2
        cum = np.cumsum(m.eigenvalues) / m.total_variance
        summary.update(n_kept=m.n_modes, rel_tol=float(ctx.params["rel_tol"]), n_boot=int(ctx.params["n_boot"]),
                       alpha_scale=ctx.params["alpha_scale"],
                       total_variance=m.total_variance, text_total_variance=m.text_total_variance,
                       modes=[{"mode_index": i, "eigenvalue": float(m.eigenvalues[i]),
                               "alignment_score": float(m.alpha[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i]),
                               "text_variance": float(m.text_variance[i]), "TA": bool(m.ta[i]),
                               "cumulative_variance_of_trace": float(cum[i])} for i in range(k)])
        notes = [f"kept {m.n_modes} of {m.dim} modes (λ > {ctx.params['rel_tol']}·λ_max and k < rank {m.rank}); "
                 f"text baseline at {text_stage} (the paired text through this model's LLM)",
                 "CIs: paired row bootstrap with the eigenbasis held fixed; intervals are the replicates' spread "
                 "around the estimate",
                 f"summary.modes holds the first {k} of {m.n_modes} kept modes"]
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)
