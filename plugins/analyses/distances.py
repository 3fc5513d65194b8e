"""`distances`: how far apart the modal and text laws are (science.md §3).

Per stage (default: the decoder input `adapter` against the text's decoder input, the middle
LLM layer and `llm.final`), on pooled vectors of the modal view and of the paired text:

- `MMD2`: unbiased MMD² with an RBF kernel, bandwidth σ² = median squared distance of the
  pooled sample;
- `CKA`: linear CKA on paired rows (row i of both is sample i);
- `W1`: exact EMD (POT `ot.emd2`) on Euclidean cost in a PCA space fitted on the pooled
  sample; `sliced_W1`: mean 1-D W1 over random unit directions of the full space.

Uncertainty, never a with-replacement bootstrap of a distance (duplicates bias it away from
zero): a permutation null (p-value; rows are paired, so the null swaps the modal and text
vector of a sample, which keeps pairs intact) and an m-out-of-n subsample CI: replicates on
random halves of the pairs, θ̂ − c·(θ*_m − θ̂) quantiles with c = sqrt(m / (n − m)) (the
finite-population scaling of sampling without replacement; c = 1 at m = n/2). CKA's null
permutes the pairing. The PCA basis for W1 is fitted once on the pooled sample and reused
by every replicate (the pooled sample is the same under every permutation).

Everything but sliced W1 is computed from one pooled Gram matrix, so memory is O(n²) in the
subsample size, not O(d²).

`paper` is the reference's script 05: hooks = the stages shared with the reference's text
file (llm.16 and llm.final), all-zero rows dropped, one `default_rng(42)` used in its order
(MMD subsample, σ² from the first 500 + 500 rows, 200 + 200 with-replacement index draws;
CKA on *independently* subsampled rows; W1 on fresh subsamples with the PCA refitted per
replicate), percentile CIs, and `CKA_cross_stage` (encoder vs adapter) when both exist.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._linalg import _blocks, _cols, column_mean
from ._params import as_list, check_params, middle_llm_stage, need_stage

REF_NAMES = {"encoder": "encoder_output", "adapter": "adapter_output", "llm.final": "llm_final"}


def ref_name(stage: str) -> str:
    if stage.startswith("llm.") and stage[4:].isdigit():
        return f"llm_hidden_{stage[4:]}"
    return REF_NAMES.get(stage, stage)


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
        null = sliced_w1_many(proj, A / A.sum(1, keepdims=True), B / B.sum(1, keepdims=True))
        A, B = sub_masks(n_boot, rng)
        reps = sliced_w1_many(proj, A / A.sum(1, keepdims=True), B / B.sum(1, keepdims=True))
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


# --------------------------------------------------------------------------- paper protocol


class NonzeroRows:
    """The reference's `X[np.any(X != 0, axis=1)].astype(float64)` without the copy: the
    indices of the nonzero rows (found in row blocks), and float64 rows made only for the
    rows a subsample takes. The same rows and values as the eager copy, so the same numbers;
    memory O(n_subsample * d) instead of two float64 copies of every stage at large N."""

    def __init__(self, X: Any):
        self.X = X
        keep = [np.flatnonzero(np.any(np.asarray(X[s]) != 0, axis=1)) + s.start for s in _blocks(X.shape[0])]
        self.rows = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray | None = None) -> np.ndarray:
        rows = self.rows if idx is None else self.rows[idx]
        return np.asarray(self.X[rows]).astype(np.float64)


def _ref_subsample(X: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(X) <= n:
        return X.take() if isinstance(X, NonzeroRows) else X
    idx = rng.choice(len(X), size=n, replace=False)
    return X.take(idx) if isinstance(X, NonzeroRows) else X[idx]


def _ref_w1(X: np.ndarray, Y: np.ndarray, pca_dim: int, seed: int) -> float:
    from sklearn.decomposition import PCA

    from ._w1 import exact_w1

    comb = np.concatenate([X, Y])
    pca = PCA(n_components=min(pca_dim, comb.shape[1], comb.shape[0]), random_state=seed).fit(comb)
    return exact_w1(pca.transform(X), pca.transform(Y))


def paper_hook(
    Xm: Any, Xt: Any, rng: np.random.Generator, n_subsample: int, pca_dim: int, n_bootstrap: int, pca_seed: int
) -> list[dict[str, Any]]:
    """Script 05 for one hook, consuming `rng` in the reference's order."""
    from scipy.spatial.distance import cdist

    rows = []
    # MMD²: σ² fixed from the first 500 + 500 subsampled rows; with-replacement bootstrap
    Xs, Ys = _ref_subsample(Xm, n_subsample, rng), _ref_subsample(Xt, n_subsample, rng)
    comb = np.concatenate([Xs[:500], Ys[:500]])
    dd = cdist(comb, comb, metric="sqeuclidean")
    sigma_sq = float(np.median(dd[np.triu_indices_from(dd, k=1)]))
    Z = np.concatenate([Xs, Ys])
    K = np.exp(-cdist(Z, Z, metric="sqeuclidean") / (2.0 * sigma_sq))  # entries equal the reference's per pair
    nx, ny = len(Xs), len(Ys)

    def mmd(ix: np.ndarray, iy: np.ndarray) -> float:
        Kxx = K[np.ix_(ix, ix)]
        Kyy = K[np.ix_(nx + iy, nx + iy)]
        Kxy = K[np.ix_(ix, nx + iy)]
        np.fill_diagonal(Kxx, 0.0)
        np.fill_diagonal(Kyy, 0.0)
        n, m = len(ix), len(iy)
        return float(Kxx.sum() / (n * (n - 1)) + Kyy.sum() / (m * (m - 1)) - 2.0 * Kxy.sum() / (n * m))

    point = mmd(np.arange(nx), np.arange(ny))
    bx = [rng.choice(nx, size=nx, replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(ny, size=ny, replace=True) for _ in range(n_bootstrap)]
    boot = np.array([mmd(bx[i], by[i]) for i in range(n_bootstrap)])
    rows.append(
        {
            "metric": "MMD2",
            "value": point,
            "ci_lower": float(np.percentile(boot, 2.5)),
            "ci_upper": float(np.percentile(boot, 97.5)),
        }
    )
    # CKA on independently subsampled rows (the reference's defect: the pairing is lost)
    n_cka = min(len(Xm), len(Xt), n_subsample)
    rows.append(
        {
            "metric": "CKA",
            "value": linear_cka(_ref_subsample(Xm, n_cka, rng), _ref_subsample(Xt, n_cka, rng)),
            "ci_lower": None,
            "ci_upper": None,
        }
    )
    # W1 on fresh subsamples, PCA refitted on every replicate
    Xw, Yw = _ref_subsample(Xm, n_subsample, rng), _ref_subsample(Xt, n_subsample, rng)
    point = _ref_w1(Xw, Yw, pca_dim, pca_seed)
    bx = [rng.choice(len(Xw), size=len(Xw), replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(len(Yw), size=len(Yw), replace=True) for _ in range(n_bootstrap)]
    boot = np.array([_ref_w1(Xw[bx[i]], Yw[by[i]], pca_dim, pca_seed) for i in range(n_bootstrap)])
    rows.append(
        {
            "metric": "W1",
            "value": point,
            "ci_lower": float(np.percentile(boot, 2.5)),
            "ci_upper": float(np.percentile(boot, 97.5)),
        }
    )
    return rows


# --------------------------------------------------------------------------- the analysis


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import STAGE, Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "distances",
    stages=Param(list, items=str, pattern=STAGE.pattern, nullable=True),
    n_subsample=Param(int, ge=2),
    pca_dim=Param(int, ge=1),
    n_bootstrap=Param(int, ge=1),
    seed=Param(int, ge=0, le=2**32 - 1),
    max_n=Param(int, ge=2),
    n_perm=Param(int, ge=1),
    n_boot=Param(int, ge=1),
    w1_max_n=Param(int, ge=2),
    w1_n_perm=Param(int, ge=1),
    w1_n_boot=Param(int, ge=1),
    n_directions=Param(int, ge=1),
    subsample_fraction=Param(float, gt=0, lt=1),
)


class Distances(Analysis):
    name = "distances"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"stages": None, "n_subsample": 1000, "pca_dim": 256, "n_bootstrap": 200, "seed": 42}
        return {
            "stages": None,
            "max_n": 1000,
            "n_perm": 200,
            "n_boot": 200,
            "w1_max_n": 500,
            "w1_n_perm": 50,
            "w1_n_boot": 50,
            "pca_dim": 256,
            "n_directions": 128,
            "subsample_fraction": 0.5,
        }

    def _stages(self, ctx: Any, treps: Any) -> list[str]:
        shared = [s for s in ctx.reps if s in treps]
        asked = as_list(ctx.params.get("stages"))
        if asked:
            for s in asked:
                need_stage(self.name, ctx.reps, s)
                need_stage(self.name, treps, s, "text")
            return asked
        if ctx.protocol == "paper":  # the reference's text file had only these two hooks
            return sorted((s for s in ("llm.16", "llm.final") if s in shared), key=ref_name)
        out = [s for s in ("adapter", middle_llm_stage(shared), "llm.final") if s in shared]
        return list(dict.fromkeys(out))

    def run(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_params(self.name, p, self.default_params(ctx.protocol))
        treps = ctx.text_reps()
        stages = self._stages(ctx, treps)
        if not stages:
            raise MchError("analysis 'distances' found no stage shared by the modal and text representations")
        return self._paper(ctx, treps, stages) if ctx.protocol == "paper" else self._default(ctx, treps, stages)

    def _default(self, ctx: Any, treps: Any, stages: list[str]) -> AnalysisOutput:
        p = ctx.params
        frac = float(p["subsample_fraction"])
        if not 0 < frac < 1:
            raise MchError("distances: subsample_fraction must be between 0 and 1")
        metrics, per_stage = [], {}
        N = ctx.reps[stages[0]].shape[0]
        rng = np.random.default_rng(ctx.seed)
        rows = np.sort(rng.choice(N, min(N, int(p["max_n"])), replace=False))  # the same pairs at every stage
        with ctx.progress.task("distances", len(stages)) as advance:
            for i, st in enumerate(stages):
                X, Y = ctx.reps[st], treps[st]
                if X.shape[0] != Y.shape[0]:
                    raise MchError(f"distances: stage {st!r} has {X.shape[0]} modal but {Y.shape[0]} text rows")
                res = compare(
                    X[rows],
                    Y[rows],
                    paired=True,
                    seed=ctx.seed + 1000 * (i + 1),
                    n_perm=int(p["n_perm"]),
                    n_boot=int(p["n_boot"]),
                    w1_max_n=int(p["w1_max_n"]),
                    w1_n_perm=int(p["w1_n_perm"]),
                    w1_n_boot=int(p["w1_n_boot"]),
                    pca_dim=int(p["pca_dim"]),
                    n_directions=int(p["n_directions"]),
                    frac=frac,
                )
                per_stage[st] = res
                for name, r in res.items():
                    n = r.get("n_per_side", len(rows))
                    metrics.append(Metric(name, r["value"], stage=st, ci_low=r["ci_low"], ci_high=r["ci_high"], n=n))
                    metrics.append(Metric(f"{name}_p_value", r["p_value"], stage=st, n=n))
                    metrics.append(Metric(f"{name}_null_mean", r["null_mean"], stage=st, n=n))
                    if name != "MMD2":  # MMD² is unbiased; the others sit above zero at finite n
                        nm = r["null_mean"]
                        metrics.append(
                            Metric(
                                f"{name}_excess",
                                r["value"] - nm,
                                stage=st,
                                ci_low=r["ci_low"] - nm,
                                ci_high=r["ci_high"] - nm,
                                n=n,
                            )
                        )
                advance(1)
        notes = [
            "modal vs text: pooled vectors of the modal view and of the paired text through the same model; at "
            "'adapter' this is the decoder input (adapter output vs the text's input embeddings)",
            f"p-values: permutation null swapping modal/text within pairs (CKA: permuting the pairing); CIs: "
            f"spread of subsamples of {frac:.0%} of the pairs, scaled by sqrt(m/(n-m)), centred on the estimate; "
            f"W1, sliced W1 and CKA are biased upward at finite n: *_null_mean is their value under the null "
            f"and *_excess = value - null_mean",
        ]
        return AnalysisOutput(
            metrics=metrics, summary={"stages": stages, "n": int(len(rows)), "results": per_stage}, notes=notes
        )

    def _paper(self, ctx: Any, treps: Any, stages: list[str]) -> AnalysisOutput:
        p = ctx.params
        rng = np.random.default_rng(int(p["seed"]))
        metrics, table = [], []

        nonzero = NonzeroRows  # the reference's all-zero rows dropped, rows converted when sampled

        with ctx.progress.task("distances (paper)", len(stages)) as advance:
            for st in stages:
                rows = paper_hook(
                    nonzero(ctx.reps[st]),
                    nonzero(treps[st]),
                    rng,
                    int(p["n_subsample"]),
                    int(p["pca_dim"]),
                    int(p["n_bootstrap"]),
                    int(p["seed"]),
                )
                for r in rows:
                    table.append({"hook_point": ref_name(st), **r})
                    metrics.append(
                        Metric(
                            r["metric"],
                            r["value"],
                            stage=st,
                            ci_low=r["ci_lower"],
                            ci_high=r["ci_upper"],
                            n=min(len(ctx.reps[st]), int(p["n_subsample"])),
                        )
                    )
                advance(1)
        if "encoder" in ctx.reps and "adapter" in ctx.reps:
            Xe, Xa = nonzero(ctx.reps["encoder"]), nonzero(ctx.reps["adapter"])
            n_cross = min(len(Xe), len(Xa), int(p["n_subsample"]))
            v = linear_cka(_ref_subsample(Xe, n_cross, rng), _ref_subsample(Xa, n_cross, rng))
            table.append(
                {
                    "hook_point": "encoder_output<->adapter_output",
                    "metric": "CKA_cross_stage",
                    "value": v,
                    "ci_lower": None,
                    "ci_upper": None,
                }
            )
            metrics.append(Metric("CKA_cross_stage", v, stage="encoder<->adapter", n=n_cross))
        notes = [
            "paper protocol: the reference's script 05 (hooks shared with its text file: llm_hidden_16, "
            "llm_final; with-replacement bootstrap CIs, biased away from zero; CKA on independently "
            "subsampled rows, so its pairing is lost)",
            f"text vectors: {ctx.text_source}",
            "PCA: sklearn's default solver with a fixed random_state (the reference left it unseeded)",
        ]
        return AnalysisOutput(metrics=metrics, summary={"stages": stages, "rows": table}, notes=notes)
