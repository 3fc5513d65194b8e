"""Linear probes: the information present per (stage, attribute) (science.md §1).

`default` protocol, per attribute and stage:
  * rows: labelled samples of classes with >= 2 members (the reference drops singletons);
  * features: the stage's pooled vectors z-scored over all samples of the run (mean and
    std use no label, so they cannot leak one; a zero-variance feature keeps scale 1);
  * splits: a 5-fold stratified k-fold whose folds keep the attribute's groups whole,
    seeded by the run's seed (each sample is tested exactly once); a group key that cannot
    give such folds falls back to a stratified k-fold, said in `summary` and `notes`;
  * model: multinomial logistic regression, objective mean cross-entropy + lam/2 ||W||^2
    (intercept free; sklearn's C = 1 / (lam n_train)), lam chosen per outer fold from
    `LAMBDA_GRID` by nested cross-validation on that fold's training part only (each of its
    other folds held out in turn from the rest of that part, so the inner CV is
    group-disjoint whenever the outer folds are), minimising held-out cross-entropy;
  * metrics from the pooled held-out predictions: `accuracy` (bootstrap 95% CI over test
    samples), `balanced_accuracy`, `macro_f1`, `cross_entropy_bits`, `i_probe_bits` =
    H(Y) - CE (H(Y) the entropy of the label prior of the probed rows; it can fall below 0
    when held-out groups shift the label mix), `retention_ratio`; `chance_uniform` = 1/K
    and `chance_majority` (the majority class rate) per attribute; and the attribute-level
    `retained_pct`, `final_over_chance`, `delta_tau` (science.md §1) with the chance level
    of `retention_chance` (default: majority; the paper's is 1/K).

How the default fit is made fast without changing the model it finds:
  * Exact PCA form. The penalised optimum W lies in the span of the training rows
    (representer theorem), so fitting in the coordinates of the stage's principal axes
    (all axes with nonzero variance over the run's samples, which hold every training
    row) gives the same model as fitting the D-dimensional z-scored vectors, at rank
    <= min(N, D) instead of D. One eigendecomposition per stage serves every attribute,
    fold and lam. (tests: the probabilities equal sklearn's on the raw z-scored vectors.)
  * Preconditioning. In those axes the data Hessian is close to diag(s_j^2 / n) (x) H_c,
    H_c the mean softmax Hessian over classes; L-BFGS runs in the variables that make
    that block identity (a change of variables: the same optimum).
  * Path and pairs. lam runs from strong to weak with warm starts; the inner fits of outer
    folds i and j share one fit (trained on the folds other than i and j: with 5 folds that
    is 10 fits per lam for all five 4-fold inner CVs; `inner_folds = 2` validates each outer
    fold on its 2 neighbouring folds only, 5 fits per lam, faster but a noisier choice of
    lam: on the toy world it picked lam = 1e-3 for one fold and a negative I_probe); the walk stops
    for a fold once its inner CV cross-entropy has risen `patience` grid steps past its
    best (the CV curve is U-shaped; `patience` large evaluates the whole grid).
  * Threads. The fits of one lam step, and the outer fits, are independent: they run on
    `n_jobs` worker threads (default: the usable cores, at most 4), each on one BLAS thread,
    which is faster for these skinny products than one fit on several BLAS threads. Every
    fit's arithmetic is the same whatever `n_jobs` is, and so is the result (tested). Each
    running fit holds a copy of its training rows: peak memory grows with `n_jobs`.
  * Convergence is certified, not assumed: a fit stops when ||grad||^2 / (2 lam) <= `tol`,
    an upper bound (nats) on how far its penalised objective is above the optimum
    (lam-strong convexity in W); the inner fits, which only rank lam, use `inner_tol`.
    Work runs in float32 and finishes in float64 when float32 rounding stops the line
    search. Every fit's evaluations and bound are reported.

`paper` protocol: the reference's script 03 exactly (analyses-probes-geometry.md §1): the
reference's label filters, classes coded in sorted order (rank order for `lexical`, whose
classes the dataset lists in top-50 rank order), StratifiedShuffleSplit(n_splits=5,
train_size=0.8, random_state=42), StandardScaler fitted on train, LogisticRegression(lbfgs,
C = 1/(1e-4 n_train), max_iter=100) on float32, chance 1/K; its summary fields per
(stage, attribute) and the four retention numbers under their own names. The same fits
also give a held-out cross-entropy, so `i_probe_bits` is reported (the reference has none).
`n_jobs` = 1 (default) runs the splits one after another with the process's BLAS threads,
as the plain script does; more runs them concurrently, one BLAS thread each: faster, and
identical to the script run on one BLAS thread (float32 BLAS rounding depends on the thread
count, so accuracies may differ from a multi-threaded run in rare test rows).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric, stage_sort_key

from ._linalg import one_blas_thread
from ._params import check_params
from ._stats import (LN2, Folds, bootstrap_classification, confusion, encode_labels, entropy_bits,
                     grouped_folds, percentile_ci, prior, scores_from_confusion)

# The regularisation grid, owned by the harness (never by a model or dataset plugin, so
# every model is probed alike: the SUPERB fairness rule). lam is the per-sample L2 weight on
# z-scored features: objective = mean CE + lam/2 ||W||^2. Half-decades from 1 (weights near
# zero) to 1e-5 (nearly unpenalised); the reference's fixed 1e-4 is on the grid.
LAMBDA_GRID: tuple[float, ...] = tuple(float(10.0 ** (-k / 2)) for k in range(11))

DEFAULT_PARAMS = {
    "n_splits": 5,            # outer folds (every sample tested once)
    "inner_folds": None,      # inner CV folds per outer fold: None = all n_splits - 1; or an even number of neighbours
    "patience": 1,            # grid steps past the best inner CV cross-entropy before the walk stops
    "tol": 1e-5,              # convergence of the outer fits: ||grad||^2 / (2 lam) <= tol (nats above the optimum)
    "inner_tol": 1e-4,        # the same bound for the inner fits, which only rank lam
    "max_iter": 10000,        # L-BFGS iterations per fit (a fit that hits it is reported unconverged)
    "n_bootstrap": 1000,      # resamples of test predictions for the CIs
    "retention_chance": "majority",  # chance level c of the retention numbers: majority or uniform
    "min_samples": 20,        # fewer labelled rows: the attribute is skipped (the reference's 20)
    "n_jobs": None,           # threads for the fits (None: usable cores, at most 4); results do not depend on it
}
PAPER_PARAMS = {
    "n_splits": 5,
    "train_size": 0.8,
    "random_state": 42,
    "weight_decay": 1e-4,     # C = 1 / (weight_decay * n_train)
    "max_iter": 100,
    "class_order": "auto",    # auto: rank order for lexical, sorted otherwise; or sorted / declared
    "n_bootstrap": 1000,
    "n_jobs": 1,              # 1: the reference's arithmetic exactly; more: splits run concurrently
}


# --------------------------------------------------------------------------- the solver


@dataclass
class SoftmaxFit:
    W: np.ndarray          # (r, k) weights in the fitting coordinates
    b: np.ndarray          # (k,) intercepts
    n_evals: int
    grad_norm: float
    gap_bound: float       # ||grad||^2 / (2 lam): nats above the optimum, at most
    converged: bool


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # a ufunc, not BLAS: on a loaded machine a threaded BLAS call waits for a time slice
    return float(np.multiply(a, b).sum())


def lbfgs(fg: Callable[[np.ndarray], tuple[float, np.ndarray, float]], x: np.ndarray, target: float,
          max_iter: int, memory: int = 10) -> tuple[np.ndarray, int, int, float]:
    """Minimise a smooth convex function with L-BFGS (two-loop recursion, Armijo
    backtracking with quadratic interpolation). `fg(x)` returns (f, gradient, the norm the
    stopping rule reads). Stops at norm <= target, after `max_iter` iterations, or when a
    line search cannot decrease f (rounding): returns (x, iterations, evaluations, norm)."""
    f, g, gn = fg(x)
    evals, it = 1, 0
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    R: list[float] = []
    while gn > target and it < max_iter:
        q = g.copy()
        alphas = []
        for s_, y_, r_ in zip(reversed(S), reversed(Y), reversed(R)):
            a = r_ * _dot(s_, q)
            alphas.append(a)
            q -= a * y_
        q *= _dot(S[-1], Y[-1]) / _dot(Y[-1], Y[-1]) if S else 1.0 / max(np.sqrt(_dot(g, g)), 1.0)
        for s_, y_, r_, a in zip(S, Y, R, reversed(alphas)):
            q += (a - r_ * _dot(y_, q)) * s_
        d = -q
        slope = _dot(g, d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S, Y, R = [], [], []
            d, slope = -g, -_dot(g, g)
        t = 1.0
        while True:
            xn = x + t * d
            fn, gn_vec, gnn = fg(xn)
            evals += 1
            if fn <= f + 1e-4 * t * slope:
                break
            denom = 2.0 * (fn - f - slope * t)
            t = float(np.clip(-slope * t * t / denom, 0.1 * t, 0.5 * t)) if denom > 0 else 0.5 * t
            if t < 1e-10:
                return x, it, evals, gn  # no decrease left at this precision
        s_, y_ = xn - x, gn_vec - g
        sy = _dot(s_, y_)
        if sy > 1e-12 * _dot(y_, y_):
            S.append(s_)
            Y.append(y_)
            R.append(1.0 / sy)
            if len(S) > memory:
                S.pop(0), Y.pop(0), R.pop(0)
        x, f, g, gn = xn, fn, gn_vec, gnn
        it += 1
    return x, it, evals, gn


def _objective(Z: np.ndarray, y: np.ndarray, lam: float, Sc: np.ndarray, Q: np.ndarray):
    """Mean CE + lam/2 ||W||^2 and its gradient in the preconditioned variables u, where
    W = (Sc * u) Q^T; arithmetic on Z's dtype, accumulation in float64. Also returns the
    gradient norm in the original variables (W, b), which the stopping rule reads."""
    n, r = Z.shape
    k = Sc.shape[1]
    rows = np.arange(n)
    dt = Z.dtype

    def f(x: np.ndarray) -> tuple[float, np.ndarray, float]:
        u = x[: r * k].reshape(r, k)
        b = x[r * k:]
        W = (Sc * u) @ Q.T
        A = Z @ W.astype(dt, copy=False)
        A += b.astype(dt)
        m = A.max(axis=1, keepdims=True)
        E = np.exp(A - m)
        s = E.sum(axis=1, keepdims=True)
        lse = np.log(s[:, 0].astype(np.float64)) + m[:, 0]
        loss = float(np.mean(lse - A[rows, y]) + 0.5 * lam * _dot(W, W))
        E /= s
        E[rows, y] -= 1  # P - Y
        gW = (Z.T @ E).astype(np.float64) / n + lam * W
        gb = E.sum(axis=0, dtype=np.float64) / n
        gn = float(np.sqrt(_dot(gW, gW) + _dot(gb, gb)))
        return loss, np.concatenate([((gW @ Q) * Sc).ravel(), gb]), gn

    return f


def fit_softmax(Z32: np.ndarray, y: np.ndarray, k: int, lam: float, init: tuple | None = None,
                tol: float = 1e-5, max_iter: int = 10000, z64: Callable[[], np.ndarray] | None = None) -> SoftmaxFit:
    """Minimise mean CE + lam/2 ||W||^2 over (W, b) for codes y in 0..k-1 (all present).

    `Z32` is the float32 design; `z64()` (optional) gives the same in float64 for the
    finish, only if float32 rounding stops the line search; `init` = (W, b) warm start."""
    n, r = Z32.shape
    W0, b0 = (np.zeros((r, k)), np.zeros(k)) if init is None else init
    A0 = Z32 @ W0.astype(np.float32) + b0.astype(np.float32)
    P0 = np.exp(A0 - A0.max(1, keepdims=True)).astype(np.float64)
    P0 /= P0.sum(1, keepdims=True)
    Hc = np.diag(P0.mean(0)) - (P0.T @ P0) / n  # mean softmax Hessian over classes
    L, Q = np.linalg.eigh(Hc)
    colsq = np.square(Z32, dtype=np.float32).sum(0, dtype=np.float64)
    Sc = 1.0 / np.sqrt(colsq[:, None] * np.clip(L, 0, None)[None, :] / n + lam)
    x = np.concatenate([((W0 @ Q) / Sc).ravel(), b0])
    target = np.sqrt(2.0 * lam * tol)
    iters, evals, gn = 0, 0, np.inf
    for Z in (Z32, None):
        if Z is None:
            Z = z64() if z64 is not None else Z32.astype(np.float64)
        x, it, ev, gn = lbfgs(_objective(Z, y, lam, Sc, Q), x, target, max_iter - iters)
        iters, evals = iters + it, evals + ev
        if gn <= target or iters >= max_iter:
            break
    u = x[: r * k].reshape(r, k)
    return SoftmaxFit((Sc * u) @ Q.T, x[r * k:].copy(), evals, gn, gn * gn / (2 * lam), bool(gn <= target))


def log_softmax(Z: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    A = (Z @ W.astype(Z.dtype)).astype(np.float64) + b
    A -= A.max(1, keepdims=True)
    return A - np.log(np.exp(A).sum(1, keepdims=True))


# --------------------------------------------------------------------------- default protocol


@dataclass
class Basis:
    """A stage's vectors z-scored over the run's samples, in principal-axis coordinates."""

    Z32: np.ndarray
    Z64: np.ndarray
    dim: int       # D of the pooled vectors
    rank: int      # axes kept (nonzero variance)


def stage_basis(X: np.ndarray) -> Basis:
    """z-score the (N, D) vectors over their rows and rotate them onto the principal axes
    with nonzero variance: Z = X_z V (or U s when D > N), Z Z^T = X_z X_z^T."""
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    mu = X.mean(0, dtype=np.float64)
    sd = X.std(0, dtype=np.float64)
    sd[sd == 0] = 1.0  # StandardScaler's rule for a constant feature
    Xz = ((X - mu.astype(np.float32)) / sd.astype(np.float32)).astype(np.float32)
    if d <= n:
        C = Xz.astype(np.float64).T @ Xz.astype(np.float64)
        w, V = np.linalg.eigh(C)
        keep = w > max(w[-1], 0) * 1e-10
        Z64 = Xz.astype(np.float64) @ V[:, keep][:, ::-1]
    else:
        G = (Xz @ Xz.T).astype(np.float64)  # N x N Gram; float32 products, the vectors' precision
        del Xz
        w, U = np.linalg.eigh(G)
        del G
        keep = w > max(w[-1], 0) * 1e-9
        Z64 = U[:, keep][:, ::-1] * np.sqrt(w[keep][::-1])
    return Basis(Z64.astype(np.float32), Z64, d, int(keep.sum()))


@dataclass
class FitLog:
    n_fits: int = 0
    n_converged: int = 0
    n_evals: int = 0
    max_evals: int = 0
    max_gap: float = 0.0

    def add(self, fit: SoftmaxFit) -> None:
        self.n_fits += 1
        self.n_converged += fit.converged
        self.n_evals += fit.n_evals
        self.max_evals = max(self.max_evals, fit.n_evals)
        self.max_gap = max(self.max_gap, fit.gap_bound)


def _local(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes present in y and y recoded onto them."""
    cls = np.unique(y)
    code = np.full(k, -1)
    code[cls] = np.arange(len(cls))
    return cls, code[y]


def inner_pairs(n_splits: int, inner_folds: int | None = None) -> list[tuple[int, int]]:
    """Fold pairs (i, j) to fit on the folds other than i and j: outer fold i validates lam
    on every other fold (None, or n_splits - 1) or on the `inner_folds` folds nearest to it
    (i +- 1, i +- 2, ...); the fit without i and j serves both i (validated on j) and j
    (validated on i)."""
    if n_splits < 3:
        raise MchError(f"the default probe needs n_splits >= 3 (its inner CV fits on the folds other "
                       f"than the outer test fold and a validation fold), not {n_splits}")
    if inner_folds is None or inner_folds == n_splits - 1:
        return [(i, j) for i in range(n_splits) for j in range(i + 1, n_splits)]
    if inner_folds % 2 or not 2 <= inner_folds <= n_splits - 1:
        raise MchError(f"probe parameter inner_folds must be even and between 2 and n_splits - 1 = "
                       f"{n_splits - 1}, not {inner_folds}")
    return sorted({tuple(sorted((i, (i + d) % n_splits))) for i in range(n_splits)
                   for d in range(1, inner_folds // 2 + 1)})


MAX_DEFAULT_JOBS = 4  # each concurrent fit holds a copy of its training rows


def n_workers(n_jobs: Any) -> int:
    """Worker threads for the probe's fits: `n_jobs`, or the usable cores (at most
    MAX_DEFAULT_JOBS: memory grows by one copy of the training rows per thread)."""
    import os

    if n_jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cores, MAX_DEFAULT_JOBS))
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, float, str)) or not str(n_jobs).isdigit() \
            or int(n_jobs) < 1:
        raise MchError(f"probe parameter n_jobs must be a positive number of threads or null, not {n_jobs!r}")
    return int(n_jobs)


def _map(pool: Any, fn: Callable, items: list) -> list:
    return list(pool.map(fn, items)) if pool is not None else [fn(i) for i in items]


def nested_cv_probe(Z32: np.ndarray, Z64: np.ndarray, y: np.ndarray, k: int, folds: Folds,
                    grid: tuple[float, ...], patience: int, tol: float, max_iter: int,
                    log: FitLog, inner_tol: float | None = None, inner_folds: int | None = None,
                    pool: Any = None) -> tuple[np.ndarray, list[float], list[list[tuple[float, float]]]]:
    """Held-out log-probabilities (n, k) of every row from its outer fold's model, the lam
    each outer fold chose, and each fold's inner CV curve [(lam, CE nats)].

    The fits of one lam step (and the outer fits) are independent: with `pool` (a thread
    pool) they run concurrently; callers hold BLAS at one thread, so every fit's arithmetic,
    and the result, is the same whatever the number of workers."""
    F = folds.n_splits
    n, r = Z32.shape
    pairs = inner_pairs(F, inner_folds)
    pair_rows = {p: np.flatnonzero((folds.fold != p[0]) & (folds.fold != p[1])) for p in pairs}
    test_rows = [folds.test(i) for i in range(F)]
    warm: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    best = [np.inf] * F
    best_lam: list[float] = [grid[0]] * F
    best_init: list[tuple[np.ndarray, np.ndarray] | None] = [None] * F
    stale = [0] * F
    active = [True] * F
    curves: list[list[tuple[float, float]]] = [[] for _ in range(F)]

    def inner(job: tuple[tuple[int, int], float]) -> tuple | None:
        """One pair's fit at lam and its validation sums for each of the two outer folds."""
        p, lam = job
        rows = pair_rows[p]
        cls, yl = _local(y[rows], k)
        if len(cls) < 2:
            return None
        fit = fit_softmax(Z32[rows], yl, len(cls), lam, warm.get(p), inner_tol or tol, max_iter,
                          lambda rows=rows: Z64[rows])
        val = {}
        for o, v in ((p[0], p[1]), (p[1], p[0])):
            vr = test_rows[v]
            vr = vr[np.isin(y[vr], cls)]  # rows of a class this fit never saw carry no lam signal
            nll = 0.0
            if len(vr):
                lp = log_softmax(Z32[vr], fit.W, fit.b)
                nll = -lp[np.arange(len(vr)), np.searchsorted(cls, y[vr])].sum()
            val[o] = (nll, len(vr))
        return p, cls, fit, val

    for lam in grid:
        if not any(active):
            break
        nll = np.zeros(F)
        cnt = np.zeros(F)
        Wsum = [np.zeros((r, k)) for _ in range(F)]
        bsum = [np.zeros(k) for _ in range(F)]
        csum = [np.zeros(k) for _ in range(F)]
        jobs = [(p, lam) for p in pairs if active[p[0]] or active[p[1]]]
        for res in _map(pool, inner, jobs):  # in pair order: the sums do not depend on scheduling
            if res is None:
                continue
            p, cls, fit, val = res
            log.add(fit)
            warm[p] = (fit.W, fit.b)
            for o in p:
                if not active[o]:
                    continue
                nll[o] += val[o][0]
                cnt[o] += val[o][1]
                Wsum[o][:, cls] += fit.W
                bsum[o][cls] += fit.b
                csum[o][cls] += 1
        for o in range(F):
            if not active[o] or cnt[o] == 0:
                continue
            ce = nll[o] / cnt[o]
            curves[o].append((lam, float(ce)))
            if ce < best[o]:
                best[o], best_lam[o], stale[o] = ce, lam, 0
                c = np.maximum(csum[o], 1)
                best_init[o] = (Wsum[o] / c, bsum[o] / c)
            else:
                stale[o] += 1
                if stale[o] >= patience:
                    active[o] = False

    def outer(o: int) -> SoftmaxFit:
        tr = folds.train(o)
        return fit_softmax(Z32[tr], y[tr], k, best_lam[o], best_init[o], tol, max_iter, lambda tr=tr: Z64[tr])

    logp = np.full((n, k), np.nan)
    for o, fit in enumerate(_map(pool, outer, list(range(F)))):
        log.add(fit)
        te = test_rows[o]
        logp[te] = log_softmax(Z32[te], fit.W, fit.b)
    return logp, best_lam, curves


def heldout_metrics(y: np.ndarray, logp: np.ndarray, k: int, h_bits: float, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """Pooled held-out scores with bootstrap CIs over the test rows."""
    pred = logp.argmax(1)
    nll_bits = -logp[np.arange(len(y)), y] / LN2
    point = scores_from_confusion(confusion(y, pred, k))
    point = {key: float(v) for key, v in point.items()}
    point["cross_entropy_bits"] = float(nll_bits.mean())
    point["i_probe_bits"] = h_bits - point["cross_entropy_bits"]
    reps = bootstrap_classification(y, pred, nll_bits, k, n_boot, seed)
    reps["i_probe_bits"] = h_bits - reps["cross_entropy_bits"]
    cis = {key: percentile_ci(v) for key, v in reps.items()}
    return {"point": point, "ci": cis}


# --------------------------------------------------------------------------- paper protocol


def paper_split(X: np.ndarray, rows: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                weight_decay: float, max_iter: int) -> dict[str, Any]:
    """The reference's procedure on one split: scaler on train, lbfgs. `X` holds the stage's
    float32 vectors, `rows` the probed rows (y[i] labels X[rows[i]]), `tr`/`te` index y. The
    caller silences warnings (the reference does; `catch_warnings` is not thread-safe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    k = int(y.max()) + 1
    xtr = X[rows[tr]]
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(solver="lbfgs", C=1.0 / (weight_decay * len(tr)), max_iter=max_iter)
    clf.fit(scaler.transform(xtr), y[tr])
    del xtr
    xte = scaler.transform(X[rows[te]])
    pred = clf.predict(xte)
    proba = np.zeros((len(te), k))
    proba[:, clf.classes_] = clf.predict_proba(xte)
    with np.errstate(divide="ignore"):
        nll_bits = -np.log2(proba[np.arange(len(te)), y[te]])
    return {"accuracy": float(accuracy_score(y[te], pred)),
            "f1_macro": float(f1_score(y[te], pred, average="macro", zero_division=0)),
            "n_iter": int(np.max(clf.n_iter_)), "pred": pred, "nll_bits": nll_bits,
            "n_train": int(len(tr)), "n_test": int(len(te))}


def paper_splits(y: np.ndarray, n_splits: int, train_size: float, random_state: int):
    from sklearn.model_selection import StratifiedShuffleSplit

    sss = StratifiedShuffleSplit(n_splits=n_splits, train_size=train_size, random_state=random_state)
    return list(sss.split(np.zeros((len(y), 1)), y))


def paper_encode(labels: np.ndarray, attribute: Any, class_order: str):
    """The reference's label filters (script 03): lexical needs >= 5 distinct words and >= 50
    labelled rows; other types >= 20 labels; classes with < 2 members dropped; >= 20 rows
    left. Returns (Encoded, reason skipped or None)."""
    labels = np.asarray(labels).astype(str)
    labelled = labels[labels != ""]
    lexical = attribute.name == "lexical"
    if lexical and (len(np.unique(labelled)) < 5 or len(labelled) < 50):
        return None, f"{len(np.unique(labelled))} distinct words in {len(labelled)} labelled rows (needs 5 and 50)"
    if not lexical and len(labelled) < 20:
        return None, f"{len(labelled)} labelled rows (needs 20)"
    if class_order == "declared" or (class_order == "auto" and lexical):
        enc = encode_labels(labels, order=list(attribute.classes))
    elif class_order in ("sorted", "auto"):
        enc = encode_labels(labels)
    else:
        raise MchError(f"probe parameter class_order must be auto, sorted or declared, not {class_order!r}")
    if len(enc.rows) < 20 or len(enc.classes) < 2:
        return None, f"{len(enc.rows)} rows in {len(enc.classes)} classes after dropping singleton classes"
    return enc, None


# --------------------------------------------------------------------------- the analysis


def _retention(acc: float | None, c: float) -> float | None:
    return None if acc is None else (acc - c) / (1 - c)


def attribute_level(attr: str, c: float, acc: dict[str, float]) -> list[Metric]:
    """The retention numbers across stages, each under its own name (science.md §1)."""
    out = []
    a_en, a_ad, a_fi = acc.get("encoder"), acc.get("adapter"), acc.get("llm.final")
    if a_ad is not None and a_fi is not None:
        # the reference returns NaN when the adapter is within 0.001 of chance
        out.append(Metric("retained_pct", 100 * (a_fi - c) / (a_ad - c) if a_ad - c > 1e-3 else None, None, attr))
    if a_fi is not None:
        out.append(Metric("final_over_chance", a_fi / c if c > 0 else None, None, attr))
    if a_en is not None and a_fi is not None:
        out.append(Metric("delta_tau", _retention(a_en, c) - _retention(a_fi, c), None, attr))
    return out


class Probe(Analysis):
    """Linear probes per (stage, attribute); see the module docstring for both protocols."""

    name = "probe"
    needs_model = False

    def default_params(self, protocol: str) -> dict[str, Any]:
        return dict(PAPER_PARAMS if protocol == "paper" else DEFAULT_PARAMS)

    def run(self, ctx) -> AnalysisOutput:
        params = {**self.default_params(ctx.protocol), **ctx.params}
        check_params(self.name, params, self.default_params(ctx.protocol))
        stages = sorted((s for s in ctx.stages if s in ctx.reps), key=stage_sort_key)
        if not stages:
            raise MchError("the probe has no stage to read: the run extracted no representations")
        if ctx.protocol == "paper":
            return self._run_paper(ctx, params, stages)
        return self._run_default(ctx, params, stages)

    # ------------------------------------------------------------------ default
    def _run_default(self, ctx, p: dict[str, Any], stages: list[str]) -> AnalysisOutput:
        if p["inner_folds"] is not None and not str(p["inner_folds"]).isdigit():
            raise MchError(f"probe parameter inner_folds must be null or an even number, not {p['inner_folds']!r}")
        inner_folds = None if p["inner_folds"] is None else int(p["inner_folds"])
        n_pairs = len(inner_pairs(int(p["n_splits"]), inner_folds))  # bad fold counts fail before any work
        if p["retention_chance"] not in ("majority", "uniform"):
            raise MchError(f"probe parameter retention_chance must be majority or uniform, not {p['retention_chance']!r}")
        out = AnalysisOutput(summary={"protocol": "default", "lambda_grid": list(LAMBDA_GRID),
                                      "objective": "mean cross-entropy + lam/2 ||W||^2 on z-scored vectors",
                                      "standardisation": "over all samples of the run (no labels used)",
                                      "retention_chance": p["retention_chance"], "attributes": {}})
        plan = {}
        for attr, spec in ctx.attributes.items():
            enc = encode_labels(ctx.labels[attr], order=list(spec.classes))
            info: dict[str, Any] = {"classes": enc.classes, "n": int(len(enc.rows)),
                                    "n_unlabelled": enc.n_unlabelled, "dropped_classes": enc.dropped}
            out.summary["attributes"][attr] = info
            if enc.dropped:
                out.notes.append(f"{attr}: dropped {len(enc.dropped)} classes with a single member")
            if len(enc.rows) < max(p["min_samples"], 2 * p["n_splits"]) or len(enc.classes) < 2:
                info["skipped"] = f"{len(enc.rows)} usable rows in {len(enc.classes)} classes"
                out.notes.append(f"{attr}: skipped ({info['skipped']})")
                continue
            groups = ctx.groups.get(attr)
            folds = grouped_folds(enc.y, None if groups is None else np.asarray(groups)[enc.rows],
                                  p["n_splits"], ctx.seed)
            k = len(enc.classes)
            # chance levels: 1/K, and the majority class rate of the probed rows
            chance = {"uniform": 1.0 / k, "majority": float(np.bincount(enc.y, minlength=k).max() / len(enc.y))}
            h = entropy_bits(prior(enc.y, k))
            info.update({"n_classes": k, "split": "grouped" if folds.grouped else "stratified",
                         "split_detail": folds.reason, "label_entropy_bits": h,
                         "chance_uniform": chance["uniform"], "chance_majority": chance["majority"], "stages": {}})
            if not folds.grouped:
                out.notes.append(f"{attr}: splits are not grouped by {ctx.attributes[attr].group_key!r} "
                                 f"({folds.reason})")
            out.metrics += [Metric("chance_uniform", chance["uniform"], None, attr, n=len(enc.y)),
                            Metric("chance_majority", chance["majority"], None, attr, n=len(enc.y))]
            plan[attr] = (enc, folds, chance, h, info)
        accs: dict[str, dict[str, float]] = {a: {} for a in plan}
        unconverged = []
        # the fits' skinny products run faster on one BLAS thread each, several fits at a time,
        # than one fit on several BLAS threads (measured: benchmarks/analyses.py)
        workers = min(n_workers(p["n_jobs"]), n_pairs)  # at most n_pairs fits run at once
        out.summary["threads"] = workers
        with ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
            self._fit_stages(ctx, p, stages, plan, accs, unconverged, inner_folds, pool, out)
        for attr, (enc, folds, chance, h, info) in plan.items():
            out.metrics += attribute_level(attr, chance[p["retention_chance"]], accs[attr])
        out.summary["converged"] = not unconverged
        if unconverged:
            out.notes.append(f"some fits reached max_iter={p['max_iter']} before the convergence bound: "
                             + ", ".join(unconverged))
        return out

    def _fit_stages(self, ctx, p, stages, plan, accs, unconverged, inner_folds, pool, out) -> None:
        """The nested-CV probes of every (stage, attribute) in `plan`, into `out` and `accs`."""
        with ctx.progress.task("probe", len(stages) * len(plan)) as advance:
            for stage in stages:
                if not plan:
                    break
                basis = stage_basis(ctx.reps[stage])
                for attr, (enc, folds, chance, h, info) in plan.items():
                    k = len(enc.classes)
                    log = FitLog()
                    every = len(enc.rows) == len(basis.Z32)  # rows are sorted: all rows means no copy
                    z32 = basis.Z32 if every else basis.Z32[enc.rows]
                    z64 = basis.Z64 if every else basis.Z64[enc.rows]
                    with one_blas_thread():
                        logp, lams, curves = nested_cv_probe(z32, z64, enc.y, k, folds,
                                                             LAMBDA_GRID, int(p["patience"]), float(p["tol"]),
                                                             int(p["max_iter"]), log, float(p["inner_tol"]),
                                                             inner_folds, pool)
                    r = heldout_metrics(enc.y, logp, k, h, int(p["n_bootstrap"]), ctx.seed)
                    pt, ci, n = r["point"], r["ci"], len(enc.y)
                    c = chance[p["retention_chance"]]
                    acc_lo, acc_hi = ci["accuracy"]
                    out.metrics += [
                        Metric("accuracy", pt["accuracy"], stage, attr, acc_lo, acc_hi, n),
                        Metric("balanced_accuracy", pt["balanced_accuracy"], stage, attr, *ci["balanced_accuracy"], n),
                        Metric("macro_f1", pt["macro_f1"], stage, attr, *ci["macro_f1"], n),
                        Metric("cross_entropy_bits", pt["cross_entropy_bits"], stage, attr,
                               *ci["cross_entropy_bits"], n),
                        Metric("i_probe_bits", pt["i_probe_bits"], stage, attr, *ci["i_probe_bits"], n),
                        Metric("retention_ratio", _retention(pt["accuracy"], c), stage, attr,
                               _retention(acc_lo, c), _retention(acc_hi, c), n),
                    ]
                    accs[attr][stage] = pt["accuracy"]
                    info["stages"][stage] = {
                        "lambda": lams, "inner_cv": curves, "rank": basis.rank, "dim": basis.dim,
                        "fits": log.n_fits, "converged": log.n_converged == log.n_fits,
                        "n_unconverged": log.n_fits - log.n_converged, "max_evals": log.max_evals,
                        "total_evals": log.n_evals, "max_gap_bound_nats": log.max_gap}
                    if log.n_converged < log.n_fits:
                        unconverged.append(f"{attr}@{stage}")
                    advance(1)
                del basis

    # ------------------------------------------------------------------ paper
    def _run_paper(self, ctx, p: dict[str, Any], stages: list[str]) -> AnalysisOutput:
        out = AnalysisOutput(summary={"protocol": "paper", "attributes": {}})
        plan = {}
        for attr, spec in ctx.attributes.items():
            enc, why = paper_encode(ctx.labels[attr], spec, p["class_order"])
            if enc is None:
                out.summary["attributes"][attr] = {"skipped": why}
                out.notes.append(f"{attr}: skipped as the reference would ({why})")
                continue
            splits = paper_splits(enc.y, int(p["n_splits"]), float(p["train_size"]), int(p["random_state"]))
            k = len(enc.classes)
            out.summary["attributes"][attr] = {"classes": enc.classes, "n": int(len(enc.rows)), "n_classes": k,
                                               "dropped_classes": enc.dropped, "chance": 1.0 / k, "stages": {}}
            out.metrics.append(Metric("chance_uniform", 1.0 / k, None, attr, n=len(enc.y)))
            plan[attr] = (enc, splits)
        accs: dict[str, dict[str, float]] = {a: {} for a in plan}
        # n_jobs = 1: the splits one after another with the process's BLAS threads, as a plain
        # sklearn script runs them. n_jobs > 1: one stage's splits of every attribute run
        # concurrently, each on one BLAS thread (faster for these skinny products; float32
        # BLAS rounding then differs from a multi-threaded run in the coefficients' last bits)
        workers = n_workers(p["n_jobs"])
        out.summary["threads"] = workers
        wd, mi = float(p["weight_decay"]), int(p["max_iter"])
        with ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")  # the reference silences ConvergenceWarning
            pool = None
            if workers > 1:
                stack.enter_context(one_blas_thread())
                pool = stack.enter_context(ThreadPoolExecutor(workers))
            advance = stack.enter_context(ctx.progress.task(
                "probe (paper)", len(stages) * sum(len(sp) for _, sp in plan.values())))
            for stage in stages:
                self._paper_stage(ctx, p, stage, plan, accs, pool, wd, mi, out, advance)
        for attr, (enc, _) in plan.items():
            out.metrics += attribute_level(attr, 1.0 / len(enc.classes), accs[attr])
        return out

    def _paper_stage(self, ctx, p, stage, plan, accs, pool, wd, mi, out, advance) -> None:
        """The reference's probes of every attribute at one stage, into `out` and `accs`."""
        X = np.asarray(ctx.reps[stage], dtype=np.float32)  # a float32 store is read in place, not copied
        jobs = [(attr, tr, te) for attr, (_, splits) in plan.items() for tr, te in splits]
        fits = []
        fit = lambda j: paper_split(X, plan[j[0]][0].rows, plan[j[0]][0].y, j[1], j[2], wd, mi)  # noqa: E731
        for f in (pool.map(fit, jobs) if pool is not None else map(fit, jobs)):  # in submission order
            fits.append(f)
            advance(1)
        for attr, (enc, splits) in plan.items():
            k = len(enc.classes)
            chance = 1.0 / k
            per = [f for (a, _, _), f in zip(jobs, fits) if a == attr]
            a = np.array([s["accuracy"] for s in per])
            f1 = np.array([s["f1_macro"] for s in per])
            ret = (a - chance) / (1 - chance)
            ce = np.array([s["nll_bits"].mean() for s in per])
            h = entropy_bits(prior(enc.y, k))
            # extra: CIs from resampling each split's test rows (the reference has none)
            reps = [bootstrap_classification(enc.y[te], s["pred"], s["nll_bits"], k, int(p["n_bootstrap"]),
                                             ctx.seed + i) for i, ((_, te), s) in enumerate(zip(splits, per))]
            acc_ci = percentile_ci(np.mean([r["accuracy"] for r in reps], axis=0))
            ce_rep = np.mean([r["cross_entropy_bits"] for r in reps], axis=0)
            n_test = per[0]["n_test"]
            out.metrics += [
                Metric("accuracy", float(a.mean()), stage, attr, *acc_ci, n_test),
                Metric("std_accuracy", float(a.std(ddof=1)), stage, attr),
                Metric("macro_f1", float(f1.mean()), stage, attr, n=n_test),
                Metric("retention_ratio", float(ret.mean()), stage, attr,
                       _retention(acc_ci[0], chance), _retention(acc_ci[1], chance), n_test),
                Metric("cross_entropy_bits", float(ce.mean()), stage, attr, *percentile_ci(ce_rep), n_test),
                Metric("i_probe_bits", float(h - ce.mean()), stage, attr, *percentile_ci(h - ce_rep), n_test),
            ]
            accs[attr][stage] = float(a.mean())
            out.summary["attributes"][attr]["stages"][stage] = {
                "accuracies": a.tolist(), "f1_macro": f1.tolist(), "retention": ret.tolist(),
                "mean_accuracy": float(a.mean()), "std_accuracy": float(a.std(ddof=1)),
                "mean_retention": float(ret.mean()), "std_retention": float(ret.std(ddof=1)),
                "mean_f1": float(f1.mean()), "chance": chance, "n_classes": k,
                "n_train": per[0]["n_train"], "n_test": n_test,
                "n_iter": [s["n_iter"] for s in per],
                "converged": all(s["n_iter"] < int(p["max_iter"]) for s in per)}
