"""The split's arithmetic on the vectors (`_split`): column and row blocks of the
(memory-mapped) vectors, the eigenmodes of one half (from the n×n Gram matrix when n ≤ d, so
no d×d matrix is formed), rows in their coordinates, and the column sums that α, the null and
the bootstrap read of those coordinates (so the (n, m) coordinates are never held whole)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

BLOCK = 512
ROWS = BLOCK  # rows per block of mode coordinates (float64: ROWS·m·8 bytes each, a few beside them)


def _blocks(n: int, block: int = BLOCK) -> Iterator[slice]:
    for j in range(0, n, block):
        yield slice(j, min(j + block, n))


def _cols(X: Any, s: slice) -> np.ndarray:
    return np.array(X[:, s], dtype=np.float64)


def _centred(X: Any, rows: np.ndarray, s: slice, mean: np.ndarray) -> np.ndarray:
    """X[rows, s] − mean[s] in float64, converting only those rows (the same numbers as
    `_cols(X, s)[rows] − mean[s]`, without the float64 copy of every row's block)."""
    B = np.asarray(X[:, s])[rows].astype(np.float64)
    B -= mean[s]
    return B


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


def _round(v: Any) -> Any:
    """Record numbers to 10 significant digits: BLAS thread counts may move the last bits,
    and the record must be identical across the analyses of a run."""
    v = float(v)
    return float(f"{v:.10g}") if np.isfinite(v) else None


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
