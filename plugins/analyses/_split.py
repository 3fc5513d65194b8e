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

Everything is read in column blocks of the (memory-mapped) vectors; with a half of n ≤ d
rows the eigenvectors come from the n×n Gram matrix, so no d×d matrix is formed, and the
d×m eigenvectors are only built when an analysis needs them (`Direction.vectors`).

Also here: the per-mode between-class scatter of an attribute, noise-corrected and with a
group-preserving permutation null (per_type, gradient), and the functional split (the top
eigenvectors of E[∇_z log q ∇_z log qᵀ], the directions the decoder reads; gradient).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mch.api import MchError, Param

BLOCK = 512
ROWS = BLOCK  # rows per block of mode coordinates (float64: ROWS·m·8 bytes each, a few beside them)
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


# --------------------------------------------------------------------------- blocks


def _blocks(n: int, block: int = BLOCK) -> Iterator[slice]:
    for j in range(0, n, block):
        yield slice(j, min(j + block, n))


def _cols(X: Any, s: slice) -> np.ndarray:
    return np.array(X[:, s], dtype=np.float64)


def _means(X: Any, halves: Sequence[np.ndarray]) -> list[np.ndarray]:
    d = X.shape[1]
    out = [np.empty(d) for _ in halves]
    for s in _blocks(d):
        B = _cols(X, s)
        for mu, rows in zip(out, halves, strict=True):
            mu[s] = B[rows].mean(0)
    return out


def _keep(lam: np.ndarray, n: int, d: int, rel_tol: float) -> tuple[int, int]:
    """(number of modes kept, numerical rank): λ_k > rel_tol·λ_max and k < rank, the rank
    counting eigenvalues above the eigensolver's rounding floor, capped at n − 1 (centred rows)."""
    if lam.size == 0 or lam[0] <= 0:
        return 0, 0
    rank = int((lam > lam[0] * max(n, d) * np.finfo(np.float64).eps).sum())
    rank = min(rank, n - 1, d)
    return int(((lam > rel_tol * lam[0]) & (np.arange(lam.size) < rank)).sum()), rank


def _weighted_var(W: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Column variances (ddof 1) under each row of frequency weights W (b, n), from the
    column sums s1 = W P and s2 = W (P∘P) (`_col_sums`): (b, m)."""
    n = W.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s2 - s1 * s1 / n) / (n - 1)


def _col_sums(
    blocks: Iterator[tuple[slice, np.ndarray]], m: int, weights: Sequence[np.ndarray | None], keep: np.ndarray | None
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]]:
    """Σ_i p_i∘p_i and, per weight matrix W (b, n), (W P, W (P∘P)) of the coordinates P (n, m)
    given in row blocks: all that α, the null and the bootstrap read of P, so P itself is
    never held (unless `keep`, an (n, m) array to fill, asks for it)."""
    sq = np.zeros(m)
    acc = [None if W is None else (np.zeros((W.shape[0], m)), np.zeros((W.shape[0], m))) for W in weights]
    for s, B in blocks:
        if keep is not None:
            keep[s] = B
        B2 = B * B
        sq += B2.sum(0)
        for W, a in zip(weights, acc, strict=True):
            if a is not None:
                Ws = np.ascontiguousarray(W[:, s])
                s1, s2 = a
                s1 += Ws @ B
                s2 += Ws @ B2
        del B, B2
    return sq, acc


# --------------------------------------------------------------------------- one direction


@dataclass
class Direction:
    """One cross-fit direction: modes of the `fit` rows, every variance on the `eval` rows.

    Arrays over the m kept modes, in descending order of the fit half's eigenvalue."""

    fit: np.ndarray  # row indices the eigenvectors come from
    eval: np.ndarray  # row indices every variance comes from
    fit_eigenvalues: np.ndarray  # in-sample λ of the fit half (the order of the modes)
    lam: np.ndarray  # λ_k = u_kᵀ Σ_M u_k on the eval rows
    tv: np.ndarray  # u_kᵀ Σ_T u_k on the eval rows
    total: float  # tr Σ_M on the eval rows
    text_total: float  # tr Σ_T on the eval rows
    alpha: np.ndarray  # α_k (scaled per alpha_scale: α̃)
    threshold: np.ndarray  # per-mode threshold of the rule (null quantile, or τ)
    ms: np.ndarray  # bool
    rank: int
    P: np.ndarray | None = None  # (n_eval, m) eval rows in mode coordinates (centred on the eval mean)
    boot: dict[str, np.ndarray] = field(default_factory=dict)  # group-bootstrap replicates (eval rows)
    _basis: tuple[Any, ...] = ()  # ("gram", W, sv, mu_fit) or ("cov", U)

    @property
    def ta(self) -> np.ndarray:
        return ~self.ms

    @property
    def n_modes(self) -> int:
        return int(self.lam.shape[0])

    def vectors(self, X: Any) -> np.ndarray:
        """The eigenvectors u_k (d, m), orthonormal (built on demand: d×m floats)."""
        return _basis_vectors(X, self.fit, self._basis)

    def numbers(self) -> dict[str, float]:
        return _numbers(self.lam, self.tv, self.alpha, self.ms, self.total, self.text_total)


def _numbers(lam, tv, alpha, ms, total, ttotal) -> dict[str, Any]:
    """The split's named numbers; broadcast over leading replicate axes."""
    ta = ~ms
    kept = lam.sum(-1)
    k10 = min(10, alpha.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "n_TA": ta.sum(-1),
            "n_MS": ms.sum(-1),
            "var_frac_TA_of_kept": (lam * ta).sum(-1) / kept,
            "var_frac_MS_of_kept": (lam * ms).sum(-1) / kept,
            "var_frac_TA_of_trace": (lam * ta).sum(-1) / total,
            "var_frac_MS_of_trace": (lam * ms).sum(-1) / total,
            "var_frac_kept_of_trace": kept / total,
            "text_var_frac_TA": (tv * ta).sum(-1) / ttotal,
            "text_var_frac_MS": (tv * ms).sum(-1) / ttotal,
            "mean_alpha_top10": alpha[..., :k10].mean(-1),
            "weighted_alpha": (lam * alpha).sum(-1) / kept,
        }


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


def _round(v: Any) -> Any:
    """Record numbers to 10 significant digits: BLAS thread counts may move the last bits,
    and the record must be identical across the analyses of a run."""
    v = float(v)
    return float(f"{v:.10g}") if np.isfinite(v) else None


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


def _trace(X: Any, rows: np.ndarray, mean: np.ndarray) -> float:
    tot = 0.0
    for s in _blocks(X.shape[1]):
        B = _cols(X, s)[rows] - mean[s]
        tot += float((B * B).sum())
    return tot / max(len(rows) - 1, 1)


def _weighted_traces(X: Any, rows: np.ndarray, mean: np.ndarray, W: np.ndarray) -> np.ndarray:
    """tr cov(X[rows]) under each row of frequency weights W (b, len(rows))."""
    n = W.sum(1)
    sq = np.zeros(W.shape[0])
    s1 = np.zeros(W.shape[0])
    for s in _blocks(X.shape[1]):
        B = _cols(X, s)[rows] - mean[s]
        sq += W @ (B * B).sum(1)
        S = W @ B
        s1 += (S * S).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sq - s1 / n) / (n - 1)


def _fit_basis(X: Any, rows: np.ndarray, mu: np.ndarray, rel_tol: float) -> tuple[tuple[Any, ...], np.ndarray, int]:
    """Eigenmodes of the covariance of X[rows]: ("gram", W, sv, mu) when the half has no more
    rows than dimensions (the n×n Gram matrix has the same non-null eigenpairs), else
    ("cov", U); with the kept eigenvalues (descending) and the rank."""
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsyrk

    n, d = len(rows), X.shape[1]
    if n <= d:
        G = np.zeros((n, n), order="F")
        for s in _blocks(d):
            G = dsyrk(1.0, (_cols(X, s)[rows] - mu[s]).T, beta=1.0, c=G, trans=1, overwrite_c=1)
        ev, W = eigh(G, lower=False, overwrite_a=True, check_finite=False, driver="evr")
        del G
        lam = ev[::-1] / (n - 1)
        m, rank = _keep(lam, n, d, rel_tol)
        W = np.ascontiguousarray(W[:, ::-1][:, :m])
        lam = lam[:m].copy()
        return ("gram", W, np.sqrt(lam * (n - 1)), mu), lam, rank
    S = np.zeros((d, d), order="F")
    for s in _blocks(n, 4 * BLOCK):
        R = np.array(X[rows[s]], dtype=np.float64)
        R -= mu  # in place, and R goes before the next block is read: S and one block
        S = dsyrk(1.0, R.T, beta=1.0, c=S, trans=0, overwrite_c=1)
        del R
    ev, V = eigh(S, lower=False, overwrite_a=True, check_finite=False, driver="evr")
    del S
    lam = ev[::-1] / (n - 1)
    m, rank = _keep(lam, n, d, rel_tol)
    U = np.ascontiguousarray(V[:, ::-1][:, :m])
    return ("cov", U), lam[:m].copy(), rank


def _basis_vectors(X: Any, fit: np.ndarray, basis: tuple[Any, ...]) -> np.ndarray:
    """The eigenvectors (d, m) of a basis: U itself, or X̃_fitᵀ W / s from the Gram route."""
    if basis[0] == "cov":
        return basis[1]
    _, W, sv, mu = basis
    d = X.shape[1]
    U = np.empty((d, W.shape[1]))
    Ws = W / sv
    for s in _blocks(d, BLOCK // 2):
        U[s] = (_cols(X, s)[fit] - mu[s]).T @ Ws
    return U


def _coords(
    Z: Any, rows: np.ndarray, mean: np.ndarray, X: Any, fit: np.ndarray, basis: tuple[Any, ...]
) -> Iterator[tuple[slice, np.ndarray]]:
    """(Z[rows] − mean) U in blocks of ROWS rows: rows of Z (modal or text) in the mode
    coordinates of `basis`, the eigenmodes of the modal rows X[fit]."""
    if basis[0] == "cov":
        U = basis[1]
        for s in _blocks(len(rows), ROWS):
            R = np.array(Z[rows[s]], dtype=np.float64)
            R -= mean
            yield s, R @ U
            del R
        return
    _, W, sv, mu = basis
    C = np.zeros((len(rows), len(fit)))
    for s in _blocks(Z.shape[1]):
        C += (_cols(Z, s)[rows] - mean[s]) @ (_cols(X, s)[fit] - mu[s]).T
    yield from _gram_coords(C, W, sv)


def _gram_coords(C: np.ndarray, W: np.ndarray, sv: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """C W / s in blocks of ROWS rows (C: the eval rows' cross-products with the fit rows)."""
    for s in _blocks(C.shape[0], ROWS):
        B = C[s] @ W
        B /= sv
        yield s, B


def _null_weights(
    codes: np.ndarray, ev: np.ndarray, p: Mapping[str, Any], seed: int, which: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Indicator weights (R, n_eval) of the two quarters of each of the null's cuts of the
    evaluation rows (by group)."""
    from ._stats import group_halves, resample_seed

    if p["split_rule"] != "null":
        return None
    R, n = int(p["n_null"]), len(ev)
    ecodes = np.unique(codes[ev], return_inverse=True)[1]
    W1, W2 = np.zeros((R, n)), np.zeros((R, n))
    for r in range(R):
        h1, h2 = group_halves(ecodes, resample_seed(seed, "split", "null", which, r))
        W1[r, h1], W2[r, h2] = 1.0, 1.0
    return W1, W2


def _cross_fit(
    X: Any,
    Y: Any,
    A: np.ndarray,
    B: np.ndarray,
    p: Mapping[str, Any],
    codes: np.ndarray,
    seed: int,
    boot: np.ndarray | None,
    keep_scores: bool,
) -> tuple[list[Direction], float, float]:
    """Both directions (A → B, B → A) and the traces of all rows."""
    N, d = X.shape
    mu_a, mu_b = _means(X, [A, B])
    nu_a, nu_b = _means(Y, [A, B])
    nulls = [_null_weights(codes, B, p, seed, 0), _null_weights(codes, A, p, seed, 1)]
    wb = [None, None] if boot is None else [boot[:, codes[B]].astype(np.float64), boot[:, codes[A]].astype(np.float64)]
    rel_tol = float(p["rel_tol"])
    if len(A) <= d and len(B) <= d:
        ing = _gram_ingredients(X, Y, A, B, mu_a, mu_b, nu_a, nu_b, nulls, wb, rel_tol, keep_scores)
        dirs = [_label(fit, ev, p, **x) for (fit, ev), x in zip(((A, B), (B, A)), ing, strict=True)]
    else:  # one direction at a time: only its basis is held while the other is computed
        dirs = [
            _label(fit, ev, p, **_generic_ingredients(X, Y, fit, ev, mf, me, ne, nl, w, rel_tol, keep_scores))
            for fit, ev, mf, me, ne, nl, w in (
                (A, B, mu_a, mu_b, nu_b, nulls[0], wb[0]),
                (B, A, mu_b, mu_a, nu_a, nulls[1], wb[1]),
            )
        ]
    # traces of all rows from the halves': Σ‖x − μ‖² = Σ_h (Σ_{i∈h}‖x_i − μ_h‖² + n_h‖μ_h − μ‖²)
    n_a, n_b = len(A), len(B)
    mu, nu = (n_a * mu_a + n_b * mu_b) / N, (n_a * nu_a + n_b * nu_b) / N
    d0, d1 = dirs
    total = (
        d0.total * (n_b - 1) + d1.total * (n_a - 1) + n_a * ((mu_a - mu) ** 2).sum() + n_b * ((mu_b - mu) ** 2).sum()
    ) / (N - 1)
    ttotal = (
        d0.text_total * (n_b - 1)
        + d1.text_total * (n_a - 1)
        + n_a * ((nu_a - nu) ** 2).sum()
        + n_b * ((nu_b - nu) ** 2).sum()
    ) / (N - 1)
    return dirs, float(total), float(ttotal)


def _wtrace(sq: np.ndarray, quad: np.ndarray, W: np.ndarray) -> np.ndarray:
    """tr cov under frequency weights W (b, n): (W·‖x̃_i‖² − ‖Σ_i w_i x̃_i‖² / Σw) / (Σw − 1)."""
    n = W.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (W @ sq - quad / n) / (n - 1)


def _cross(Z: Any, ze: np.ndarray, mz: np.ndarray, X: Any, xf: np.ndarray, mx: np.ndarray, w: np.ndarray | None):
    """One pass over the column blocks: C = Z̃[ze] X̃[xf]ᵀ (Fortran order), the squared norms of
    the rows Z̃[ze] and, given frequency weights w (b, len(ze)), ‖Σ_i w_i z̃_i‖² per row of w."""
    from scipy.linalg.blas import dgemm

    C = np.zeros((len(ze), len(xf)), order="F")
    sq = np.zeros(len(ze))
    ws = None if w is None else np.zeros(w.shape[0])
    for s in _blocks(X.shape[1]):
        z = _cols(Z, s)[ze] - mz[s]
        x = _cols(X, s)[xf] - mx[s]
        C = dgemm(1.0, z.T, x.T, beta=1.0, c=C, trans_a=1, overwrite_c=1)  # += z xᵀ
        sq += np.einsum("ij,ij->i", z, z)
        if ws is not None:
            S = w @ z
            ws += np.einsum("ij,ij->i", S, S)
        del z, x
    return C, sq, ws


def _gram_ingredients(X, Y, A, B, mu_a, mu_b, nu_a, nu_b, nulls, wb, rel_tol, keep_scores) -> list[dict[str, Any]]:
    """Both directions when each half has no more rows than dimensions. The halves' Gram
    matrices give the modes (their eigenvectors) and every weighted modal trace (‖Σ w_i x̃_i‖²
    = wᵀGw); the cross-products X̃_B X̃_Aᵀ (both directions' modal coordinates), Ỹ_B X̃_Aᵀ and
    Ỹ_A X̃_Bᵀ (their text coordinates) follow in a pass each, so at most three n×n matrices
    are held at once (the vectors are read four times instead of once)."""
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsymm, dsyrk

    d = X.shape[1]
    na, nb = len(A), len(B)
    # Fortran order throughout: BLAS accumulates into them in place, eigh overwrites them in place
    Ga, Gb = np.zeros((na, na), order="F"), np.zeros((nb, nb), order="F")
    sqa, sqb = np.zeros(na), np.zeros(nb)
    for s in _blocks(d):
        Xb = _cols(X, s)
        xa, xb = Xb[A] - mu_a[s], Xb[B] - mu_b[s]
        del Xb
        Ga = dsyrk(1.0, xa.T, beta=1.0, c=Ga, trans=1, overwrite_c=1)  # upper triangle
        Gb = dsyrk(1.0, xb.T, beta=1.0, c=Gb, trans=1, overwrite_c=1)
        sqa += np.einsum("ij,ij->i", xa, xa)
        sqb += np.einsum("ij,ij->i", xb, xb)
        del xa, xb

    def quad(G: np.ndarray, W: np.ndarray) -> np.ndarray:
        """wᵀGw for every row w of W, from G's upper triangle."""
        return np.einsum("ij,ij->i", dsymm(1.0, G, W, side=1, lower=0), W)

    out = []
    for Gq, sqx, nl, w in ((Gb, sqb, nulls[0], wb[0]), (Ga, sqa, nulls[1], wb[1])):
        ing: dict[str, Any] = {"total": float(sqx.sum() / (len(sqx) - 1)), "null_w": nl, "boot_w": w}
        if nl is not None:  # the null's modal traces, from the evaluation half's Gram matrix
            ing["null_traces"] = (_wtrace(sqx, quad(Gq, nl[0]), nl[0]), _wtrace(sqx, quad(Gq, nl[1]), nl[1]))
        if w is not None:
            ing["boot_traces"] = (_wtrace(sqx, quad(Gq, w), w),)
        out.append(ing)
    bases = []
    grams = [Ga, Gb]
    del Ga, Gb
    for i in range(2):
        G, grams[i] = grams[i], None
        n = G.shape[0]
        ev, W = eigh(G, lower=False, overwrite_a=True, check_finite=False, driver="evr")
        del G  # each Gram matrix goes as soon as it is decomposed
        lam = ev[::-1] / (n - 1)
        m, rank = _keep(lam, n, d, rel_tol)
        W = np.ascontiguousarray(W[:, ::-1][:, :m])
        bases.append((W, np.sqrt(lam[:m] * (n - 1)), lam[:m].copy(), rank))
    (Wa, sa, la, ra), (Wb, sb, lb, rb) = bases
    out[0].update(fit_lam=la, rank=ra, basis=("gram", Wa, sa, mu_a))
    out[1].update(fit_lam=lb, rank=rb, basis=("gram", Wb, sb, mu_b))
    Cba = _cross(X, B, mu_b, X, A, mu_a, None)[0]
    for ing, C, W, sv, n_e in ((out[0], Cba, Wa, sa, nb), (out[1], Cba.T, Wb, sb, na)):
        ing["P"] = np.empty((n_e, len(sv))) if keep_scores else None
        nl, w = ing["null_w"], ing["boot_w"]
        ing["psums"] = _col_sums(_gram_coords(C, W, sv), len(sv), [*(nl or (None, None)), w], ing["P"])
    del Cba, C
    for ing, (ye, nu_e, xf, mu_f, W, sv) in zip(
        out, ((B, nu_b, A, mu_a, Wa, sa), (A, nu_a, B, mu_b, Wb, sb)), strict=True
    ):
        D, sqy, ys = _cross(Y, ye, nu_e, X, xf, mu_f, ing["boot_w"])
        ing["text_total"] = float(sqy.sum() / (len(sqy) - 1))
        if ing["boot_w"] is not None:
            ing["boot_traces"] += (_wtrace(sqy, ys, ing["boot_w"]),)
        ing["qsums"] = _col_sums(_gram_coords(D, W, sv), len(sv), [ing["boot_w"]], None)
        del D
    return out


def _generic_ingredients(X, Y, fit, ev, mu_f, mu_e, nu_e, nulls, wb, rel_tol, keep_scores) -> dict[str, Any]:
    """One direction by the general route (a half with more rows than dimensions)."""
    basis, fit_lam, rank = _fit_basis(X, fit, mu_f, rel_tol)
    m = len(fit_lam)
    P = np.empty((len(ev), m)) if keep_scores else None
    ing: dict[str, Any] = {
        "psums": _col_sums(_coords(X, ev, mu_e, X, fit, basis), m, [*(nulls or (None, None)), wb], P),
        "qsums": _col_sums(_coords(Y, ev, nu_e, X, fit, basis), m, [wb], None),
        "P": P,
        "total": _trace(X, ev, mu_e),
        "text_total": _trace(Y, ev, nu_e),
        "fit_lam": fit_lam,
        "rank": rank,
        "basis": basis,
        "null_w": nulls,
        "boot_w": wb,
    }
    if nulls is not None:
        ing["null_traces"] = (_weighted_traces(X, ev, mu_e, nulls[0]), _weighted_traces(X, ev, mu_e, nulls[1]))
    if wb is not None:
        ing["boot_traces"] = (_weighted_traces(X, ev, mu_e, wb), _weighted_traces(Y, ev, nu_e, wb))
    return ing


def _label(
    fit: np.ndarray,
    ev: np.ndarray,
    p: Mapping[str, Any],
    *,
    psums: tuple[np.ndarray, list[Any]],
    qsums: tuple[np.ndarray, list[Any]],
    P: np.ndarray | None,
    total: float,
    text_total: float,
    fit_lam: np.ndarray,
    rank: int,
    basis: tuple[Any, ...],
    null_w: Any = None,
    boot_w: Any = None,
    null_traces: Any = None,
    boot_traces: Any = None,
) -> Direction:
    """α̃ of one direction's modes, their threshold (null quantile or τ) and labels, and the
    group-bootstrap replicates of the evaluation rows (modes and thresholds held fixed), from
    the column sums of its modal coordinates P and text coordinates Q (`_col_sums`: modal
    with the null's two quarter weights and the bootstrap's, text with the bootstrap's)."""
    n = len(ev)
    (psq, (n1, n2, bp)), (qsq, (bq,)) = psums, qsums
    lam = psq / (n - 1)  # P and Q are centred on the eval rows' mean
    tv = qsq / (n - 1)
    trace_scaled = p["alpha_scale"] == "trace"
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = tv / lam
        if trace_scaled:
            alpha = alpha * (total / text_total)
    m = len(lam)
    if p["split_rule"] == "null":
        W1, W2 = null_w
        l1, l2 = _weighted_var(W1, *n1), _weighted_var(W2, *n2)
        with np.errstate(invalid="ignore", divide="ignore"):
            a_null = l2 / l1
            if trace_scaled:
                a_null *= (null_traces[0] / null_traces[1])[:, None]
        thr = np.nanquantile(a_null, float(p["null_quantile"]), axis=0) if m else np.zeros(0)
        ms = alpha < thr
    else:
        thr = np.full(m, float(p["tau"]))
        ms = alpha <= thr
    out = Direction(
        fit=fit,
        eval=ev,
        fit_eigenvalues=fit_lam,
        lam=lam,
        tv=tv,
        total=total,
        text_total=text_total,
        alpha=alpha,
        threshold=thr,
        ms=ms,
        rank=rank,
        P=P,
        _basis=basis,
    )
    if boot_w is not None:
        bl, bt = _weighted_var(boot_w, *bp), _weighted_var(boot_w, *bq)
        btot, bttot = boot_traces
        with np.errstate(invalid="ignore", divide="ignore"):
            ba = bt / bl
            if trace_scaled:
                ba = ba * (btot / bttot)[:, None]
        bms = ba < thr[None] if p["split_rule"] == "null" else ba <= thr[None]
        out.boot = {"lam": bl, "tv": bt, "alpha": ba, "ms": bms, "total": btot, "text_total": bttot}
    return out


def _in_sample(X: Any, Y: Any, p: Mapping[str, Any], keep_scores: bool) -> Direction:
    """The in-sample split (cross_fit false): eigenvectors and variances from all rows."""
    from ._linalg import modes

    m = modes(
        X,
        Y,
        protocol="default",
        tau=float(p["tau"]),
        rel_tol=float(p["rel_tol"]),
        vectors=True,
        scores=keep_scores,
        alpha_scale="trace" if p["alpha_scale"] == "trace" else "none",
    )
    rows = np.arange(X.shape[0])
    thr = np.full(m.n_modes, float(p["tau"]))
    return Direction(
        fit=rows,
        eval=rows,
        fit_eigenvalues=m.eigenvalues,
        lam=m.eigenvalues,
        tv=m.text_variance,
        total=m.total_variance,
        text_total=m.text_total_variance,
        alpha=m.alpha,
        threshold=thr,
        ms=m.alpha <= thr,
        rank=m.rank,
        P=m.scores,
        _basis=("cov", m.eigenvectors),
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


# --------------------------------------------------------------------------- class scatter


def scatter_terms(
    P: np.ndarray, y: np.ndarray, n_classes: int, W: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-mode between-class scatter S_B,k = Σ_c n_c (μ_ck − μ_k)² and within-class scatter
    S_W,k of the rows P (n, m) with integer labels y, under row weights W (b, n) (None: one
    weighting of ones). Returns (S_B (b, m), S_W (b, m), n (b,))."""
    if W is None:
        W = np.ones((1, len(y)))
    onehot = np.zeros((len(y), n_classes))
    onehot[np.arange(len(y)), y] = 1.0
    n = W.sum(1)
    tot = W @ P  # (b, m)
    sq = W @ (P * P)
    sb = np.zeros_like(tot)
    sw = sq.copy()
    for c in range(n_classes):
        wc = W * onehot[:, c]
        nc = wc.sum(1)
        sc = wc @ P
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(nc[:, None] > 0, sc * sc / np.maximum(nc, 1e-300)[:, None], 0.0)
        sb += part
        sw -= part
    with np.errstate(invalid="ignore", divide="ignore"):
        sb -= tot * tot / n[:, None]
    return sb, sw, n


def corrected(sb: np.ndarray, sw: np.ndarray, n: np.ndarray, n_classes: int) -> np.ndarray:
    """S_B minus its expectation when the classes carry nothing: (C − 1)/(n − C) · S_W."""
    return sb - ((n_classes - 1) / np.maximum(n - n_classes, 1))[:, None] * sw


def _plugin_null(
    P: np.ndarray, ms: np.ndarray, Yp: np.ndarray, C: int, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in between-class scatter in the MS modes and in all kept modes for each row of
    permuted labels Yp (R, n) of the rows P (n, m)."""
    n = P.shape[0]
    tot2 = P.sum(0) ** 2 / n
    eye = np.eye(C)
    ms_out, all_out = np.empty(Yp.shape[0]), np.empty(Yp.shape[0])
    for s in _blocks(Yp.shape[0], chunk):
        oh = eye[Yp[s]]  # (r, n, C)
        sums = np.matmul(oh.transpose(0, 2, 1), P)  # (r, C, m)
        nc = oh.sum(1)  # (r, C)
        with np.errstate(invalid="ignore", divide="ignore"):
            sb = np.where(nc[..., None] > 0, sums * sums / np.maximum(nc, 1e-300)[..., None], 0.0).sum(1) - tot2
        ms_out[s] = (sb * ms).sum(1)
        all_out[s] = sb.sum(1)
    return ms_out, all_out


@dataclass
class AttributeShares:
    """Where one attribute's class scatter sits under a split (pooled over its directions)."""

    var_frac_MS: float  # noise-corrected
    var_frac_TA: float
    var_frac_MS_plugin: float  # the plug-in (uncorrected) share: the permutation test's statistic
    weighted_alpha: float  # Σ_k d_k α̃_k / Σ_k d_k (noise-corrected scatter weights)
    signal_fraction: float  # corrected / plug-in total scatter in the kept modes
    p_value: float | None  # permutation p of the plug-in MS share (group structure kept)
    null_mean: float | None
    null_q: tuple[float, float] | None
    n_rows: int
    boot: dict[str, np.ndarray] = field(default_factory=dict)


def attribute_shares(
    split: Split,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    n_perm: int = 0,
    n_boot: int = 0,
    seed: int = 0,
    names: Sequence[str] = (),
) -> AttributeShares | None:
    """The attribute's scatter under `split` (rows: the run's rows; '' = unlabelled), with a
    label-permutation null (labels permuted across `groups`, `_stats.permute_labels_by_group`)
    and group-bootstrap replicates (`_stats.group_resamples`, seeded by `names`)."""
    from ._stats import group_codes, group_resamples, permute_labels_by_group, resample_seed

    labels = np.asarray(labels).astype(str)
    lab = labels != ""
    classes = np.unique(labels[lab])
    C = len(classes)
    if C < 2:
        return None
    y_all = np.full(len(labels), -1)
    y_all[lab] = np.searchsorted(classes, labels[lab])
    gcodes = group_codes(groups, len(labels))[0] if groups is not None else np.arange(len(labels))
    sel = []  # per direction: (eval positions labelled, P rows)
    for d in split.directions:
        if d.P is None:
            raise MchError("attribute_shares needs the split computed with scores=True")
        keep = lab[d.eval]
        sel.append((keep, d.eval[keep]))

    def pooled(y_of: np.ndarray, W_of=None) -> tuple[np.ndarray, ...]:
        ms_c = tot_c = ms_p = tot_p = wa = 0.0
        for d, (keep, rows) in zip(split.directions, sel, strict=True):
            W = None if W_of is None else W_of(rows)
            sb, sw, n = scatter_terms(d.P[keep], y_of[rows], C, W)
            dc = corrected(sb, sw, n, C)
            ms_c = ms_c + (dc * d.ms).sum(1)
            tot_c = tot_c + dc.sum(1)
            ms_p = ms_p + (sb * d.ms).sum(1)
            tot_p = tot_p + sb.sum(1)
            wa = wa + (dc * np.nan_to_num(d.alpha)).sum(1)
        return ms_c, tot_c, ms_p, tot_p, wa

    ms_c, tot_c, ms_p, tot_p, wa = (float(x[0]) for x in pooled(y_all))
    nan = float("nan")
    share = ms_c / tot_c if tot_c > 0 else nan
    plug = ms_p / tot_p if tot_p > 0 else nan
    p_value = null_mean = null_q = None
    n_groups_l = len(np.unique(gcodes[lab]))
    if n_perm and n_groups_l >= 2:
        rng = np.random.default_rng(resample_seed(seed, *names, "permutation"))
        rows_l = np.flatnonzero(lab)
        sub, n_sub = group_codes(gcodes[rows_l].astype(str))
        perms = np.empty((n_perm + 1, len(rows_l)), dtype=np.int64)
        perms[0] = y_all[rows_l]  # row 0: the observed labels, through the same arithmetic as the null
        for r in range(1, n_perm + 1):  # one row per group: a plain permutation (the same law, no Python loop)
            perms[r] = (
                y_all[rows_l][rng.permutation(len(rows_l))]
                if n_sub == len(rows_l)
                else permute_labels_by_group(y_all[rows_l], sub, rng)
            )
        pos = np.full(len(labels), -1)
        pos[rows_l] = np.arange(len(rows_l))
        ms_n = np.zeros(n_perm + 1)
        tot_n = np.zeros(n_perm + 1)
        for d, (keep, rows) in zip(split.directions, sel, strict=True):
            a, b = _plugin_null(d.P[keep], d.ms, perms[:, pos[rows]], C)
            ms_n += a
            tot_n += b
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = np.where(tot_n > 0, ms_n / tot_n, np.nan)
        obs, null = stat[0], stat[1:]
        ok = null[np.isfinite(null)]
        p_value = float((1 + (ok >= obs).sum()) / (1 + len(ok))) if np.isfinite(obs) else None
        null_mean = float(ok.mean()) if len(ok) else None
        null_q = (float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975))) if len(ok) else None
    boot: dict[str, np.ndarray] = {}
    if n_boot and n_groups_l >= 2:
        G = int(gcodes.max()) + 1
        counts = group_resamples(G, n_boot, resample_seed(seed, *names)).counts
        bms = np.empty(n_boot)
        bwa = np.empty(n_boot)
        for s in _blocks(n_boot, 64):
            W_of = lambda rows, s=s: counts[s][:, gcodes[rows]].astype(np.float64)  # noqa: E731
            a, b, _, _, w = pooled(y_all, W_of)
            with np.errstate(invalid="ignore", divide="ignore"):
                bms[s] = np.where(b > 0, a / b, np.nan)
                bwa[s] = np.where(b > 0, w / b, np.nan)
        boot = {"var_frac_MS": bms, "var_frac_TA": 1 - bms, "weighted_alpha": bwa}
    return AttributeShares(
        var_frac_MS=share,
        var_frac_TA=1 - share if np.isfinite(share) else nan,
        var_frac_MS_plugin=plug,
        weighted_alpha=wa / tot_c if tot_c > 0 else nan,
        signal_fraction=tot_c / tot_p if tot_p > 0 else nan,
        p_value=p_value,
        null_mean=null_mean,
        null_q=null_q,
        n_rows=int(lab.sum()),
        boot=boot,
    )


# --------------------------------------------------------------------------- functional split


@dataclass
class FunctionalSplit:
    """The directions the decoder reads (science.md §7): the top eigenvectors of
    F = E[ḡ ḡᵀ], ḡ the gradient of the decoder log-likelihood of the content with respect to
    the pooled adapter output, taken in the modal law's whitened coordinates (ḡ_w = Λ^{1/2}Uᵀḡ,
    so a direction weighs its sensitivity times the data's variation along it) and mapped
    back to the adapter space; `read` spans the top ones holding `mass` of tr F."""

    read: np.ndarray  # (d, n_read) orthonormal basis of the read directions
    eigenvalues: np.ndarray  # eigenvalues of the whitened F, descending
    n_read: int
    mass: float
    n_samples: int

    def record(self) -> dict[str, Any]:
        ev = self.eigenvalues
        share = ev / ev.sum() if ev.size and ev.sum() > 0 else ev
        return {
            "name": "functional",
            "definition": "top eigenvectors of E[grad log q grad log q^T] in the modal "
            f"law's whitened coordinates, holding {self.mass:g} of its trace (science.md §7)",
            "mass": self.mass,
            "n_read": self.n_read,
            "n_samples": self.n_samples,
            "dim": int(self.read.shape[0]),
            "eigenvalue_share_top10": [_round(x) for x in share[:10]],
        }


def whitening_basis(X: Any, rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(U (d, m), λ (m,)): the kept eigenmodes of the covariance of all rows of X."""
    rows = np.arange(X.shape[0])
    (mu,) = _means(X, [rows])
    basis, lam, _ = _fit_basis(X, rows, mu, rel_tol)
    return _basis_vectors(X, rows, basis), lam


def functional_split(G: np.ndarray, U: np.ndarray, lam: np.ndarray, mass: float = 0.9) -> FunctionalSplit:
    """From per-sample pooled gradients G (n, d) and the modal eigenmodes (U, λ)."""
    G = np.asarray(G, dtype=np.float64)
    if G.shape[0] < 2:
        raise MchError("the functional split needs the gradients of at least 2 samples")
    if not 0 < mass <= 1:
        raise MchError(f"functional_mass must lie in (0, 1], not {mass}")
    sq = np.sqrt(np.maximum(lam, 0))
    Gw = (G @ U) * sq  # gradients in whitened coordinates
    _, s, Vt = np.linalg.svd(Gw, full_matrices=False)
    ev = s * s / G.shape[0]
    keep = ev > ev[0] * 1e-12 if ev.size and ev[0] > 0 else np.zeros(ev.shape, bool)
    ev, V = ev[keep], Vt[keep].T
    cum = np.cumsum(ev) / ev.sum() if ev.size else ev
    k = min(int(np.searchsorted(cum, mass - 1e-12) + 1), len(ev)) if ev.size else 0
    B = U @ (sq[:, None] * V[:, :k])  # back in the adapter space (not orthogonal)
    Q = np.linalg.qr(B)[0] if k else np.zeros((U.shape[0], 0))
    return FunctionalSplit(read=Q, eigenvalues=ev, n_read=k, mass=float(mass), n_samples=int(G.shape[0]))


def functional_shares(
    fs: FunctionalSplit,
    X: Any,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 0,
    seed: int = 0,
    names: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The attribute's noise-corrected class scatter (all labelled rows, full space) inside the
    read subspace (`var_frac_read`) and outside it (`var_frac_unread`: the functional
    counterpart of MS), with group-bootstrap replicates of the rows (the read subspace held
    fixed, as the covariance split's CIs hold its modes)."""
    from ._stats import group_codes, group_resamples, resample_seed

    labels = np.asarray(labels).astype(str)
    rows = np.flatnonzero(labels != "")
    classes = np.unique(labels[rows])
    C = len(classes)
    if C < 2:
        return None
    y = np.searchsorted(classes, labels[rows])
    Xr = np.asarray(X)[rows].astype(np.float64)
    Xr -= Xr.mean(0)
    R = Xr @ fs.read
    W = None
    if n_boot:
        codes, G = group_codes(None if groups is None else np.asarray(groups)[rows], len(rows))
        if G >= 2:
            W = np.vstack(
                [
                    np.ones((1, len(rows))),
                    group_resamples(G, n_boot, resample_seed(seed, *names)).counts[:, codes].astype(float),
                ]
            )
    sb_f, sw_f, n = scatter_terms(Xr, y, C, W)
    full = corrected(sb_f, sw_f, n, C).sum(1)
    sb, sw, n = scatter_terms(R, y, C, W)
    read = corrected(sb, sw, n, C).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(full > 0, read / full, np.nan)
    out: dict[str, Any] = {
        "var_frac_read": float(share[0]),
        "var_frac_unread": float(1 - share[0]),
        "scatter_signal": float(full[0]),
    }
    if W is not None:
        out["boot_unread"] = 1 - share[1:]
    return out


def known_truth(attributes: Mapping[str, Any], ms_share: Mapping[str, float]) -> dict[str, Any] | None:
    """Did a split put every attribute the paired text names (text_describable: what the
    decoder was trained to read) below every hidden one in MS share? None without both kinds."""
    read = [a for a, at in attributes.items() if getattr(at, "text_describable", False) and a in ms_share]
    hidden = [a for a, at in attributes.items() if not getattr(at, "text_describable", False) and a in ms_share]
    vals = {a: ms_share[a] for a in read + hidden}
    if not read or not hidden or not all(np.isfinite(v) for v in vals.values()):
        return None
    ok = max(vals[a] for a in read) < min(vals[a] for a in hidden)
    return {"text_describable": read, "hidden": hidden, "recovered": bool(ok)}
