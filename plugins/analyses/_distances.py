"""The estimators behind `distances` (science.md §3) and the default protocol's tests of them.

- `MMD2`: unbiased MMD² with an RBF kernel, bandwidth σ² = median squared distance of the
  pooled sample;
- `CKA`: linear CKA on paired rows (row i of both is sample i);
- `W1`: exact EMD (`_w1`, POT) on Euclidean cost in a PCA space fitted on the pooled
  sample; `sliced_W1`: mean 1-D W1 over random unit directions of the full space.

Uncertainty (`compare`), never a with-replacement bootstrap of a distance (duplicates bias it
away from zero): a permutation null (p-value; rows are paired, so the null swaps the modal
and text vector of a sample, which keeps pairs intact) and an m-out-of-n subsample CI:
replicates on random halves of the pairs, θ̂ − c·(θ*_m − θ̂) quantiles with
c = sqrt(m / (n − m)) (the finite-population scaling of sampling without replacement; c = 1 at
m = n/2). CKA's null permutes the pairing. The PCA basis for W1 is fitted once on the pooled
sample and reused by every replicate (the pooled sample is the same under every permutation).
Everything but sliced W1 is computed from one pooled Gram matrix, so memory is O(n²) in the
subsample size, not O(d²).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import MchError

from ._linalg import _blocks, _cols, column_mean

# --------------------------------------------------------------------------- the estimators


def pooled_gram(X: Any, Y: Any) -> np.ndarray:
    """Gram matrix of the pooled rows [X; Y] after centring on the pooled mean (float64)."""
    n = X.shape[0] + Y.shape[0]
    d = X.shape[1]
    mean = (column_mean(X) * X.shape[0] + column_mean(Y) * Y.shape[0]) / n
    from scipy.linalg.blas import dgemm

    G = np.zeros((n, n), order="F")
    for s in _blocks(d):
        Z = np.concatenate([_cols(X, s), _cols(Y, s)]) - mean[s]
        G = dgemm(1.0, Z.T, Z.T, beta=1.0, c=G, trans_a=1, overwrite_c=1)  # in place, no n×n temporary
    return G.T  # symmetric: the transpose of the F-ordered buffer is a C-ordered view, no copy


def sq_dists_from_gram(G: np.ndarray) -> np.ndarray:
    """‖z_i − z_j‖² from the Gram matrix, built in one n×n buffer."""
    g = np.diag(G).copy()
    D2 = G * -2.0
    D2 += g[:, None]
    D2 += g[None, :]
    np.maximum(D2, 0, out=D2)
    np.fill_diagonal(D2, 0)
    return D2


def mmd2_many(K: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of the 0/1 membership matrices A, B (P, n) over the points
    of K: off-diagonal means within A and within B minus twice the A-B mean."""
    A = np.atleast_2d(A).astype(np.float64)
    B = np.atleast_2d(B).astype(np.float64)
    na, nb = A.sum(1), B.sum(1)
    dK = np.diag(K)
    KA, KB = K @ A.T, K @ B.T
    saa = (A * KA.T).sum(1) - A @ dK
    sbb = (B * KB.T).sum(1) - B @ dK
    sab = (B * KA.T).sum(1)
    return saa / (na * (na - 1)) + sbb / (nb * (nb - 1)) - 2 * sab / (na * nb)


def _centre_gram(K: np.ndarray) -> np.ndarray:
    return K - K.mean(0) - K.mean(1)[:, None] + K.mean()


def cka_from_grams(Kx: np.ndarray, Ky: np.ndarray) -> float:
    """Linear CKA from the (centred) Gram matrices of paired rows."""
    xy = float((Kx * Ky).sum())
    den = float(np.sqrt((Kx * Kx).sum() * (Ky * Ky).sum()))
    return 0.0 if den < 1e-12 else xy / den


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of paired rows: ‖X_cᵀY_c‖²_F / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F), via n×n Grams."""
    Xc = np.asarray(X, np.float64) - np.asarray(X, np.float64).mean(0)
    Yc = np.asarray(Y, np.float64) - np.asarray(Y, np.float64).mean(0)
    return cka_from_grams(Xc @ Xc.T, Yc @ Yc.T)


def pca_scores_from_gram(G: np.ndarray, k: int) -> np.ndarray:
    """Scores of the top-k principal components of the (centred) pooled rows behind G."""
    from scipy.linalg import eigh

    n = G.shape[0]
    k = max(1, min(k, n))
    ev, V = eigh(G, subset_by_index=[n - k, n - 1], check_finite=False)
    return V[:, ::-1] * np.sqrt(np.clip(ev[::-1], 0, None))


def emd_w1(D: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> float:
    """Exact W1 between the uniform laws on points ia and ib of the distance matrix D."""
    from ._w1 import w1_from_cost

    return w1_from_cost(D[np.ix_(ia, ib)])


def sliced_w1_many(proj: np.ndarray, WA: np.ndarray, WB: np.ndarray) -> np.ndarray:
    """Sliced W1 (mean over directions of the 1-D W1) for each row of the weight matrices
    WA, WB (P, n), each row a probability vector over the pooled points; `proj` (n, L)."""
    order = np.argsort(proj, axis=0, kind="stable")
    sorted_vals = np.take_along_axis(proj, order, axis=0)
    gaps = np.diff(sorted_vals, axis=0)  # (n-1, L)
    out = np.empty(WA.shape[0])
    for p in range(WA.shape[0]):
        w = (WA[p] - WB[p])[order]  # (n, L) signed masses in sorted order
        cdf = np.cumsum(w, axis=0)[:-1]
        out[p] = float((np.abs(cdf) * gaps).sum(0).mean())
    return out


# --------------------------------------------------------------------------- default protocol


def _subsample_ci(point: float, reps: np.ndarray, frac: float) -> tuple[float, float]:
    """95% interval for the estimate at this n: the spread of replicates on a fraction `frac`
    of the pairs, drawn without replacement, scaled by sqrt(frac / (1 − frac)) (the
    finite-population factor; 1 at halves) and centred on the point estimate. Centring on
    the replicates' own mean keeps the n-dependent bias of W1 and CKA out of the interval;
    that bias is what `null_mean` and the `*_excess` numbers show."""
    c = np.sqrt(frac / (1 - frac))
    dev = reps - reps.mean()
    q_lo, q_hi = np.percentile(dev, [2.5, 97.5])
    return float(point - c * q_hi), float(point - c * q_lo)


def _p_value(null: np.ndarray, obs: float) -> float:
    return float((1 + np.sum(null >= obs)) / (1 + len(null)))


def compare(
    X: Any,
    Y: Any,
    *,
    paired: bool,
    seed: int,
    n_perm: int = 200,
    n_boot: int = 200,
    w1_max_n: int = 500,
    w1_n_perm: int = 50,
    w1_n_boot: int = 50,
    pca_dim: int = 256,
    n_directions: int = 128,
    frac: float = 0.5,
    metrics: tuple[str, ...] = ("MMD2", "CKA", "W1", "sliced_W1"),
) -> dict[str, dict[str, float]]:
    """The default-protocol distances between the rows of X and Y (each (n, d), row i of
    both the same sample when `paired`), with permutation p-values and subsample CIs."""
    rng = np.random.default_rng(seed)
    nx, ny = X.shape[0], Y.shape[0]
    if min(nx, ny) < 4:
        raise MchError("distances need at least 4 modal and 4 text rows")
    if paired and nx != ny:
        raise MchError("paired distances need as many text rows as modal rows")
    n = nx + ny
    G = pooled_gram(X, Y)
    out: dict[str, dict[str, float]] = {}
    m_x, m_y = max(2, int(round(frac * nx))), max(2, int(round(frac * ny)))

    def null_masks(P: int, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        A = np.zeros((P, n))
        if paired:  # swap modal and text within random pairs
            s = r.random((P, nx)) < 0.5
            A[:, :nx] = ~s
            A[:, nx:] = s
        else:
            for p in range(P):
                A[p, r.permutation(n)[:nx]] = 1
        return A, 1 - A

    def sub_masks(P: int, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        A = np.zeros((P, n))
        B = np.zeros((P, n))
        for p in range(P):
            ix = r.choice(nx, m_x, replace=False)
            iy = ix if paired else r.choice(ny, m_y, replace=False)
            A[p, ix] = 1
            B[p, nx + iy] = 1
        return A, B

    own = np.zeros((1, n))
    own[0, :nx] = 1
    if "MMD2" in metrics:
        D2 = sq_dists_from_gram(G)
        upper = D2[np.triu(np.ones((n, n), dtype=bool), 1)]  # a bool mask: no index arrays of n² ints
        sigma2 = float(np.median(upper, overwrite_input=True))
        del upper
        if sigma2 <= 0:
            sigma2 = 1.0
        K = D2  # the kernel overwrites the distances in place
        K *= -1.0 / (2 * sigma2)
        np.exp(K, out=K)
        point = float(mmd2_many(K, own, 1 - own)[0])
        A, B = null_masks(n_perm, rng)
        null = np.concatenate([mmd2_many(K, A[i : i + 50], B[i : i + 50]) for i in range(0, n_perm, 50)])
        A, B = sub_masks(n_boot, rng)
        reps = np.concatenate([mmd2_many(K, A[i : i + 50], B[i : i + 50]) for i in range(0, n_boot, 50)])
        del A, B  # the masks of every replicate: held into the later metrics, they set the peak (issue 17)
        lo, hi = _subsample_ci(point, reps, frac)
        out["MMD2"] = {
            "value": point,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": _p_value(null, point),
            "null_mean": float(null.mean()),
            "sigma2": sigma2,
        }
        del K
    if "CKA" in metrics and paired:
        Kx, Ky = _centre_gram(G[:nx, :nx]), _centre_gram(G[nx:, nx:])
        point = cka_from_grams(Kx, Ky)
        null = np.empty(n_perm)
        for p in range(n_perm):
            pi = rng.permutation(nx)
            null[p] = cka_from_grams(Kx, Ky[np.ix_(pi, pi)])
        reps = np.empty(n_boot)
        for b in range(n_boot):
            ix = rng.choice(nx, m_x, replace=False)
            reps[b] = cka_from_grams(_centre_gram(Kx[np.ix_(ix, ix)]), _centre_gram(Ky[np.ix_(ix, ix)]))
        lo, hi = _subsample_ci(point, reps, frac)
        out["CKA"] = {
            "value": point,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": _p_value(null, point),
            "null_mean": float(null.mean()),
        }
        del Kx, Ky
    if "W1" in metrics:
        # W1 on at most w1_max_n rows per side (exact EMD is the costly part)
        kx = np.sort(rng.choice(nx, min(nx, w1_max_n), replace=False))
        ky = kx if paired and nx == ny else np.sort(rng.choice(ny, min(ny, w1_max_n), replace=False))
        idx = np.concatenate([kx, nx + ky])
        Gs = G[np.ix_(idx, idx)]
        Gs = _centre_gram(Gs)
        S = pca_scores_from_gram(Gs, min(pca_dim, X.shape[1], len(idx)))
        g = (S * S).sum(1)
        D = np.sqrt(np.maximum(g[:, None] + g[None, :] - 2 * S @ S.T, 0))
        a, b = np.arange(len(kx)), len(kx) + np.arange(len(ky))
        point = emd_w1(D, a, b)
        null = np.empty(w1_n_perm)
        for p in range(w1_n_perm):
            if paired and len(kx) == len(ky):
                s = rng.random(len(kx)) < 0.5
                ia, ib = np.where(s, b, a), np.where(s, a, b)
            else:
                perm = rng.permutation(len(idx))
                ia, ib = perm[: len(kx)], perm[len(kx) :]
            null[p] = emd_w1(D, ia, ib)
        mx_, my_ = max(2, int(round(frac * len(kx)))), max(2, int(round(frac * len(ky))))
        reps = np.empty(w1_n_boot)
        for r_ in range(w1_n_boot):
            ia = rng.choice(len(kx), mx_, replace=False)
            ib = ia if paired and len(kx) == len(ky) else rng.choice(len(ky), my_, replace=False)
            reps[r_] = emd_w1(D, a[ia], b[ib])
        lo, hi = _subsample_ci(point, reps, frac)
        out["W1"] = {
            "value": point,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": _p_value(null, point),
            "null_mean": float(null.mean()),
            "n_per_side": int(len(kx)),
            "pca_dim": int(S.shape[1]),
        }
        del Gs, S, D
    del G  # sliced W1 projects the rows themselves
    if "sliced_W1" in metrics:
        d = X.shape[1]
        R = rng.standard_normal((d, n_directions))
        R /= np.linalg.norm(R, axis=0)
        proj = np.zeros((n, n_directions))
        for s in _blocks(d):
            proj += np.concatenate([_cols(X, s), _cols(Y, s)]) @ R[s]
        wa = own[0] / nx
        wb = (1 - own[0]) / ny
        point = float(sliced_w1_many(proj, wa[None], wb[None])[0])
        A, B = null_masks(n_perm, rng)
        A /= A.sum(1, keepdims=True)  # weights in place: no second pair of (P, n) masks
        B /= B.sum(1, keepdims=True)
        null = sliced_w1_many(proj, A, B)
        A, B = sub_masks(n_boot, rng)
        A /= A.sum(1, keepdims=True)
        B /= B.sum(1, keepdims=True)
        reps = sliced_w1_many(proj, A, B)
        lo, hi = _subsample_ci(point, reps, frac)
        out["sliced_W1"] = {
            "value": point,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": _p_value(null, point),
            "null_mean": float(null.mean()),
            "n_directions": n_directions,
        }
    return out
