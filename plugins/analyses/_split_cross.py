"""One direction of the cross-fitted split (`_split`): the modes of one half, their α̃ on
the other, the null's threshold and the group-bootstrap replicates; and the in-sample split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._split_basis import (
    _basis_vectors,
    _blocks,
    _centred,
    _col_sums,
    _coords,
    _fit_basis,
    _gram_coords,
    _keep,
    _means,
    _trace,
    _weighted_traces,
    _weighted_var,
)


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
    wb = [None, None] if boot is None else [boot[:, codes[B]].astype(np.float64), boot[:, codes[A]].astype(np.float64)]
    if len(A) <= d and len(B) <= d:
        ing = _gram_ingredients(X, Y, A, B, mu_a, mu_b, nu_a, nu_b, codes, seed, wb, p, keep_scores)
        dirs = [_label(fit, ev, p, **x) for (fit, ev), x in zip(((A, B), (B, A)), ing, strict=True)]
    else:  # one direction at a time: only its basis is held while the other is computed
        nulls = [_null_weights(codes, B, p, seed, 0), _null_weights(codes, A, p, seed, 1)]
        dirs = [
            _label(fit, ev, p, **_generic_ingredients(X, Y, fit, ev, mf, me, ne, nl, w, p, keep_scores))
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
        z, x = _centred(Z, ze, s, mz), _centred(X, xf, s, mx)
        C = dgemm(1.0, z.T, x.T, beta=1.0, c=C, trans_a=1, overwrite_c=1)  # += z xᵀ
        sq += np.einsum("ij,ij->i", z, z)
        if ws is not None:
            S = w @ z
            ws += np.einsum("ij,ij->i", S, S)
        del z, x
    return C, sq, ws


def _gram_ingredients(X, Y, A, B, mu_a, mu_b, nu_a, nu_b, codes, seed, wb, p, keep_scores) -> list[dict[str, Any]]:
    """Both directions when each half has no more rows than dimensions. The halves' Gram
    matrices give the modes (their eigenvectors) and every weighted modal trace (‖Σ w_i x̃_i‖²
    = wᵀGw); the cross-products X̃_B X̃_Aᵀ (both directions' modal coordinates), Ỹ_B X̃_Aᵀ and
    Ỹ_A X̃_Bᵀ (their text coordinates) follow in a pass each, so at most three n×n matrices
    are held at once (the vectors are read four times instead of once)."""
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsymm, dsyrk

    d, rel_tol = X.shape[1], float(p["rel_tol"])
    na, nb = len(A), len(B)
    # Fortran order throughout: BLAS accumulates into them in place, eigh overwrites them in place
    Ga, Gb = np.zeros((na, na), order="F"), np.zeros((nb, nb), order="F")
    sqa, sqb = np.zeros(na), np.zeros(nb)
    for s in _blocks(d):
        xa, xb = _centred(X, A, s, mu_a), _centred(X, B, s, mu_b)
        Ga = dsyrk(1.0, xa.T, beta=1.0, c=Ga, trans=1, overwrite_c=1)  # upper triangle
        Gb = dsyrk(1.0, xb.T, beta=1.0, c=Gb, trans=1, overwrite_c=1)
        sqa += np.einsum("ij,ij->i", xa, xa)
        sqb += np.einsum("ij,ij->i", xb, xb)
        del xa, xb

    def quad(G: np.ndarray, W: np.ndarray) -> np.ndarray:
        """wᵀGw for every row w of W, from G's upper triangle."""
        return np.einsum("ij,ij->i", dsymm(1.0, G, W, side=1, lower=0), W)

    out = []
    nulls = [_null_weights(codes, B, p, seed, 0), _null_weights(codes, A, p, seed, 1)]
    for Gq, sqx, nl, w in ((Gb, sqb, nulls[0], wb[0]), (Ga, sqa, nulls[1], wb[1])):
        ing: dict[str, Any] = {"total": float(sqx.sum() / (len(sqx) - 1)), "null_w": nl, "boot_w": w}
        if nl is not None:  # the null's modal traces, from the evaluation half's Gram matrix
            ing["null_traces"] = (_wtrace(sqx, quad(Gq, nl[0]), nl[0]), _wtrace(sqx, quad(Gq, nl[1]), nl[1]))
        if w is not None:
            ing["boot_traces"] = (_wtrace(sqx, quad(Gq, w), w),)
        out.append(ing)
    del Gq, nl, nulls  # else Ga outlives its decomposition, and the null's weights their sums
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
        weights = [*(ing["null_w"] or (None, None)), ing["boot_w"]]
        ing["psums"] = _col_sums(_gram_coords(C, W, sv), len(sv), weights, ing["P"])
        del weights
        _settle_null(ing, p)
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


def _generic_ingredients(X, Y, fit, ev, mu_f, mu_e, nu_e, nulls, wb, p, keep_scores) -> dict[str, Any]:
    """One direction by the general route (a half with more rows than dimensions)."""
    basis, fit_lam, rank = _fit_basis(X, fit, mu_f, float(p["rel_tol"]))
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
    _settle_null(ing, p)
    return ing


def _settle_null(ing: dict[str, Any], p: Mapping[str, Any]) -> None:
    """Reduce the null's column sums to its per-mode threshold as soon as they are complete
    (and its two quarters' traces known): the `null_quantile` of modal α̃ between the two
    quarters of each cut. Frees the sums (2 × 2 × n_null × m floats)."""
    sq, (n1, n2, bp) = ing["psums"]
    ing["psums"] = (sq, [None, None, bp])
    if ing["null_w"] is None:
        return
    (W1, W2), (t1, t2) = ing.pop("null_w"), ing.pop("null_traces")
    l1, l2 = _weighted_var(W1, *n1), _weighted_var(W2, *n2)
    del n1, n2
    with np.errstate(invalid="ignore", divide="ignore"):
        a_null = l2 / l1
        if p["alpha_scale"] == "trace":
            a_null *= (t1 / t2)[:, None]
    ing["null_threshold"] = np.nanquantile(a_null, float(p["null_quantile"]), axis=0) if len(sq) else np.zeros(0)


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
    null_threshold: np.ndarray | None = None,
    boot_traces: Any = None,
) -> Direction:
    """α̃ of one direction's modes, their threshold (null quantile or τ) and labels, and the
    group-bootstrap replicates of the evaluation rows (modes and thresholds held fixed), from
    the column sums of its modal coordinates P and text coordinates Q (`_col_sums`: modal
    with the bootstrap's weights, text with the bootstrap's; the null's already reduced to
    its threshold by `_settle_null`)."""
    n = len(ev)
    (psq, (_, _, bp)), (qsq, (bq,)) = psums, qsums
    lam = psq / (n - 1)  # P and Q are centred on the eval rows' mean
    tv = qsq / (n - 1)
    trace_scaled = p["alpha_scale"] == "trace"
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = tv / lam
        if trace_scaled:
            alpha = alpha * (total / text_total)
    m = len(lam)
    if p["split_rule"] == "null":
        thr = null_threshold
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
