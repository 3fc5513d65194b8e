"""`bound`: the Kantorovich–Rubinstein bound measured in one space (science.md §2, the bound).

|E_modal[log q] − E_text[log q]| ≤ L · W1(P_modal, P_text) needs all three terms in the same
space. Here that space is the pooled decoder input (the `adapter` stage: the modal adapter
output, and the paired text's input embeddings, pooled over the same span, same checkpoint):

- the function: log q_i(v) = the decoder's mean log-probability of sample i's targets (the
  `lipschitz` targets: content tokens under default, the prompt's own tokens under paper)
  when sample i's adapter sequence is shifted so that its pooled vector is v. At the modal
  point v = z̄_M,i it is the actual modal log-score; at the text point v = z̄_T,i the
  decoder input has the text law's pooled value;
- the observed gap: mean_i [log q_i(z̄_M,i) − log q_i(z̄_T,i)], with a bootstrap CI;
- L: the largest pooled-gradient norm ‖∇_v log q_i‖ over `path_points` points of every
  segment [z̄_M,i, z̄_T,i] (a sampled estimate of the sup the theorem needs), also p95/p99;
- W1: exact EMD (POT), Euclidean cost in the full d-dimensional space, between the pooled
  modal and text vectors of the same samples; and the paired distance mean_i ‖z̄_T,i − z̄_M,i‖.

Two verdicts: `bound_held_W1` (gap ≤ L·W1, science.md's form, valid when log q does not depend
on the sample) and `bound_held_paired` (gap ≤ mean_i L_i‖z̄_T,i − z̄_M,i‖, the mean-value bound
that holds for per-sample targets). A path integral of the gradients along the segments
checks the gradients against the gap. When `lipschitz` and `distances` ran earlier in the
same run, their L_pooled and adapter-stage W1 are multiplied as well (`L_W1_previous`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._params import check_params, need_stage
from .lipschitz import batched, decoder_gradients, describe, rows_digest, select_rows


def exact_w1(X: np.ndarray, Y: np.ndarray) -> float:
    """Exact W1 between the uniform laws on the rows of X and Y, Euclidean cost, full space."""
    import ot
    from scipy.spatial.distance import cdist

    M = cdist(np.asarray(X, np.float64), np.asarray(Y, np.float64), metric="euclidean")
    return float(ot.emd2(np.ones(len(X)) / len(X), np.ones(len(Y)) / len(Y), M, numItermax=10**7))


def _previous(ctx: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    lip, dist = ctx.previous.get("lipschitz"), ctx.previous.get("distances")
    for m in (lip.metrics if lip else []):
        if m.metric in ("L_pooled_max", "L_pooled_p99", "L_log_p95", "L_D_product_95") and m.value is not None:
            out[m.metric] = float(m.value)
    for m in (dist.metrics if dist else []):
        if m.metric == "W1" and m.stage == "adapter" and m.value is not None:
            out["W1_adapter"] = float(m.value)
    return out


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare("bound", n_samples=Param(int, ge=1), batch_size=Param(int, ge=1), path_points=Param(int, ge=2),
                      n_boot=Param(int, ge=1))


class Bound(Analysis):
    name = "bound"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        return {"n_samples": 200, "batch_size": 1 if protocol == "paper" else 8, "path_points": 5,
                "n_boot": 1000}

    def run(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_params(self.name, p, self.default_params(ctx.protocol))
        K = int(p["path_points"])
        if K < 2:
            raise MchError("bound: path_points must be at least 2 (the two ends of each segment)")
        rows = select_rows(len(ctx.samples), int(p["n_samples"]), ctx.protocol, ctx.seed)
        zm = np.asarray(need_stage(self.name, ctx.reps, "adapter"), dtype=np.float64)[rows]
        # the text's decoder input in this model's own embedding space (under paper too: the
        # separate text-only model's embeddings would be foreign to this decoder)
        zt = np.asarray(need_stage(self.name, ctx.own_text_reps(), "adapter", "text"), dtype=np.float64)[rows]
        if zm.shape != zt.shape:
            raise MchError(f"bound: modal and text decoder inputs differ in shape ({zm.shape} vs {zt.shape})")
        delta = zt - zm
        ts = np.linspace(0.0, 1.0, K)
        key = {"protocol": ctx.protocol, "span": ctx.span, "rows": rows_digest(rows, ctx), "points": K, "v": 1}

        def compute() -> np.ndarray:
            model = ctx.model
            out = np.empty((len(rows), 3 * K))
            with ctx.progress.task("bound: gradients along modal->text segments", len(rows) * K) as advance:
                k = 0
                for chunk in batched(np.arange(len(rows)), max(1, int(p["batch_size"]))):
                    samples = [ctx.samples[int(rows[j])] for j in chunk]
                    for j, t in enumerate(ts):
                        r = decoder_gradients(model, samples, ctx.protocol, ctx.span, shift=t * delta[chunk])
                        out[k:k + len(chunk), j] = r["logq"]
                        out[k:k + len(chunk), K + j] = r["L_pooled"]
                        out[k:k + len(chunk), 2 * K + j] = (r["grad_pooled"] * delta[chunk]).sum(1)
                        advance(len(chunk))
                    k += len(chunk)
            return out

        arr = ctx.cached("bound_path", key, compute)
        logq, gnorm, gdot = arr[:, :K], arr[:, K:2 * K], arr[:, 2 * K:]
        gap_i = logq[:, 0] - logq[:, -1]
        L_i = gnorm.max(1)
        dist_i = np.linalg.norm(delta, axis=1)
        nb, seed = int(p["n_boot"]), int(ctx.seed)
        gap = describe(gap_i, nb, seed)["mean"]
        L_max = float(L_i.max())
        w1 = exact_w1(zm, zt)
        paired = float(dist_i.mean())
        bound_w1 = L_max * w1
        bound_paired = float((L_i * dist_i).mean())
        integral = np.trapezoid(gdot, ts, axis=1)                   # ≈ log q(text point) − log q(modal point)
        path_err = float(abs(integral.mean() + gap[0]) / max(abs(gap[0]), 1e-12))
        n = len(rows)
        metrics = [Metric("logscore_gap", gap[0], stage="adapter", ci_low=gap[1], ci_high=gap[2], n=n),
                   Metric("logq_modal_mean", float(logq[:, 0].mean()), stage="adapter", n=n),
                   Metric("logq_text_point_mean", float(logq[:, -1].mean()), stage="adapter", n=n),
                   Metric("L_max", L_max, stage="adapter", n=n)]
        for stat in ("p95", "p99", "median"):
            v, lo, hi = describe(L_i, nb, seed)[stat]
            metrics.append(Metric(f"L_{stat}", v, stage="adapter", ci_low=lo, ci_high=hi, n=n))
        metrics += [Metric("W1", w1, stage="adapter", n=n),
                    Metric("paired_distance", paired, stage="adapter", n=n),
                    Metric("L_W1", bound_w1, stage="adapter", n=n),
                    Metric("bound_held_W1", float(abs(gap[0]) <= bound_w1), stage="adapter", n=n),
                    Metric("L_paired", bound_paired, stage="adapter", n=n),
                    Metric("bound_held_paired", float(abs(gap[0]) <= bound_paired), stage="adapter", n=n),
                    Metric("gap_over_L_W1", abs(gap[0]) / bound_w1 if bound_w1 > 0 else None, stage="adapter", n=n),
                    Metric("path_integral_rel_error", path_err, stage="adapter", n=n)]
        summary: dict[str, Any] = {
            "space": "pooled decoder input (adapter stage), same span and checkpoint for modal and text",
            "targets": "prompt tokens (paper)" if ctx.protocol == "paper" else "content tokens",
            "n_samples": n, "path_points": K, "logscore_gap": gap[0], "L_max": L_max, "W1": w1,
            "paired_distance": paired, "L_W1": bound_w1, "bound_held_W1": bool(abs(gap[0]) <= bound_w1),
            "L_paired": bound_paired, "bound_held_paired": bool(abs(gap[0]) <= bound_paired),
            "path_integral_mean": float(integral.mean())}
        prev = _previous(ctx)
        if "L_pooled_max" in prev and "W1_adapter" in prev:
            lw = prev["L_pooled_max"] * prev["W1_adapter"]
            summary["previous"] = {**prev, "L_W1_previous": lw, "bound_held_previous": bool(abs(gap[0]) <= lw)}
            metrics.append(Metric("L_W1_previous", lw, stage="adapter"))
        elif prev:
            summary["previous"] = prev
        notes = ["log q_i(v): mean log-probability of sample i's targets with its adapter sequence shifted so its "
                 "pooled vector is v; the gap compares the modal point with the paired text's pooled decoder input",
                 "L is the largest gradient norm sampled along the segments (an estimate of the sup); "
                 "bound_held_paired is the mean-value bound for per-sample targets, bound_held_W1 science.md's form"]
        if ctx.protocol == "paper":
            notes.append("paper protocol: the reference never formed L x W1; its L_log x D (L_D_product_95) is "
                         "reported by `lipschitz` and echoed in summary.previous when it ran first")
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)
