"""`ablation`: remove variance along chosen directions of the decoder input and measure the
decoder loss (science.md §5, where the edits and conditions are defined; the reference's
script 12, analyses-causal-lora-tables.md §3).

An `edit_adapter` edit of every modality token z removes (c_k = 1) or shrinks (c_k < 1) its
coordinates along a condition's orthonormal directions U: default z ← z − (z − μ)U diag(c)Uᵀ
(mean-preserving), paper z ← z − zUUᵀ. The modes are `_causal.modes_for`'s: under default the
run's one split (its parameters are this analysis's split parameters, named in the summary's
`split`), under paper the reference's raw α < τ on the top-100 modes. Reported: per-sample
deltas of the model's `loss`, mean Δ and pct change = 100·mean(Δ)/mean(base) (a ratio of
means) with paired bootstrap CIs, and the variance each condition removed,
Σ_k (1−(1−c_k)²) u_kᵀΣ_M u_k, over the kept modes' variance (paper: `*_var_fraction`) and
over tr Σ_M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._causal import (  # group bootstrap (science.md §8)
    PAPER_SEED,
    RANDOM_SEED,
    Modes,
    batches,
    causal_defaults,
    causal_specs,
    digest,
    edit_adapter,
    finite,
    grouped,
    ids_digest,
    mean_ci,
    modes_for,
    random_seed,
    ratio_of_means_pct,
    sample_groups,
    select_samples,
)
from ._params import as_list, check_params

CONDITIONS = (
    "ms_all",  # every MS mode (α ≤ τ; paper α < τ)
    "ta_all",  # every TA mode
    "ta_matched",  # the K = min(K_MS, K_TA) largest TA modes (count-matched; paper)
    "random_matched",  # K of the top modes drawn by default_rng(42) (may hit MS; paper)
    "ms_variance_matched",  # MS modes, largest first, removing v = min(V_MS, V_TA)
    "ta_variance_matched",  # TA modes, largest first, removing v
    "random_variance_matched",  # random orthonormal directions of R^d removing v
)


@dataclass
class Directions:
    name: str
    vectors: np.ndarray  # (d, k) orthonormal
    coef: np.ndarray  # (k,) fraction of each coordinate removed
    variance: np.ndarray  # (k,) variance of the pooled adapter outputs along each direction
    matched: bool = True  # False: the variance target could not be reached

    @property
    def removed(self) -> float:
        return float(np.sum((1 - (1 - self.coef) ** 2) * self.variance))


def _fill(vectors: np.ndarray, variance: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Take directions in order until `target` variance is removed, shrinking the last one
    so the total is exact; (vectors, coef, variance, matched)."""
    coef, total = [], 0.0
    for v in variance:
        if total >= target - 1e-12:
            break
        need = target - total
        if v <= need:
            coef.append(1.0)
            total += float(v)
        else:  # remove the fraction f = need/v of this direction's variance: scale it by sqrt(1-f)
            coef.append(1.0 - np.sqrt(1.0 - need / v))
            total = target
    k = len(coef)
    return vectors[:, :k], np.asarray(coef, dtype=np.float64), variance[:k], total >= target * (1 - 1e-9)


def directions(cond: str, modes: Modes, seed: int) -> Directions:
    lam, U, ms, ta = modes.eigvals, modes.vectors, modes.ms, modes.ta
    ones = np.ones
    ms_idx, ta_idx = np.flatnonzero(ms), np.flatnonzero(ta)  # descending eigenvalue order
    if cond == "ms_all":
        return Directions(cond, U[:, ms_idx], ones(len(ms_idx)), lam[ms_idx])
    if cond == "ta_all":
        return Directions(cond, U[:, ta_idx], ones(len(ta_idx)), lam[ta_idx])
    k = min(len(ms_idx), len(ta_idx))
    if cond == "ta_matched":
        idx = ta_idx[:k]
        return Directions(cond, U[:, idx], ones(k), lam[idx])
    if cond == "random_matched":
        idx = np.random.default_rng(seed).choice(len(lam), size=k, replace=False)
        return Directions(cond, U[:, idx], ones(k), lam[idx])
    target = min(float(lam[ms_idx].sum()), float(lam[ta_idx].sum()))
    if cond in ("ms_variance_matched", "ta_variance_matched"):
        idx = ms_idx if cond.startswith("ms") else ta_idx
        V, c, var, ok = _fill(U[:, idx], lam[idx], target)
        return Directions(cond, V, c, var, ok)
    if cond == "random_variance_matched":
        d = U.shape[0]
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
        q = q * np.sign(np.diag(r))  # a uniformly random rotation
        V, c, v, ok = _fill(q, modes.variance_along(q), target)
        return Directions(cond, V, c, v, ok)
    raise MchError(f"ablation: unknown condition {cond!r}; use some of {', '.join(CONDITIONS)}")


def make_edit(d: Directions, mean: np.ndarray, mean_preserving: bool, device: Any) -> Any:
    import torch

    U = torch.tensor(d.vectors, dtype=torch.float32, device=device)
    c = torch.tensor(d.coef, dtype=torch.float32, device=device)
    mu = torch.tensor(mean, dtype=torch.float32, device=device)

    def fn(z: torch.Tensor) -> torch.Tensor:
        zf = z.float()
        x = zf - mu if mean_preserving else zf
        return (zf - ((x @ U) * c) @ U.T).to(z.dtype)

    return fn


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "ablation", **causal_specs(conditions=Param(list, items=str, choices=CONDITIONS), random_seed=RANDOM_SEED)
)


class Ablation(Analysis):
    name = "ablation"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {
                "conditions": ["ms_all", "ta_matched", "random_matched"],
                **causal_defaults(protocol),
                "mean_preserving": False,
                "random_seed": PAPER_SEED,
            }
        return {
            "conditions": ["ms_all", "ms_variance_matched", "ta_variance_matched", "random_variance_matched"],
            **causal_defaults(protocol),
            "mean_preserving": True,
            "random_seed": None,
        }

    def run(self, ctx: Any) -> AnalysisOutput:
        p, protocol = ctx.params, ctx.protocol
        check_params(self.name, p, self.default_params(protocol))
        conds = as_list(p["conditions"])
        seed = random_seed(ctx)
        modes = modes_for(ctx, self.name)
        dirs = [directions(c, modes, seed) for c in conds]
        rows = select_samples(ctx, p.get("n_samples"), protocol, need_text=protocol != "paper")
        samples = [ctx.samples[int(i)] for i in rows]
        mp = bool(p["mean_preserving"])
        key = {
            "protocol": protocol,
            "samples": ids_digest(samples),
            "mean_preserving": mp,
            "dirs": [(d.name, digest(d.vectors, d.coef)) for d in dirs],
            "mean": digest(modes.mean),
        }

        def compute() -> np.ndarray:
            import torch

            model = ctx.model
            dev = next(model.module.parameters()).device
            # identical direction sets (ms_variance_matched = ms_all when TA can match) run once
            first = {}
            for j, k in enumerate(key["dirs"]):
                first.setdefault(k[1], j)
            edits = {j: make_edit(dirs[j], modes.mean, mp, dev) for j in set(first.values())}
            out = np.zeros((len(samples), 1 + len(dirs)))
            at = 0
            with ctx.progress.task(f"ablation ({len(dirs)} conditions)", len(samples)) as advance, torch.no_grad():
                for batch in batches(samples, int(p["batch_size"])):
                    n = len(batch)
                    out[at : at + n, 0] = model.loss(batch, protocol).float().cpu().numpy()
                    for j, fn in edits.items():
                        with edit_adapter(model, fn):
                            out[at : at + n, 1 + j] = model.loss(batch, protocol).float().cpu().numpy()
                    at += n
                    advance(n)
            for j, k in enumerate(key["dirs"]):
                out[:, 1 + j] = out[:, 1 + first[k[1]]]
            return out

        losses = ctx.cached("ablation_losses", key, compute)
        return self._output(ctx, modes, dirs, samples, losses, int(p["n_boot"]), mp)

    def _output(
        self,
        ctx: Any,
        modes: Modes,
        dirs: list[Directions],
        samples: list[Any],
        losses: np.ndarray,
        n_boot: int,
        mp: bool,
    ) -> AnalysisOutput:
        seed, n = sample_groups(ctx, samples), len(samples)
        base = losses[:, 0]
        m, lo, hi = mean_ci(base, seed, n_boot)
        metrics = [Metric("loss_baseline", m, "adapter", None, finite(lo), finite(hi), n)]
        kept, total = modes.kept_variance, modes.total_variance
        conds: dict[str, Any] = {}
        notes = []
        for j, d in enumerate(dirs):
            delta = losses[:, 1 + j] - base
            dm, dlo, dhi = mean_ci(delta, seed, n_boot)
            pc, plo, phi = ratio_of_means_pct(delta, base, seed, n_boot)
            frac, frac_total = (
                d.removed / kept if kept > 0 else float("nan"),
                d.removed / total if total > 0 else float("nan"),
            )
            metrics += [
                Metric(f"delta_loss_{d.name}", dm, "adapter", None, finite(dlo), finite(dhi), n),
                Metric(f"pct_change_{d.name}", pc, "adapter", None, finite(plo), finite(phi), n),
                Metric(f"variance_fraction_{d.name}", frac, "adapter", None, None, None, n),
                Metric(f"variance_fraction_total_{d.name}", frac_total, "adapter", None, None, None, n),
                Metric(f"n_directions_{d.name}", float(d.vectors.shape[1]), "adapter", None, None, None, n),
            ]
            conds[d.name] = {
                "n_directions": int(d.vectors.shape[1]),
                "variance_removed": d.removed,
                "variance_fraction": frac,
                "variance_fraction_total": frac_total,
                "variance_matched": d.matched,
                "mean_delta": dm,
                "median_delta": float(np.median(delta)),
                "std_delta": float(np.std(delta)),
                "pct_change": pc,
            }
            if not d.matched:
                notes.append(
                    f"{d.name}: its directions hold less variance than the target; all of them were "
                    f"removed ({100 * frac:.1f}% of the kept variance)"
                )
            if d.vectors.shape[1] == 0:
                notes.append(
                    f"{d.name}: no direction qualifies (no {'MS' if 'ms' in d.name else 'TA'} mode), "
                    f"so this condition changes nothing"
                )
        summary: dict[str, Any] = {
            **modes.split_summary(),
            "mean_preserving": mp,
            "n_samples": n,
            "conditions": conds,
            "per_sample": [
                {
                    "sample_id": s.sample_id,
                    "loss_baseline": float(base[i]),
                    **{f"delta_{d.name}": float(losses[i, 1 + j] - base[i]) for j, d in enumerate(dirs)},
                }
                for i, s in enumerate(samples)
            ],
        }
        if ctx.protocol == "paper":
            summary.update(self._paper_fields(ctx, modes, dirs, losses))
        return grouped(AnalysisOutput(metrics=metrics, summary=summary, notes=notes), seed)

    @staticmethod
    def _paper_fields(ctx: Any, modes: Modes, dirs: list[Directions], losses: np.ndarray) -> dict[str, Any]:
        """The reference's summary JSON fields, rounded as it rounded them."""
        kept = modes.kept_variance
        out: dict[str, Any] = {
            "model": getattr(ctx.run_config, "model", None),
            "n_samples": int(len(losses)),
            "n_modes": int(len(modes.eigvals)),
            "ms_threshold": modes.threshold,
            "n_ms_modes": int(modes.ms.sum()),
            "n_ta_modes": int(modes.ta.sum()),
            "mean_loss_baseline": round(float(losses[:, 0].mean()), 4),
        }
        frac_name = {
            "ms_all": "ms_var_fraction",
            "ta_matched": "ta_matched_var_fraction",
            "random_matched": "random_var_fraction",
        }
        for j, d in enumerate(dirs):
            delta = losses[:, 1 + j] - losses[:, 0]
            out[frac_name.get(d.name, f"{d.name}_var_fraction")] = round(100 * d.removed / kept, 1) if kept else None
            out[f"mean_delta_{d.name}"] = round(float(delta.mean()), 4)
            out[f"median_delta_{d.name}"] = round(float(np.median(delta)), 4)
            out[f"std_delta_{d.name}"] = round(float(np.std(delta)), 4)
            out[f"pct_change_{d.name}"] = round(100 * float(delta.mean()) / float(losses[:, 0].mean()), 2)
        return out
