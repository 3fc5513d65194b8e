"""`bound`: the Kantorovich–Rubinstein bound measured in one space (science.md §2, the bound).

|E_modal[log q] − E_text[log q]| ≤ L · W1(P_modal, P_text) needs all three terms in the same
space. Here that space is the pooled decoder input (the `adapter` stage: the modal adapter
output, and the paired text's input embeddings, pooled over the same span, same checkpoint):

- the function: log q_i(v) = the decoder's mean log-probability of sample i's targets (the
  `lipschitz` targets: content tokens under default, the prompt's own tokens under paper)
  when sample i's adapter sequence is shifted so that its pooled vector is v. At the modal
  point v = z̄_M,i it is the actual modal log-score; at the text point v = z̄_T,i the
  decoder input has the text law's pooled value;
- the observed gap: mean_i [log q_i(z̄_M,i) − log q_i(z̄_T,i)], with a bootstrap CI (default:
  the run's group resamples, science.md §8);
- L: the largest pooled-gradient norm ‖∇_v log q_i‖ over `path_points` points of every
  segment [z̄_M,i, z̄_T,i] (a sampled estimate of the sup the theorem needs), also p95/p99;
- W1: exact EMD (POT), Euclidean cost in the full d-dimensional space, between the pooled
  modal and text vectors of the same samples; and the paired distance mean_i ‖z̄_T,i − z̄_M,i‖.

- W1's finite-sample floor (default): W1 between the two halves of each of `w1_n_perm`
  random swaps of modal and text within pairs (the laws equal by construction);
  `w1_excess` = W1 − the null's mean, with a permutation p-value `w1_p`;
- `tightness` = |gap| / (L·W1), and `tightness_excess` = |gap| / (L·w1_excess): how much
  of the bound the observed gap uses. One model is one point: whether the gap *scales* with
  L·W1 is for a family of models (the toy's validation bench, `mch toy-bench`).

Two verdicts: `bound_held_W1` (gap ≤ L·W1, science.md's form, valid when log q does not depend
on the sample) and `bound_held_paired` (gap ≤ mean_i L_i‖z̄_T,i − z̄_M,i‖). The latter is an
implementation check, not evidence: with L_i the largest gradient norm on sample i's own
segment it holds by the mean-value theorem whatever the decoder, so it can only fail when
the gradients or the path sampling are wrong. So is the path integral of the gradients
along the segments, checked against the gap (`path_integral_rel_error`). When `lipschitz` and `distances` ran earlier in the
same run, their L_pooled and adapter-stage W1 are multiplied as well (`L_W1_previous`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._gradients import batched, decoder_gradients, rows_digest, select_rows
from ._params import check_params, need_stage
from ._stats import describe, run_groups  # group bootstrap (science.md §8)
from ._w1 import exact_w1


def w1_null(X: np.ndarray, Y: np.ndarray, n_perm: int, seed: int, obs: float | None = None) -> dict[str, float] | None:
    """W1 between the two sides of paired rows whose modal and text members are swapped at
    random (the laws are then equal): its mean is W1's finite-sample floor; p = the share of
    swaps whose W1 reaches the observed one."""
    if n_perm <= 0:
        return None
    from ._stats import resample_seed

    rng = np.random.default_rng(resample_seed(seed, "bound", "w1_null"))
    obs = exact_w1(X, Y) if obs is None else obs
    null = np.empty(n_perm)
    for r in range(n_perm):
        swap = rng.random(len(X)) < 0.5
        A = np.where(swap[:, None], Y, X)
        B = np.where(swap[:, None], X, Y)
        null[r] = exact_w1(A, B)
    return {"mean": float(null.mean()), "p": float((1 + (null >= obs).sum()) / (1 + n_perm)), "n": n_perm}


def _previous(ctx: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    lip, dist = ctx.previous.get("lipschitz"), ctx.previous.get("distances")
    for m in lip.metrics if lip else []:
        if m.metric in ("L_pooled_max", "L_pooled_p99", "L_log_p95", "L_D_product_95") and m.value is not None:
            out[m.metric] = float(m.value)
    for m in dist.metrics if dist else []:
        if m.metric == "W1" and m.stage == "adapter" and m.value is not None:
            out["W1_adapter"] = float(m.value)
    return out


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "bound",
    n_samples=Param(int, ge=1),
    batch_size=Param(int, ge=1),
    path_points=Param(int, ge=2),
    n_boot=Param(int, ge=1),
)


class Bound(Analysis):
    name = "bound"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"n_samples": 200, "batch_size": 1, "path_points": 5, "n_boot": 1000}
        return {"n_samples": 200, "batch_size": 8, "path_points": 5, "n_boot": 1000, "w1_n_perm": 50}

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
                        out[k : k + len(chunk), j] = r["logq"]
                        out[k : k + len(chunk), K + j] = r["L_pooled"]
                        out[k : k + len(chunk), 2 * K + j] = (r["grad_pooled"] * delta[chunk]).sum(1)
                        advance(len(chunk))
                    k += len(chunk)
            return out

        arr = ctx.cached("bound_path", key, compute)
        logq, gnorm, gdot = arr[:, :K], arr[:, K : 2 * K], arr[:, 2 * K :]
        gap_i = logq[:, 0] - logq[:, -1]
        L_i = gnorm.max(1)
        dist_i = np.linalg.norm(delta, axis=1)
        nb = int(p["n_boot"])
        # default: the run's shared group resamples (science.md §8); paper: rows, as before
        seed = int(ctx.seed) if ctx.protocol == "paper" else run_groups(ctx).subset(rows)
        n_groups = None if ctx.protocol == "paper" else seed.n_groups
        gap = describe(gap_i, nb, seed)["mean"]
        L_max = float(L_i.max())
        w1 = exact_w1(zm, zt)
        paired = float(dist_i.mean())
        bound_w1 = L_max * w1
        bound_paired = float((L_i * dist_i).mean())
        integral = np.trapezoid(gdot, ts, axis=1)  # ≈ log q(text point) − log q(modal point)
        path_err = float(abs(integral.mean() + gap[0]) / max(abs(gap[0]), 1e-12))
        n = len(rows)
        tight = abs(gap[0]) / bound_w1 if bound_w1 > 0 else None
        w1n = w1_null(zm, zt, int(p.get("w1_n_perm", 0)), int(ctx.seed), w1) if ctx.protocol != "paper" else None
        metrics = [
            Metric(
                "logscore_gap",
                gap[0],
                stage="adapter",
                ci_low=gap[1],
                ci_high=gap[2],
                n=n,
                n_groups=n_groups if gap[1] is not None else None,
            ),
            Metric("logq_modal_mean", float(logq[:, 0].mean()), stage="adapter", n=n),
            Metric("logq_text_point_mean", float(logq[:, -1].mean()), stage="adapter", n=n),
            Metric("L_max", L_max, stage="adapter", n=n),
        ]
        for stat in ("p95", "p99", "median"):
            v, lo, hi = describe(L_i, nb, seed)[stat]
            metrics.append(
                Metric(
                    f"L_{stat}",
                    v,
                    stage="adapter",
                    ci_low=lo,
                    ci_high=hi,
                    n=n,
                    n_groups=n_groups if lo is not None else None,
                )
            )
        metrics += [
            Metric("W1", w1, stage="adapter", n=n),
            Metric("paired_distance", paired, stage="adapter", n=n),
            Metric("L_W1", bound_w1, stage="adapter", n=n),
            Metric("bound_held_W1", float(abs(gap[0]) <= bound_w1), stage="adapter", n=n),
            Metric("L_paired", bound_paired, stage="adapter", n=n),
            Metric("bound_held_paired", float(abs(gap[0]) <= bound_paired), stage="adapter", n=n),
            Metric("tightness", tight, stage="adapter", n=n),
            Metric("path_integral_rel_error", path_err, stage="adapter", n=n),
        ]
        excess = {}
        if w1n is not None:
            ex = w1 - w1n["mean"]
            excess = {
                "w1_null_mean": w1n["mean"],
                "w1_excess": ex,
                "w1_p": w1n["p"],
                "L_W1_excess": L_max * ex,
                "tightness_excess": abs(gap[0]) / (L_max * ex) if L_max * ex > 0 else None,
            }
            metrics += [Metric(k, v, stage="adapter", n=n) for k, v in excess.items()]
        summary: dict[str, Any] = {
            "space": "pooled decoder input (adapter stage), same span and checkpoint for modal and text",
            "targets": "prompt tokens (paper)" if ctx.protocol == "paper" else "content tokens",
            "n_samples": n,
            "path_points": K,
            "logscore_gap": gap[0],
            "L_max": L_max,
            "W1": w1,
            "paired_distance": paired,
            "L_W1": bound_w1,
            "bound_held_W1": bool(abs(gap[0]) <= bound_w1),
            "tightness": tight,
            **excess,
            "L_paired": bound_paired,
            "bound_held_paired": bool(abs(gap[0]) <= bound_paired),
            "path_integral_mean": float(integral.mean()),
            "L_at_data_points_max": float(gnorm[:, [0, -1]].max()),
        }
        prev = _previous(ctx)
        if "L_pooled_max" in prev and "W1_adapter" in prev:
            lw = prev["L_pooled_max"] * prev["W1_adapter"]
            summary["previous"] = {**prev, "L_W1_previous": lw, "bound_held_previous": bool(abs(gap[0]) <= lw)}
            metrics.append(Metric("L_W1_previous", lw, stage="adapter"))
        elif prev:
            summary["previous"] = prev
        notes = [
            "log q_i(v): mean log-probability of sample i's targets with its adapter sequence shifted so its "
            "pooled vector is v; the gap compares the modal point with the paired text's pooled decoder input",
            f"L is the largest gradient norm sampled at {K} points along every modal->text segment (an estimate "
            f"of the sup; at the data points alone it is {float(gnorm[:, [0, -1]].max()):.4g})",
            "bound_held_paired and path_integral_rel_error are implementation checks, not evidence (the "
            "mean-value theorem makes the paired bound hold whatever the decoder); bound_held_W1 is science.md's "
            "form, tightness = |gap| / (L W1) how much of it the gap uses",
        ]
        if w1n is not None:
            notes.append(f"w1_excess = W1 - its null mean ({w1n['n']} random swaps of modal and text within pairs)")
        if ctx.protocol == "paper":
            notes.append(
                "paper protocol: the reference never formed L x W1; its L_log x D (L_D_product_95) is "
                "reported by `lipschitz` and echoed in summary.previous when it ran first"
            )
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)
