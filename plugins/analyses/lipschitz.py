"""`lipschitz`: decoder sensitivity to its input (science.md §2, the bound's L).

For each selected sample, the decoder log-likelihood log q = −(mean next-token cross-entropy
over the target tokens) is differentiated with respect to the adapter output z (the decoder
input): a forward hook on the module at `stage_map()["adapter"]` replaces z by a float32 leaf
that requires grad, and `ModelPlugin.loss(..., grad=True)` gives the per-sample losses.
Reported per sample, each with mean / median / p95 / p99 / max (bootstrap CIs over samples):

- `L_seq` (raw): ‖∂ log q / ∂z‖ over the whole T×d adapter sequence (the reference's L_log);
- `L_seq_norm` (length-normalised): L_seq / √T, the per-position RMS, comparable across
  clip lengths;
- `L_pooled`: ‖Σ_t ∂ log q / ∂z_t‖ over the pooled span, the gradient with respect to a
  shift of every position by the same vector, i.e. with respect to the pooled decoder-input
  vector: the space `distances` and `bound` measure W1 in.

A finite-difference check on a subset compares (log q(z + hv) − log q(z − hv)) / 2h with the
gradient along v = the gradient direction (sequence and pooled), h = fd_step·‖z‖.

`default`: targets = the content tokens (the paired transcript/caption after the prompt), a
random subset of `n_samples`. `paper`: the reference's script 04: targets = the prompt's own
tokens, the first `n_samples` (500) samples in order, its L_log_* statistics and its diameter
D of the stored pooled adapter vectors (rng 42 / 123), with L_D_product_95/99 and checks.
Per-sample norms are cached in the store, so a rerun never loads the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric, Sample

from ._gradients import adapter_leaf, batched, decoder_gradients, rows_digest, select_rows
from ._params import check_params, need_stage
from ._stats import describe, run_groups  # group bootstrap (science.md §8)

VARIANTS = ("L_seq", "L_seq_norm", "L_pooled")


# --------------------------------------------------------------------------- finite differences


def _logq_with(model: Any, samples: Sequence[Sample], protocol: str, delta: Any) -> np.ndarray:
    import torch

    with torch.inference_mode(), adapter_leaf(model, lambda z: z + delta.to(z.dtype)):
        return (-model.loss(samples, protocol, grad=False).double()).cpu().numpy()


def finite_differences(model: Any, samples: Sequence[Sample], protocol: str, span: str, step: float) -> np.ndarray:
    """(B, 5): L_seq, its central difference along the gradient, L_pooled, its central
    difference along the pooled gradient (every span position moved alike), and h."""
    import torch

    r = decoder_gradients(model, samples, protocol, span)
    z, g, owner, mask = r["z"], r["g"], r["owner"], r["mask"]
    B = len(samples)
    zs = torch.zeros(B, dtype=torch.float64)
    zs.index_add_(0, owner.cpu(), (z.double() ** 2).reshape(z.shape[0], -1).sum(1).cpu())
    h = step * zs.sqrt()  # relative step per sample
    gn = torch.as_tensor(r["L_seq"], dtype=g.dtype, device=g.device)[owner]
    hr = h.to(g.device, g.dtype)[owner]
    shape = (-1,) + (1,) * (g.dim() - 1)
    d_seq = g / gn.clamp(min=1e-30).reshape(shape) * hr.reshape(shape)
    v = torch.as_tensor(r["grad_pooled"], dtype=g.dtype, device=g.device)
    v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
    v = v[owner] * hr[:, None]
    d_pool = mask.to(g.dtype)[..., None] * v[:, None, :] if g.dim() == 3 else v
    hs = h.numpy()
    fd_seq = (_logq_with(model, samples, protocol, d_seq) - _logq_with(model, samples, protocol, -d_seq)) / (2 * hs)
    fd_pool = (_logq_with(model, samples, protocol, d_pool) - _logq_with(model, samples, protocol, -d_pool)) / (2 * hs)
    return np.stack([r["L_seq"], fd_seq, r["L_pooled"], fd_pool, hs], axis=1)


def diameter(X: Any) -> dict[str, float]:
    """The reference's D on stored pooled adapter vectors: max(std·√d, the largest of 200
    random pair distances), on 500 rows drawn with default_rng(42)."""
    X = np.asarray(X)
    n, dim = X.shape
    if n > 500:
        X = X[np.random.default_rng(42).choice(n, size=500, replace=False)]
    d_std = float(np.std(X)) * float(np.sqrt(dim))
    n_pairs = min(200, len(X))
    rng = np.random.default_rng(123)
    a = rng.choice(len(X), size=n_pairs, replace=True)
    b = rng.choice(len(X), size=n_pairs, replace=True)
    d_max = float(np.max(np.linalg.norm(X[a] - X[b], axis=1)))
    return {"D_std": d_std, "D_max": d_max, "D_diameter": float(max(d_std, d_max))}


# --------------------------------------------------------------------------- the analysis


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "lipschitz",
    n_samples=Param(int, ge=1),
    batch_size=Param(int, ge=1),
    fd_step=Param(float, gt=0),
    n_boot=Param(int, ge=1),
)


class Lipschitz(Analysis):
    name = "lipschitz"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"n_samples": 500, "batch_size": 1, "n_fd": 8, "fd_step": 1e-3, "n_boot": 1000}
        return {"n_samples": 500, "batch_size": 8, "n_fd": 8, "fd_step": 1e-3, "n_boot": 1000}

    def run(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_params(self.name, p, self.default_params(ctx.protocol))
        rows = select_rows(len(ctx.samples), int(p["n_samples"]), ctx.protocol, ctx.seed)
        bs = max(1, int(p["batch_size"]))
        key = {"protocol": ctx.protocol, "span": ctx.span, "rows": rows_digest(rows, ctx), "v": 1}

        def compute() -> np.ndarray:
            model = ctx.model
            out = np.full((len(rows), 5), np.nan)
            t0 = time.time()
            with ctx.progress.task("lipschitz: decoder gradients", len(rows)) as advance:
                k = 0
                for chunk in batched(rows, bs):
                    r = decoder_gradients(model, [ctx.samples[int(i)] for i in chunk], ctx.protocol, ctx.span)
                    out[k : k + len(chunk)] = np.stack(
                        [r["L_seq"], r["L_pooled"], r["T"], r["logq"], np.full(len(chunk), 0.0)], 1
                    )
                    k += len(chunk)
                    advance(len(chunk))
            out[:, 4] = time.time() - t0  # elapsed seconds, kept with the numbers
            return out

        arr = ctx.cached("lipschitz_norms", key, compute)
        L_seq, L_pooled, T, logq, elapsed = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], float(arr[0, 4])
        fd = None
        n_fd = min(int(p["n_fd"]), len(rows))
        if n_fd > 0:
            fd_rows = rows[:n_fd]
            fkey = {**key, "n_fd": n_fd, "fd_step": float(p["fd_step"])}
            fd = ctx.cached(
                "lipschitz_fd",
                fkey,
                lambda: np.concatenate(
                    [
                        finite_differences(
                            ctx.model, [ctx.samples[int(i)] for i in c], ctx.protocol, ctx.span, float(p["fd_step"])
                        )
                        for c in batched(fd_rows, bs)
                    ]
                ),
            )
        if ctx.protocol == "paper":
            return self._paper(ctx, rows, L_seq, elapsed, fd)
        return self._default(ctx, rows, L_seq, L_pooled, T, logq, fd)

    def _fd_metrics(self, fd: np.ndarray | None, metrics: list[Metric], summary: dict[str, Any]) -> None:
        if fd is None:
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            e_seq = np.abs(fd[:, 1] - fd[:, 0]) / np.abs(fd[:, 0])
            e_pool = np.abs(fd[:, 3] - fd[:, 2]) / np.abs(fd[:, 2])
        for name, e in (("fd_rel_error_seq", e_seq), ("fd_rel_error_pooled", e_pool)):
            metrics.append(Metric(f"{name}_median", float(np.nanmedian(e)), stage="adapter", n=len(e)))
            metrics.append(Metric(f"{name}_max", float(np.nanmax(e)), stage="adapter", n=len(e)))
        summary["finite_differences"] = [
            {
                "L_seq": float(r[0]),
                "fd_seq": float(r[1]),
                "L_pooled": float(r[2]),
                "fd_pooled": float(r[3]),
                "h": float(r[4]),
            }
            for r in fd
        ]

    def _default(self, ctx, rows, L_seq, L_pooled, T, logq, fd) -> AnalysisOutput:
        nb = int(ctx.params["n_boot"])
        values = {"L_seq": L_seq, "L_seq_norm": L_seq / np.sqrt(np.maximum(T, 1)), "L_pooled": L_pooled}
        metrics: list[Metric] = []
        groups = run_groups(ctx).subset(rows)  # the run's shared group resamples (science.md §8)
        for var, v in values.items():
            for stat, (val, lo, hi) in describe(v, nb, groups).items():
                metrics.append(
                    Metric(
                        f"{var}_{stat}",
                        val,
                        stage="adapter",
                        ci_low=lo,
                        ci_high=hi,
                        n=int(np.isfinite(v).sum()),
                        n_groups=groups.n_groups if lo is not None else None,
                    )
                )
        lq = describe(logq, nb, groups)["mean"]
        metrics.append(
            Metric(
                "logq_mean",
                lq[0],
                stage="adapter",
                ci_low=lq[1],
                ci_high=lq[2],
                n=len(logq),
                n_groups=groups.n_groups if lq[1] is not None else None,
            )
        )
        summary: dict[str, Any] = {
            "n_samples": int(len(rows)),
            "targets": "content tokens (the paired text)",
            "mean_span_length": float(np.mean(T)),
            "per_sample": {
                "sample_id": [ctx.samples[int(i)].sample_id for i in rows[:50]],
                "L_seq": L_seq[:50],
                "L_pooled": L_pooled[:50],
                "T": T[:50],
            },
        }
        self._fd_metrics(fd, metrics, summary)
        notes = [
            "log q = mean log-probability of the content tokens (nats per token); gradients w.r.t. the adapter "
            "output in float32",
            "L_seq_norm = L_seq / sqrt(span length); L_pooled = norm of the gradient "
            "summed over the span = w.r.t. the pooled decoder input",
            "summary.per_sample shows the first 50",
        ]
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)

    def _paper(self, ctx, rows, L_seq, elapsed, fd) -> AnalysisOutput:
        valid = L_seq[np.isfinite(L_seq)]
        X = need_stage(self.name, ctx.reps, "adapter")
        D = diameter(X)
        pct = lambda q: float(np.percentile(valid, q))  # noqa: E731 - numpy linear interpolation, as the reference
        stats = {
            "n_requested": int(ctx.params["n_samples"]),
            "n_computed": int(len(L_seq)),
            "n_valid": int(len(valid)),
            "L_log_mean": float(np.mean(valid)),
            "L_log_std": float(np.std(valid)),
            "L_log_median": float(np.median(valid)),
            "L_log_p5": pct(5),
            "L_log_p25": pct(25),
            "L_log_p75": pct(75),
            "L_log_p95": pct(95),
            "L_log_p99": pct(99),
            "L_log_min": float(valid.min()),
            "L_log_max": float(valid.max()),
            "D_diameter": D["D_diameter"],
            "L_D_product_95": pct(95) * D["D_diameter"],
            "L_D_product_99": pct(99) * D["D_diameter"],
        }
        p5, p95 = pct(5), pct(95)
        checks = {
            "all_finite": bool(len(valid) == len(L_seq)),
            "n_finite": int(len(valid)),
            "n_total": int(len(L_seq)),
            "sufficient_samples": bool(len(valid) >= 5),
            "p5": p5,
            "p95": p95,
            "variation_ratio": p95 / max(p5, 1e-10),
            "variation_ok": bool(p95 / max(p5, 1e-10) < 10.0),
            "L_D_product_95": stats["L_D_product_95"],
            "L_D_in_range": bool(0.01 <= stats["L_D_product_95"] <= 50.0),
        }
        metrics = [
            Metric(k, float(v), stage="adapter", n=int(len(valid)))
            for k, v in stats.items()
            if k.startswith(("L_", "D_"))
        ]
        summary = {**stats, "elapsed_seconds": elapsed, "checks": checks, "D_std": D["D_std"], "D_max": D["D_max"]}
        self._fd_metrics(fd, metrics, summary)
        notes = [
            "paper protocol: the reference's script 04 (targets = the prompt's own tokens, first samples in "
            "order, L_log = norm of the gradient over the whole adapter sequence; D on the stored pooled "
            "vectors, a different space, so L_D_product is not a bound)"
        ]
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)
