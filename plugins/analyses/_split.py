"""The TA/MS split of the default protocol, defined once (science.md §4), and what the
analyses that say TA or MS (modes, per_type, ablation, swap, gradient) compute on it.

    α_k = u_kᵀ Σ_T u_k / λ_k,     α̃_k = α_k / s,   s = tr Σ_T / tr Σ_M   (`scale_ratio`)

- *Cross-fitted*: the rows are cut into two halves by group (`_stats.group_halves`). In
  direction h the eigenvectors u_k come from half h (its modes with λ > rel_tol·λ_max and
  k < rank), and λ_k, u_kᵀ Σ_T u_k and both traces from the other half, so no number is
  measured on the rows that chose the direction (with N ≲ d in-sample top eigenvalues are
  inflated by selection and α is biased low). Both directions are computed and reported;
  pooled numbers are ratios of sums over the two.
- *Threshold from a null* (`split_rule: null`): the evaluation half is cut again, by group,
  into two quarters, and the same α̃ is computed between them with one modal quarter in the
  role of the text (no misalignment by construction). Over `n_null` such cuts, the
  `null_quantile` (5%) quantile at each mode gives its threshold: MS when α̃_k is below it,
  TA otherwise. The null's variances come from quarters, the real α̃'s from halves, so the
  null is about √2 wider in log α̃ than the real estimate's own noise: the threshold is
  conservative (≈ 1% of the modes of two identical Gaussian laws fall below it, not 5%).
- `split_rule: tau` is the rule MS: α̃ ≤ τ; `alpha_scale: none` uses raw α; `cross_fit:
  false` is the in-sample split of `_linalg.modes` (the rules earlier versions used: raw α
  and τ for modes/per_type, trace-normalised α and τ for the causal tests).

Here: the split's parameters, `covariance_split` and `run_split` (one split per run) and
the `Split` they return. Its pieces: `_split_basis` (blocks, eigenmodes, coordinates),
`_split_cross` (one direction: α̃, null, bootstrap), `_split_scatter` (an attribute's scatter
under a split: per_type, gradient) and `_split_functional` (the functional split: gradient);
their public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import MchError, Param

from ._split_basis import _means, _round, _trace
from ._split_cross import Direction, _cross_fit, _in_sample
from ._split_functional import FunctionalSplit, functional_shares, functional_split, whitening_basis
from ._split_scatter import AttributeShares, attribute_shares, corrected, known_truth, scatter_terms

__all__ = [
    "SPLIT_DEFAULTS",
    "SPLIT_SPECS",
    "AttributeShares",
    "Direction",
    "FunctionalSplit",
    "Split",
    "attribute_shares",
    "check_split_params",
    "corrected",
    "covariance_split",
    "functional_shares",
    "functional_split",
    "known_truth",
    "run_split",
    "scatter_terms",
    "split_codes",
    "split_defaults",
    "whitening_basis",
]

RULES = ("null", "tau")
SCALES = ("trace", "none")

#: The split's parameters, the same in every analysis that uses it (default protocol).
SPLIT_DEFAULTS: dict[str, Any] = {
    "split_rule": "null",  # null | tau
    "tau": 0.5,  # MS: α̃ ≤ τ under split_rule tau
    "alpha_scale": "trace",  # trace: α̃ = α / (tr Σ_T / tr Σ_M); none: raw α
    "cross_fit": True,  # eigenvectors from one half, variances from the other
    "null_quantile": 0.05,  # MS: α̃ below this quantile of the modal-vs-modal null
    "n_null": 200,  # cuts of the evaluation half for the null
    "split_group_key": None,  # Sample.groups key that keeps rows together (None: each sample alone)
    "rel_tol": 1e-6,  # modes kept: λ_k > rel_tol·λ_max and k < rank
}


#: Their types and ranges (mch.api.Param), declared once for every analysis that takes them.
SPLIT_SPECS: dict[str, Param] = {
    "split_rule": Param(str, choices=RULES),
    "tau": Param(float, gt=0),
    "alpha_scale": Param(str, choices=SCALES),
    "cross_fit": Param(bool),
    "null_quantile": Param(float, gt=0, lt=1),
    "n_null": Param(int, ge=1),
    "split_group_key": Param(str, nullable=True),
    "rel_tol": Param(float, ge=0, lt=1),
}


def split_defaults() -> dict[str, Any]:
    return dict(SPLIT_DEFAULTS)


def check_split_params(p: Mapping[str, Any], analysis: str) -> None:
    rule, scale = p.get("split_rule", "null"), p.get("alpha_scale", "trace")
    if rule not in RULES:
        raise MchError(f"{analysis}: split_rule must be one of {', '.join(RULES)}, not {rule!r}")
    if scale not in SCALES:
        raise MchError(f"{analysis}: alpha_scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if rule == "null" and not bool(p.get("cross_fit", True)):
        raise MchError(
            f"{analysis}: split_rule 'null' needs cross_fit true (the null is computed on the "
            f"evaluation half); pass --param {analysis}.split_rule=tau for the in-sample split"
        )
    q = float(p.get("null_quantile", 0.05))
    if not 0 < q < 0.5:
        raise MchError(f"{analysis}: null_quantile must lie in (0, 0.5), not {q}")
    if rule == "null" and int(p.get("n_null", 200)) < 20:
        raise MchError(f"{analysis}: n_null must be at least 20 for a quantile of the null")


# --------------------------------------------------------------------------- the split


@dataclass
class Split:
    """The covariance split (science.md §4) of one pair of modal/text matrices."""

    params: dict[str, Any]
    directions: list[Direction]
    n_rows: int
    dim: int
    scale_ratio: float  # tr Σ_T / tr Σ_M on all rows
    total_variance: float  # tr Σ_M on all rows
    text_total_variance: float
    n_groups: int
    seed: int
    stage: str = "adapter"
    text_stage: str = "adapter"

    @property
    def primary(self) -> Direction:
        return self.directions[0]

    def pooled(self) -> dict[str, Any]:
        """Numbers over both directions: variance fractions as ratios of sums, counts and
        α summaries as means."""
        ds = self.directions
        lam = [d.lam for d in ds]
        ms = [d.ms for d in ds]
        tv = [d.tv for d in ds]
        kept = sum(x.sum() for x in lam)
        tot, ttot = sum(d.total for d in ds), sum(d.text_total for d in ds)
        msv = sum((x * m).sum() for x, m in zip(lam, ms, strict=True))
        out = {
            "n_modes_kept": float(np.mean([d.n_modes for d in ds])),
            "n_MS": float(np.mean([m.sum() for m in ms])),
            "n_TA": float(np.mean([(~m).sum() for m in ms])),
            "var_frac_MS_of_kept": msv / kept if kept > 0 else float("nan"),
            "var_frac_TA_of_kept": 1 - msv / kept if kept > 0 else float("nan"),
            "var_frac_MS_of_trace": msv / tot if tot > 0 else float("nan"),
            "var_frac_TA_of_trace": (kept - msv) / tot if tot > 0 else float("nan"),
            "var_frac_kept_of_trace": kept / tot if tot > 0 else float("nan"),
            "text_var_frac_MS": sum((t * m).sum() for t, m in zip(tv, ms, strict=True)) / ttot
            if ttot > 0
            else float("nan"),
            "text_var_frac_TA": sum((t * ~m).sum() for t, m in zip(tv, ms, strict=True)) / ttot
            if ttot > 0
            else float("nan"),
        }
        return out

    def pooled_boot(self) -> dict[str, np.ndarray]:
        """Replicates of `pooled()`'s fractions (the same group resamples in both directions)."""
        ds = self.directions
        if not all(d.boot for d in ds):
            return {}
        kept = sum(d.boot["lam"].sum(1) for d in ds)
        msv = sum((d.boot["lam"] * d.boot["ms"]).sum(1) for d in ds)
        tot = sum(d.boot["total"] for d in ds)
        ttot = sum(d.boot["text_total"] for d in ds)
        tms = sum((d.boot["tv"] * d.boot["ms"]).sum(1) for d in ds)
        tta = sum((d.boot["tv"] * ~d.boot["ms"]).sum(1) for d in ds)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "var_frac_MS_of_kept": msv / kept,
                "var_frac_TA_of_kept": 1 - msv / kept,
                "var_frac_MS_of_trace": msv / tot,
                "var_frac_TA_of_trace": (kept - msv) / tot,
                "var_frac_kept_of_trace": kept / tot,
                "text_var_frac_MS": tms / ttot,
                "text_var_frac_TA": tta / ttot,
            }

    def record(self) -> dict[str, Any]:
        """The `split` summary field: which split, its parameters and what it found, the same
        in every analysis of a run that computed it from the same vectors."""
        p = self.params
        r = {
            "name": "covariance",
            "definition": "science.md §4 (default)",
            "stage": self.stage,
            "text_stage": self.text_stage,
            "split_rule": p["split_rule"],
            "tau": float(p["tau"]),
            "alpha_scale": p["alpha_scale"],
            "cross_fit": bool(p["cross_fit"]),
            "null_quantile": float(p["null_quantile"]) if p["split_rule"] == "null" else None,
            "n_null": int(p["n_null"]) if p["split_rule"] == "null" else None,
            "split_group_key": p.get("split_group_key"),
            "rel_tol": float(p["rel_tol"]),
            "seed": int(self.seed),
            "n_rows": self.n_rows,
            "n_groups": self.n_groups,
            "dim": self.dim,
            "scale_ratio": _round(self.scale_ratio),
        }
        r.update({k: _round(v) for k, v in self.pooled().items()})
        r["directions"] = [
            {
                "n_fit_rows": int(len(d.fit)),
                "n_eval_rows": int(len(d.eval)),
                "rank": d.rank,
                **{k: _round(v) for k, v in d.numbers().items()},
                "n_modes_kept": d.n_modes,
            }
            for d in self.directions
        ]
        return r


def split_codes(samples: Sequence[Any] | None, n: int, key: str | None) -> np.ndarray:
    """Group codes of the rows for the halves: each sample alone (key None) or Sample.groups[key]."""
    from ._stats import group_codes

    if key is None or samples is None:
        return np.arange(n, dtype=np.int64)
    vals = []
    for s in samples:
        if key not in s.groups:
            raise MchError(
                f"split_group_key {key!r}: sample {s.sample_id} has no such group (it has "
                f"{', '.join(sorted(s.groups)) or 'none'}); pass another --param ...split_group_key"
            )
        vals.append(s.groups[key])
    return group_codes(np.array(vals, dtype=object))[0]


def covariance_split(
    X: Any,
    Y: Any,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    codes: np.ndarray | None = None,
    n_boot: int = 0,
    scores: bool = False,
    stage: str = "adapter",
    text_stage: str = "adapter",
) -> Split:
    """The default split of modal rows X (N, d) against paired text rows Y (N, d)."""
    from ._stats import group_halves, resample_seed

    p = {**SPLIT_DEFAULTS, **(params or {})}
    check_split_params(p, "split")
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise MchError(
            f"the TA/MS split compares modal and text vectors in one space; got shapes "
            f"{tuple(X.shape)} and {tuple(Y.shape)}"
        )
    N, d = X.shape
    if Y.shape[0] != N:
        raise MchError(
            f"the TA/MS split needs the paired text of every sample ({N} modal rows, {Y.shape[0]} text rows)"
        )
    codes = np.arange(N, dtype=np.int64) if codes is None else np.asarray(codes, dtype=np.int64)
    n_groups = int(codes.max()) + 1 if N else 0
    if not bool(p["cross_fit"]):
        allrows = np.arange(N)
        (mx,), (my,) = _means(X, [allrows]), _means(Y, [allrows])
        total, ttotal = _trace(X, allrows, mx), _trace(Y, allrows, my)
        dirs = [_in_sample(X, Y, p, scores)]
    else:
        if N < 8 or n_groups < 4:
            raise MchError(
                f"the cross-fitted TA/MS split needs at least 8 rows in 4 groups (have {N} rows, "
                f"{n_groups} groups); pass --param ...cross_fit=false for the in-sample split"
            )
        A, B = group_halves(codes, resample_seed(seed, "split", "halves"))
        boot = None
        if n_boot:
            from ._stats import group_resamples

            boot = group_resamples(n_groups, n_boot, resample_seed(seed, "split", "bootstrap")).counts
        dirs, total, ttotal = _cross_fit(X, Y, A, B, p, codes, seed, boot, scores)
    return Split(
        params=p,
        directions=dirs,
        n_rows=N,
        dim=d,
        scale_ratio=ttotal / total if total > 0 else float("nan"),
        total_variance=total,
        text_total_variance=ttotal,
        n_groups=n_groups,
        seed=int(seed),
        stage=stage,
        text_stage=text_stage,
    )


# --------------------------------------------------------------------------- one split per run

_MEMO: list[tuple[tuple[Any, ...], Any, Any, Split]] = []


def run_split(
    ctx: Any,
    X: Any,
    Y: Any,
    params: Mapping[str, Any],
    *,
    stage: str = "adapter",
    text_stage: str = "adapter",
    n_boot: int = 0,
    scores: bool = False,
) -> Split:
    """The split of this run's vectors, computed once per (vectors, parameters) and shared by
    the analyses of the run (the arrays are held while memoised, so their ids stay theirs)."""
    p = {k: params.get(k, v) for k, v in SPLIT_DEFAULTS.items()}
    seed = int(getattr(ctx, "seed", 0))
    key = (id(X), id(Y), X.shape, tuple(sorted((k, str(v)) for k, v in p.items())), seed, stage, text_stage)
    for k, x, y, sp in _MEMO:
        if (
            k == key
            and x is X
            and y is Y
            and (not n_boot or all(d.boot and len(d.boot["lam"]) == n_boot for d in sp.directions))
            and (not scores or all(d.P is not None for d in sp.directions))
        ):
            return sp
    codes = split_codes(getattr(ctx, "samples", None), X.shape[0], p["split_group_key"])
    sp = covariance_split(
        X, Y, p, seed=seed, codes=codes, n_boot=n_boot, scores=scores, stage=stage, text_stage=text_stage
    )
    _MEMO[:] = [(key, X, Y, sp)]
    return sp
