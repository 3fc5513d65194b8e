"""Eigenmodes of the modal covariance and their alignment with the text law (science.md §4).

    Σ_M = cov(modal rows), Σ_T = cov(text rows), (λ_k, u_k) = eigenpairs of Σ_M, descending
    α_k = u_kᵀ Σ_T u_k / λ_k          TA: α_k > τ      MS: α_k ≤ τ

`modes(modal, text, protocol)` is the one implementation, shared by the `modes` and
`per_type` analyses and by the causal tests (ablation, MS swap, gradient projection):

- `default` keeps only modes with λ_k > rel_tol·λ_max and k < rank(X_c): with N < d the
  d − N + 1 null modes would otherwise get α ≈ 1e6 and flood TA. It never forms a d×d
  matrix when N < d: it diagonalises the N×N Gram matrix X_c X_cᵀ (same non-null
  eigenpairs), so its memory is O(N·min(N, d)) and it reads the vectors in column blocks.
  A paired row bootstrap (eigenbasis held fixed) gives replicates of every per-mode number.
- `paper` is the reference's script 07: all d modes of the d×d ddof-1 covariance from
  `numpy.linalg.eigh`, sorted by `argsort()[::-1]`, λ clipped at 1e-10 in α's denominator.

α for all modes at once: u_kᵀ Σ_T u_k = ‖Y_c u_k‖² / (N_T − 1), one matrix product.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mch.api import MchError

BLOCK = 512  # columns (or rows) converted to float64 at a time
PAPER_EPS = 1e-10  # the reference's clip of λ in α's denominator


@dataclass
class Modes:
    """Eigenmodes of Σ_M kept by the protocol, in descending λ order.

    `eigenvectors[:, k]` is u_k (d, m); `text_variance[k]` = u_kᵀ Σ_T u_k; `mean` is the modal
    mean μ (for mean-preserving ablation); `boot` holds bootstrap replicates (B, ...) of
    eigenvalues, text_variance, alpha, total_variance, text_total_variance (default only)."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    alpha: np.ndarray
    text_variance: np.ndarray
    mean: np.ndarray
    total_variance: float  # tr Σ_M (all d directions)
    text_total_variance: float  # tr Σ_T
    rank: int
    dim: int  # d
    n_rows: int
    n_text_rows: int
    protocol: str
    tau: float = 0.5
    boot: dict[str, np.ndarray] = field(default_factory=dict)
    scores: np.ndarray | None = None  # (N, m) modal rows in mode coordinates, X_c u_k, if asked

    @property
    def n_modes(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def ta(self) -> np.ndarray:
        return self.alpha > self.tau

    @property
    def ms(self) -> np.ndarray:
        return self.alpha <= self.tau

    @property
    def cumulative_variance(self) -> np.ndarray:
        """cumsum(λ)/Σλ over the modes held (all d under paper, as the reference)."""
        return np.cumsum(self.eigenvalues) / self.eigenvalues.sum()

    def subspace(self, which: str) -> np.ndarray:
        """Orthonormal basis (d, k) of the TA or MS modes (or all kept modes)."""
        if self.eigenvectors is None:
            raise MchError("these modes were computed without eigenvectors")
        mask = {"ta": self.ta, "ms": self.ms, "all": np.ones(self.n_modes, bool)}[which.lower()]
        return self.eigenvectors[:, mask]


def one_blas_thread() -> Any:
    """Context for loops of many small matrix operations: waking BLAS threads for each tiny
    product costs more than it saves (and much more on a shared, busy machine)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _blocks(n: int, block: int = BLOCK) -> Iterator[slice]:
    for j in range(0, n, block):
        yield slice(j, min(j + block, n))


def _cols(X: Any, s: slice, mean: np.ndarray | None = None) -> np.ndarray:
    """Columns `s` of X as float64, centred if `mean` is given."""
    out = np.array(X[:, s], dtype=np.float64)
    if mean is not None:
        out -= mean[s]
    return out


def _rows(X: Any, s: slice, mean: np.ndarray | None = None) -> np.ndarray:
    out = np.array(X[s], dtype=np.float64)
    if mean is not None:
        out -= mean
    return out


def column_mean(X: Any) -> np.ndarray:
    return np.concatenate([_cols(X, s).mean(0) for s in _blocks(X.shape[1])])


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, n) row multiplicities of `n_boot` with-replacement resamples of n rows. The same
    (n, n_boot, seed) always gives the same resamples, so analyses can share them."""
    from ._stats import bootstrap_rows

    counts = np.zeros((n_boot, n))
    b = 0
    for idx in bootstrap_rows(n, n_boot, seed):
        for row in idx:
            counts[b] = np.bincount(row, minlength=n)
            b += 1
    return counts


def _weighted_var(counts: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Column variances (ddof 1) of P under each row of `counts`: (B, k)."""
    n = counts.shape[1]
    s1 = counts @ P
    s2 = counts @ (P * P)
    return (s2 - s1 * s1 / n) / (n - 1)


def _keep(lam: np.ndarray, n: int, d: int, rel_tol: float) -> tuple[np.ndarray, int]:
    """Modes kept by the default protocol: λ_k > rel_tol·λ_max and k < numerical rank.

    The rank counts eigenvalues above the eigensolver's rounding floor (λ_max·max(n, d)·eps),
    capped at n − 1 because the rows are centred."""
    if lam.size == 0 or lam[0] <= 0:
        return np.zeros(lam.shape, bool), 0
    rank = int((lam > lam[0] * max(n, d) * np.finfo(np.float64).eps).sum())
    rank = min(rank, n - 1, d)
    keep = (lam > rel_tol * lam[0]) & (np.arange(lam.size) < rank)
    return keep, rank


def modes(
    modal: Any,
    text: Any,
    protocol: str = "default",
    tau: float = 0.5,
    rel_tol: float = 1e-6,
    n_boot: int = 0,
    seed: int = 0,
    vectors: bool = True,
    scores: bool = False,
    alpha_scale: str = "none",
) -> Modes:
    """Eigenmodes of the modal covariance, α against the text covariance (module docstring).

    `modal` (N, d) and `text` (N_T, d) may be memory-mapped float32; they are read in blocks.
    `n_boot` > 0 (default protocol, paired rows N_T == N) adds bootstrap replicates drawn by
    `bootstrap_counts(N, n_boot, seed)`. `scores=True` also returns X_c u_k (N, m).
    `alpha_scale="trace"` multiplies α by tr Σ_M / tr Σ_T (in every replicate too): α is a
    ratio of two laws' variances, so an overall scale difference between them (pooled token
    embeddings vs adapter outputs) shifts every α; science.md's α is the unscaled one."""
    if alpha_scale not in ("none", "trace"):
        raise MchError(f"alpha_scale must be 'none' or 'trace', not {alpha_scale!r}")
    m = _modes(modal, text, protocol, tau, rel_tol, n_boot, seed, vectors, scores)
    if alpha_scale == "trace" and m.text_total_variance > 0:
        m.alpha = m.alpha * (m.total_variance / m.text_total_variance)
        if m.boot:
            m.boot["alpha"] = m.boot["alpha"] * (m.boot["total_variance"] / m.boot["text_total_variance"])[:, None]
    return m


def _modes(modal, text, protocol, tau, rel_tol, n_boot, seed, vectors, scores) -> Modes:
    if modal.ndim != 2 or text.ndim != 2:
        raise MchError("modes needs two 2-D arrays (rows = samples)")
    if modal.shape[1] != text.shape[1]:
        raise MchError(
            f"modal and text vectors differ in width ({modal.shape[1]} vs {text.shape[1]}); "
            f"mode alignment compares them in one space"
        )
    if modal.shape[0] < 3 or text.shape[0] < 3:
        raise MchError("mode alignment needs at least 3 modal and 3 text rows")
    if protocol == "paper":
        return _paper(modal, text, tau, vectors, scores)
    if n_boot and text.shape[0] != modal.shape[0]:
        raise MchError("the bootstrap over rows needs paired modal and text rows (same N)")
    N, d = modal.shape
    if N <= d:
        return _gram(modal, text, tau, rel_tol, n_boot, seed, vectors, scores)
    return _cov(modal, text, tau, rel_tol, n_boot, seed, vectors, scores)


def _traces(X: Any, mean: np.ndarray, counts: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """tr cov(X) and, under each bootstrap row weighting, its replicate."""
    n = X.shape[0]
    tot = 0.0
    rep = None if counts is None else np.zeros(counts.shape[0])
    for s in _blocks(X.shape[1]):
        Xb = _cols(X, s, mean)
        tot += float((Xb * Xb).sum())
        if counts is not None:
            rep += _weighted_var(counts, Xb).sum(1)
    return tot / (n - 1), rep


def _projected_variances(
    Y: Any, my: np.ndarray, U: np.ndarray, counts: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """u_kᵀ Σ_Y u_k for every column of U, and its replicate under each bootstrap row
    weighting, reading Y in row blocks."""
    NT, m = Y.shape[0], U.shape[1]
    tv = np.zeros(m)
    s1 = s2 = None
    if counts is not None:
        s1, s2 = np.zeros((counts.shape[0], m)), np.zeros((counts.shape[0], m))
    for s in _blocks(NT, BLOCK):
        PT = _rows(Y, s, my) @ U
        PT2 = PT * PT
        tv += PT2.sum(0)
        if counts is not None:
            s1 += counts[:, s] @ PT
            s2 += counts[:, s] @ PT2
    boot = None if counts is None else (s2 - s1 * s1 / NT) / (NT - 1)
    return tv / (NT - 1), boot


def _gram(X, Y, tau, rel_tol, n_boot, seed, vectors, want_scores) -> Modes:
    from scipy.linalg import eigh
    from scipy.linalg.blas import dgemm, dsyrk

    N, d = X.shape
    NT = Y.shape[0]
    mx, my = column_mean(X), column_mean(Y)
    # G = X_c X_cᵀ, accumulated in place (upper triangle) over column blocks
    G = np.zeros((N, N), order="F")
    for s in _blocks(d):
        G = dsyrk(1.0, _cols(X, s, mx).T, beta=1.0, c=G, trans=1, overwrite_c=1)
    # MRRR (evr): divide and conquer (evd) measured no faster here and needs more workspace
    ev, W = eigh(G, lower=False, overwrite_a=True, check_finite=False, driver="evr")
    del G
    lam = ev[::-1] / (N - 1)  # eigh is ascending; descending views, no copy
    keep, rank = _keep(lam, N, d, rel_tol)
    m = int(keep.sum())  # the kept modes are a prefix of the descending order
    W = np.ascontiguousarray(W[:, ::-1][:, :m])
    lam = lam[:m].copy()
    sv = np.sqrt(lam * (N - 1))  # singular values of X_c
    counts = bootstrap_counts(N, n_boot, seed) if n_boot else None
    boot_lam = np.empty((n_boot, m)) if n_boot else None
    if counts is not None:
        for s in _blocks(m, 256):
            boot_lam[:, s] = _weighted_var(counts, W[:, s] * sv[s])
    sc = W * sv if want_scores and vectors else None
    U = None
    if vectors:
        # u_k = X_cᵀ w_k / s_k, then the text projections Y_c u_k from row blocks of Y
        W /= sv
        U = np.empty((d, m))
        for s in _blocks(d, BLOCK // 2):  # W and U are the peak here: small blocks beside them
            U[s] = _cols(X, s, mx).T @ W
        del W
        tv, boot_tv = _projected_variances(Y, my, U, counts)
    else:
        # without U: C = Y_c X_cᵀ gives Y_c u_k = C w_k / s_k, no d-sized matrix
        C = np.zeros((NT, N), order="F")
        for s in _blocks(d):
            C = dgemm(1.0, _cols(Y, s, my).T, _cols(X, s, mx).T, beta=1.0, c=C, trans_a=1, overwrite_c=1)
        tv = np.empty(m)
        boot_tv = np.empty((n_boot, m)) if n_boot else None
        for s in _blocks(m, 256):
            PT = (C @ W[:, s]) / sv[s]
            tv[s] = (PT * PT).sum(0) / (NT - 1)
            if counts is not None:
                boot_tv[:, s] = _weighted_var(counts, PT)
        del C
        if want_scores:  # X_c u_k = s_k w_k, in place: W is not needed any more
            W *= sv
            sc = W
    return _default_modes(X, Y, mx, my, counts, lam, U, tv, rank, tau, sc, boot_lam, boot_tv)


def _cov(X, Y, tau, rel_tol, n_boot, seed, vectors, want_scores) -> Modes:
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsyrk

    N, d = X.shape
    mx, my = column_mean(X), column_mean(Y)
    S = np.zeros((d, d), order="F")
    for s in _blocks(N, 4 * BLOCK):
        S = dsyrk(1.0, _rows(X, s, mx).T, beta=1.0, c=S, trans=0, overwrite_c=1)
    ev, V = eigh(S, lower=False, overwrite_a=True, check_finite=False, driver="evr")
    del S
    order = np.argsort(ev)[::-1]
    lam = ev[order] / (N - 1)
    keep, rank = _keep(lam, N, d, rel_tol)
    U = np.ascontiguousarray(V[:, order][:, keep])
    del V
    lam = lam[keep]
    m = U.shape[1]
    counts = bootstrap_counts(N, n_boot, seed) if n_boot else None
    tv, boot_tv = _projected_variances(Y, my, U, counts)
    s1m = s2m = None
    if counts is not None:
        s1m, s2m = np.zeros((n_boot, m)), np.zeros((n_boot, m))
    sc = np.empty((N, m)) if want_scores else None
    if counts is not None or want_scores:
        for s in _blocks(N, 4 * BLOCK):
            PM = _rows(X, s, mx) @ U
            if sc is not None:
                sc[s] = PM
            if counts is not None:
                s1m += counts[:, s] @ PM
                s2m += counts[:, s] @ (PM * PM)
    boot_lam = (s2m - s1m * s1m / N) / (N - 1) if counts is not None else None
    return _default_modes(X, Y, mx, my, counts, lam, U if vectors else None, tv, rank, tau, sc, boot_lam, boot_tv)


def _default_modes(X, Y, mx, my, counts, lam, U, tv, rank, tau, sc, boot_lam, boot_tv) -> Modes:
    """The default protocol's `Modes` from either solver's eigenpairs (`_gram`, `_cov`): the
    traces of both laws and, with bootstrap counts, the replicates."""
    total, boot_total = _traces(X, mx, counts)
    ttotal, boot_ttotal = _traces(Y, my, counts)
    out = Modes(
        eigenvalues=lam,
        eigenvectors=U,
        alpha=tv / lam,
        text_variance=tv,
        mean=mx,
        total_variance=total,
        text_total_variance=ttotal,
        rank=rank,
        dim=X.shape[1],
        n_rows=X.shape[0],
        n_text_rows=Y.shape[0],
        protocol="default",
        tau=tau,
        scores=sc,
    )
    if counts is not None:
        out.boot = _boot_dict(boot_lam, boot_tv, boot_total, boot_ttotal)
    return out


def _boot_dict(lam, tv, total, ttotal) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = tv / lam
    return {
        "eigenvalues": lam,
        "text_variance": tv,
        "alpha": alpha,
        "total_variance": total,
        "text_total_variance": ttotal,
    }


def _paper(X, Y, tau, vectors, want_scores) -> Modes:
    """The reference's script 07 on the same vectors: float64, ddof 1, numpy eigh, all d modes."""
    X = np.array(X, dtype=np.float64)
    mx = X.mean(axis=0, keepdims=True)
    X -= mx
    N, d = X.shape
    cov = (X.T @ X) / (N - 1)
    total = float(np.trace(cov))
    ev, V = np.linalg.eigh(cov)
    del cov
    idx = np.argsort(ev)[::-1]
    lam, V = ev[idx], V[:, idx]
    sc = X @ V if want_scores else None
    del X
    Y = np.asarray(Y)
    my = Y.astype(np.float64).mean(axis=0)
    NT = Y.shape[0]
    tv = np.zeros(d)
    ttotal = 0.0
    for s in _blocks(NT, 4 * BLOCK):
        Yb = _rows(Y, s, my)
        ttotal += float((Yb * Yb).sum())
        P = Yb @ V
        tv += (P * P).sum(0)
    tv /= NT - 1
    alpha = tv / np.maximum(lam, PAPER_EPS)
    return Modes(
        eigenvalues=lam,
        eigenvectors=V if vectors else None,
        alpha=alpha,
        text_variance=tv,
        mean=mx[0],
        total_variance=total,
        text_total_variance=ttotal / (NT - 1),
        rank=_keep(lam, N, d, 0.0)[1],
        dim=d,
        n_rows=N,
        n_text_rows=NT,
        protocol="paper",
        tau=tau,
        scores=sc,
    )


# --------------------------------------------------------------------------- summaries


def ci(
    point: Any, reps: np.ndarray, level: float = 0.95, lower: float | None = None, upper: float | None = None
) -> tuple[Any, Any]:
    """Bootstrap interval around `point` from the replicates' spread (axis 0, NaNs ignored):
    point − quantiles of (θ* − mean θ*), reflected, clipped to [lower, upper].

    Resampling rows with replacement adds noise to class means and variances, which moves
    the replicates of scatter-based numbers away from the estimate; centring the replicates
    on their own mean keeps that shift out of the interval and uses only their spread."""
    a = (1 - level) / 2 * 100
    dev = reps - np.nanmean(reps, axis=0)
    q_lo, q_hi = np.nanpercentile(dev, [a, 100 - a], axis=0)
    lo, hi = point - q_hi, point - q_lo
    if lower is not None or upper is not None:
        lo, hi = np.clip(lo, lower, upper), np.clip(hi, lower, upper)
    return lo, hi


def mode_summary(m: Modes) -> dict[str, tuple[float, float | None, float | None]]:
    """The named mode-alignment numbers, each (value, ci_low, ci_high).

    Counts use the reference's thresholds (α > 0.5, α < 0.1, |α − 1| < 0.1) on the modes
    held; variance fractions are over the kept modes (`_of_kept`) and over the whole trace
    of Σ_M (`_of_trace`); `text_var_frac_*` are shares of tr Σ_T along TA / MS modes."""

    def numbers(lam, tv, alpha, total, ttotal):
        ta = alpha > m.tau
        ms = ~ta
        kept = lam.sum(-1)
        k10, k50 = min(10, alpha.shape[-1]), min(50, alpha.shape[-1])
        return {
            "n_alpha_gt_0.5": (alpha > 0.5).sum(-1),
            "n_alpha_lt_0.1": (alpha < 0.1).sum(-1),
            "n_alpha_near_1": (np.abs(alpha - 1.0) < 0.1).sum(-1),
            "n_TA": ta.sum(-1),
            "n_MS": ms.sum(-1),
            "mean_alpha_top10": alpha[..., :k10].mean(-1),
            "mean_alpha_top50": alpha[..., :k50].mean(-1),
            "mean_alpha_all": alpha.mean(-1),
            "var_frac_TA_of_kept": (lam * ta).sum(-1) / kept,
            "var_frac_MS_of_kept": (lam * ms).sum(-1) / kept,
            "var_frac_TA_of_trace": (lam * ta).sum(-1) / total,
            "var_frac_MS_of_trace": (lam * ms).sum(-1) / total,
            "var_frac_kept_of_trace": kept / total,
            "text_var_frac_TA": (tv * ta).sum(-1) / ttotal,
            "text_var_frac_MS": (tv * ms).sum(-1) / ttotal,
            "text_var_frac_outside_kept": 1 - tv.sum(-1) / ttotal,
        }

    point = numbers(m.eigenvalues, m.text_variance, m.alpha, m.total_variance, m.text_total_variance)
    out: dict[str, tuple[float, float | None, float | None]] = {}
    if m.boot:
        b = m.boot
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = numbers(
                b["eigenvalues"], b["text_variance"], b["alpha"], b["total_variance"], b["text_total_variance"]
            )
    for k, v in point.items():
        lo = hi = None
        if m.boot:
            r = np.asarray(reps[k], dtype=float).reshape(-1)
            frac = "frac" in k
            lo, hi = (float(x) for x in ci(float(v), r, lower=0.0, upper=1.0 if frac else None))
        out[k] = (float(v), lo, hi)
    return out
