"""Linear probes: the information present per (stage, attribute) (science.md §1).

`default`: multinomial logistic regression on z-scored vectors in the stage's principal
axes, lam chosen per outer fold of a grouped 5-fold split by nested CV over a harness-owned
grid, each fit stopped at a certified bound; V-information I_probe against the held-out
intercept-only model, a control task on labels permuted across groups, group-bootstrap CIs
from the held-out predictions. `paper`: the reference's script 03 exactly. How each is
computed, and why the default fit is fast without changing the model it finds:
docs/probe-solver.md.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric, stage_sort_key

from ._linalg import one_blas_thread
from ._params import check_params
from ._softmax import Design, Problem, SoftmaxFit, fit_many, heldout_logp
from ._stats import (
    LN2,
    Folds,
    RowGroups,
    attribute_groups,
    bootstrap_classification,
    confusion,
    encode_labels,
    entropy_bits,
    group_codes,
    grouped_folds,
    groups_identity,
    percentile_ci,
    permute_labels_by_group,
    prior,
    resample_seed,
    scores_from_confusion,
    scores_from_counts,
)

# The regularisation grid, owned by the harness (never by a model or dataset plugin, so
# every model is probed alike: the SUPERB fairness rule). lam is the per-sample L2 weight on
# z-scored features: objective = mean CE + lam/2 ||W||^2. Half-decades from 1 (weights near
# zero) to 1e-5 (nearly unpenalised); the reference's fixed 1e-4 is on the grid.
LAMBDA_GRID: tuple[float, ...] = tuple(float(10.0 ** (-k / 2)) for k in range(11))

DEFAULT_PARAMS = {
    "n_splits": 5,  # outer folds (every sample tested once)
    "inner_folds": None,  # inner CV folds per outer fold: None = all n_splits - 1; or an even number of neighbours
    "patience": 1,  # grid steps past the best inner CV cross-entropy before the walk stops
    "tol": 1e-5,  # convergence of the outer fits: ||grad||^2 / (2 lam) <= tol (nats above the optimum)
    "inner_tol": 1e-4,  # the same bound for the inner fits, which only rank lam
    "max_iter": 10000,  # L-BFGS iterations per fit (a fit that hits it is reported unconverged)
    "n_bootstrap": 1000,  # group resamples of the held-out predictions for the CIs (science.md §8)
    "control": True,  # the control task: labels permuted across groups, same folds and lam (science.md §1)
    "n_repeats": 1,  # grouped-CV seeds (each sample tested once per seed); their spread enters the CIs
    "retention_chance": "majority",  # chance level c of the retention numbers: majority or uniform
    "min_samples": 20,  # fewer labelled rows: the attribute is skipped (the reference's 20)
    "n_jobs": None,  # threads for the fits (None: usable cores, at most 4); results do not depend on it
}
PAPER_PARAMS = {
    "n_splits": 5,
    "train_size": 0.8,
    "random_state": 42,
    "weight_decay": 1e-4,  # C = 1 / (weight_decay * n_train)
    "max_iter": 100,
    "class_order": "auto",  # auto: rank order for lexical, sorted otherwise; or sorted / declared
    "n_bootstrap": 1000,
    "n_jobs": 1,  # 1: the reference's arithmetic exactly; more: splits run concurrently
}

# Types and ranges beyond what each default says (`mch list params`; mch.api.Param), checked
# before any work. The default protocol also needs n_splits >= 3 and an even inner_folds
# (checked in `preflight`, before any extraction).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "probe",
    n_splits=Param(int, ge=2),
    inner_folds=Param(int, ge=2, nullable=True),
    tol=Param(float, gt=0),
    inner_tol=Param(float, gt=0),
    max_iter=Param(int, ge=1),
    n_bootstrap=Param(int, ge=1),
    retention_chance=Param(str, choices=("majority", "uniform")),
    min_samples=Param(int, ge=2),
    n_jobs=Param(int, ge=1, nullable=True),
    train_size=Param(float, gt=0, lt=1),
    random_state=Param(int, ge=0, le=2**32 - 1),
    weight_decay=Param(float, gt=0),
    class_order=Param(str, choices=("auto", "sorted", "declared")),
    control=Param(bool, help="the control task (science.md 1): labels permuted across groups, same folds and lam"),
    n_repeats=Param(int, ge=1, help="grouped-CV seeds; their spread enters the CIs"),
)


# --------------------------------------------------------------------------- default protocol


@dataclass
class Basis:
    """A stage's vectors z-scored over the run's samples, in principal-axis coordinates
    (computed in float64, kept in float32: the vectors' own precision)."""

    Z32: np.ndarray
    dim: int  # D of the pooled vectors
    rank: int  # axes kept (nonzero variance)
    perm: np.ndarray | None = None  # Z32[i] is the stage's row perm[i] (None: row i)

    def arrange(self, rows: np.ndarray) -> np.ndarray:
        """Z32's rows reordered in place so that its leading len(rows) rows are the stage's
        `rows` in that order; returns them (a view). A design then reads them without its
        own copy of the stage (issue 17: the probe's peak memory)."""
        n = len(self.Z32)
        perm = np.arange(n) if self.perm is None else self.perm
        pos = np.empty(n, dtype=np.intp)
        pos[perm] = np.arange(n)
        rest = np.ones(n, dtype=bool)
        rest[rows] = False
        target = np.concatenate([np.asarray(rows, dtype=np.intp), np.flatnonzero(rest)])
        src = pos[target]  # new row i is the current row src[i]
        Z, done = self.Z32, src == np.arange(n)
        for i in np.flatnonzero(~done):  # follow each cycle of the permutation with one row held
            if done[i]:
                continue
            held, j = Z[i].copy(), i
            while src[j] != i:
                Z[j] = Z[src[j]]
                done[j] = True
                j = src[j]
            Z[j] = held
            done[j] = True
        self.perm = target
        return Z[: len(rows)]


def stage_basis(X: np.ndarray) -> Basis:
    """z-score the (N, D) vectors over their rows and rotate them onto the principal axes
    with nonzero variance: Z = X_z V (or U s when D > N), Z Z^T = X_z X_z^T. On one BLAS
    thread: on a busy machine a threaded eigendecomposition waits for time slices (measured at
    load 9 on 2 cores: 49 s on two threads against 5.7 s on one; idle, 2.0 against 3.1 s)."""
    with one_blas_thread():
        return _stage_basis(X)


BASIS_ROWS = 1024  # rows z-scored (and taken to float64) at a time: the basis's memory is O(block d)


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and (ddof 0) standard deviation of the rows of X, in float64, in row blocks.
    Each sum runs row by row in row order (the running sum leads each block's reduction), as
    numpy's axis-0 sums of the whole array do: the same values, without its float64 copy."""
    n, d = X.shape
    s = np.zeros(d)
    for lo in range(0, n, BASIS_ROWS):
        s = np.add.reduce(np.vstack([s[None], np.asarray(X[lo : lo + BASIS_ROWS], dtype=np.float64)]), axis=0)
    mu = s / n
    q = np.zeros(d)
    for lo in range(0, n, BASIS_ROWS):
        dev = np.asarray(X[lo : lo + BASIS_ROWS], dtype=np.float64) - mu
        q = np.add.reduce(np.vstack([q[None], np.multiply(dev, dev, out=dev)]), axis=0)
    return mu, np.sqrt(q / n)


def _first_kept(w: np.ndarray, rel: float) -> int:
    """The first kept axis of ascending eigenvalues `w` (nonzero variance: above rel x the
    largest): the kept axes are a tail, so they are a view, not a copy."""
    keep = w > max(w[-1], 0) * rel
    return int(np.argmax(keep)) if keep.any() else len(w)


def _stage_basis(X: np.ndarray) -> Basis:
    n, d = X.shape
    mu, sd = _moments(X)
    sd[sd == 0] = 1.0  # StandardScaler's rule for a constant feature
    mu32, sd32 = mu.astype(np.float32), sd.astype(np.float32)

    def zscored(lo: int, hi: int) -> np.ndarray:  # float32 (x - mu) / sd, the caller's X untouched
        b = np.subtract(np.asarray(X[lo:hi], dtype=np.float32), mu32)
        return np.divide(b, sd32, out=b)

    if d <= n:
        C = np.zeros((d, d))
        for lo in range(0, n, BASIS_ROWS):
            b = zscored(lo, min(lo + BASIS_ROWS, n)).astype(np.float64)
            C += b.T @ b
        w, V = np.linalg.eigh(C)
        del C
        first = _first_kept(w, 1e-10)
        V = np.ascontiguousarray(V[:, first:][:, ::-1])
        Z = np.empty((n, V.shape[1]), dtype=np.float32)
        for lo in range(0, n, BASIS_ROWS):
            hi = min(lo + BASIS_ROWS, n)
            Z[lo:hi] = zscored(lo, hi).astype(np.float64) @ V
        return Basis(Z, d, V.shape[1])
    Xz = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, BASIS_ROWS):
        Xz[lo : lo + BASIS_ROWS] = zscored(lo, min(lo + BASIS_ROWS, n))
    G32 = Xz @ Xz.T  # N x N Gram; float32 products, the vectors' precision
    del Xz
    G = G32.astype(np.float64)
    del G32
    w, U = np.linalg.eigh(G)
    del G
    first = _first_kept(w, 1e-9)
    U = U[:, first:][:, ::-1]  # a view: no copy of the N x N eigenvectors
    U *= np.sqrt(w[first:][::-1])
    return Basis(np.ascontiguousarray(U, dtype=np.float32), d, U.shape[1])


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


def inner_pairs(n_splits: int, inner_folds: int | None = None) -> list[tuple[int, int]]:
    """Fold pairs (i, j) to fit on the folds other than i and j: outer fold i validates lam
    on every other fold (None, or n_splits - 1) or on the `inner_folds` folds nearest to it
    (i +- 1, i +- 2, ...); the fit without i and j serves both i (validated on j) and j
    (validated on i)."""
    if n_splits < 3:
        raise MchError(
            f"the default probe needs n_splits >= 3 (its inner CV fits on the folds other "
            f"than the outer test fold and a validation fold), not {n_splits}"
        )
    if inner_folds is None or inner_folds == n_splits - 1:
        return [(i, j) for i in range(n_splits) for j in range(i + 1, n_splits)]
    if inner_folds % 2 or not 2 <= inner_folds <= n_splits - 1:
        raise MchError(
            f"probe parameter inner_folds must be even and between 2 and n_splits - 1 = "
            f"{n_splits - 1}, not {inner_folds}"
        )
    return sorted(
        {tuple(sorted((i, (i + d) % n_splits))) for i in range(n_splits) for d in range(1, inner_folds // 2 + 1)}
    )


EXTRAPOLATE = True  # False: the path before issue 18 (each lam starts at the last fit); the benchmark compares both
CONTROL_START_TOL = 1e-3  # bound of the control task's all-rows starting fit (only a starting point)
MAX_DEFAULT_JOBS = 4  # more threads than this rarely pays for the products' memory traffic


def n_workers(n_jobs: Any) -> int:
    """Worker threads for the probe's fits: `n_jobs`, or the usable cores (at most
    MAX_DEFAULT_JOBS)."""
    import os

    if n_jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cores, MAX_DEFAULT_JOBS))
    if (
        isinstance(n_jobs, bool)
        or not isinstance(n_jobs, (int, float, str))
        or not str(n_jobs).isdigit()
        or int(n_jobs) < 1
    ):
        raise MchError(f"probe parameter n_jobs must be a positive number of threads or null, not {n_jobs!r}")
    return int(n_jobs)


def _next_start(
    fit: SoftmaxFit, lam: float, before: tuple[np.ndarray, np.ndarray, float] | None, grid: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Where a pair's fit at the next lam of the walk starts: the line through its last two
    fits, in log lam, carried one step on (the path's own trend), or its last fit if it has one.
    A start only: every fit still stops at its certified bound, and a start nearer the optimum
    leaves less of the early stopping the bound allows at small lam (measured on LibriSpeech-
    shaped vectors: the lam choices and held-out numbers of fits solved to 1e-8, at half the
    evaluations of starting from the last fit)."""
    if not EXTRAPOLATE or before is None:
        return fit.W, fit.b
    W0, b0, lam0 = before
    i = grid.index(lam)
    if i + 1 >= len(grid):
        return fit.W, fit.b
    t = np.log(grid[i + 1] / lam) / np.log(lam / lam0)
    return fit.W + t * (fit.W - W0), fit.b + t * (fit.b - b0)


def nested_cv_probe(
    design: Design,
    grid: tuple[float, ...],
    patience: int,
    tol: float,
    max_iter: int,
    log: FitLog,
    inner_tol: float | None = None,
    inner_folds: int | None = None,
    pool: Any = None,
) -> tuple[np.ndarray, list[float], list[list[tuple[float, float]]]]:
    """Held-out log-probabilities (n, k) of every row (in the design's row order) from its
    outer fold's model, the lam each outer fold chose, and each fold's inner CV curve
    [(lam, CE nats)]. The design's blocks are the outer folds.

    The fits of one lam step (and the outer fits) run in one lockstep batch; with `pool` its
    tasks run on worker threads (callers hold BLAS at one thread), and every fit's
    arithmetic, and the result, is the same whatever the number of workers."""
    F, k = design.n_blocks, design.k
    r = design.rank
    pairs = [p for p in inner_pairs(F, inner_folds) if design.present([j for j in range(F) if j not in p]).sum() >= 2]
    warm: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    last: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}
    best = [np.inf] * F
    best_lam: list[float] = [grid[0]] * F
    best_init: list[tuple[np.ndarray, np.ndarray] | None] = [None] * F
    stale = [0] * F
    active = [True] * F
    curves: list[list[tuple[float, float]]] = [[] for _ in range(F)]
    y = design.y

    for lam in grid:
        if not any(active):
            break
        jobs = [p for p in pairs if active[p[0]] or active[p[1]]]
        fits = fit_many(
            design,
            [Problem(tuple(j for j in range(F) if j not in p), lam, inner_tol or tol, warm.get(p)) for p in jobs],
            max_iter,
            pool,
        )
        logps = heldout_logp(design, fits, jobs, pool)  # each pair's fit on its two held-out folds
        nll = np.zeros(F)
        cnt = np.zeros(F)
        Wsum = [np.zeros((r, k)) for _ in range(F)]
        bsum = [np.zeros(k) for _ in range(F)]
        csum = [np.zeros(k) for _ in range(F)]
        for p, fit, lp in zip(jobs, fits, logps, strict=True):  # in pair order: the sums do not depend on scheduling
            log.add(fit)
            warm[p] = _next_start(fit, lam, last.get(p), grid)
            last[p] = (fit.W, fit.b, lam)
            for o, v in ((p[0], p[1]), (p[1], p[0])):
                if not active[o]:
                    continue
                yv = y[design.start[v] : design.stop[v]]
                seen = fit.present[yv]  # rows of a class this fit never saw carry no lam signal
                nll[o] -= lp[v][np.flatnonzero(seen), yv[seen]].sum()
                cnt[o] += seen.sum()
                Wsum[o] += fit.W
                bsum[o] += np.where(fit.present, fit.b, 0.0)
                csum[o] += fit.present
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

    outer = fit_many(
        design,
        [Problem(tuple(j for j in range(F) if j != o), best_lam[o], tol, best_init[o]) for o in range(F)],
        max_iter,
        pool,
    )
    logp = np.full((len(y), k), np.nan)
    for o, (fit, lp) in enumerate(zip(outer, heldout_logp(design, outer, [(o,) for o in range(F)], pool), strict=True)):
        log.add(fit)
        logp[design.start[o] : design.stop[o]] = lp[o]
    return logp, best_lam, curves


def heldout_metrics(y: np.ndarray, logp: np.ndarray, k: int, h_bits: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Pooled held-out scores with row-bootstrap CIs (I_probe here is H(Y) - CE; the default
    protocol uses `heldout_replicates`)."""
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


def _row_order(logp_d: np.ndarray, design: Design) -> np.ndarray:
    logp = np.empty_like(logp_d)
    logp[design.order] = logp_d
    return logp


def null_nll_bits(y: np.ndarray, fold: np.ndarray, k: int) -> np.ndarray:
    """Each row's held-out cross-entropy (bits) under the intercept-only model fitted on its
    outer fold's training rows: that fold's label prior (the null of V-information, science.md
    §1). Folds keep every class in every training part; a class a part lacks would cost inf."""
    out = np.empty(len(y))
    for f in np.unique(fold):
        te = fold == f
        counts = np.bincount(y[~te], minlength=k).astype(np.float64)
        with np.errstate(divide="ignore"):
            out[te] = -np.log2(counts[y[te]] / counts.sum())
    return out


def heldout_replicates(
    y: np.ndarray, k: int, h_bits: float, runs: list[dict[str, np.ndarray]], w: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point values and group-bootstrap replicates of the held-out scores.

    `runs` holds one grouped CV per seed (`logp` (n, k), `null` (n,) bits); the point value is
    the mean over seeds, and replicate b reads seed b mod R, so the seeds' spread enters the CI.
    `w` (B, n): the shared group resamples as row weights. i_probe_bits = CE_null - CE
    (V-information); i_probe_prior_bits = H(Y) - CE (the prior's entropy held fixed)."""
    R, B = len(runs), w.shape[0]
    keys = (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "cross_entropy_bits",
        "null_cross_entropy_bits",
        "i_probe_bits",
        "i_probe_prior_bits",
    )
    points = {key: [] for key in keys}
    reps = {key: np.full(B, np.nan) for key in keys}
    for r, run in enumerate(runs):
        pred = run["logp"].argmax(1)
        nll = -run["logp"][np.arange(len(y)), y] / LN2
        pt = {key: float(v) for key, v in scores_from_confusion(confusion(y, pred, k)).items()}
        pt["cross_entropy_bits"], pt["null_cross_entropy_bits"] = float(nll.mean()), float(run["null"].mean())
        sel = np.flatnonzero(np.arange(B) % R == r) if R > 1 else slice(None)
        # every weighted count in one product: per-class hits, truths, predictions, and the two CEs
        M = np.zeros((len(y), 3 * k + 2))
        M[np.arange(len(y)), y] = y == pred
        M[np.arange(len(y)), k + y] = 1.0
        M[np.arange(len(y)), 2 * k + pred] = 1.0
        M[:, 3 * k], M[:, 3 * k + 1] = nll, run["null"]
        S = (w if R == 1 else w[sel]) @ M
        rp = dict(scores_from_counts(S[:, :k], S[:, k : 2 * k], S[:, 2 * k : 3 * k]))
        with np.errstate(invalid="ignore", divide="ignore"):
            tot = S[:, k : 2 * k].sum(1)  # NaN where a resample drew none of these rows
            rp["cross_entropy_bits"], rp["null_cross_entropy_bits"] = S[:, 3 * k] / tot, S[:, 3 * k + 1] / tot
        for d in (pt, rp):
            d["i_probe_bits"] = d["null_cross_entropy_bits"] - d["cross_entropy_bits"]
            d["i_probe_prior_bits"] = h_bits - d["cross_entropy_bits"]
        for key in keys:
            points[key].append(pt[key])
            reps[key][sel] = rp[key]
    return {key: float(np.mean(v)) for key, v in points.items()}, reps


def control_labels(
    y: np.ndarray, codes: np.ndarray, folds: list[Folds], k: int, seed: int, tries: int = 100
) -> np.ndarray | None:
    """The control task's labels (Hewitt & Liang 2019, science.md §1): `y` permuted across
    groups with the group structure kept, drawn until every outer training part holds every
    class (the probe's own folds are used); None if no draw does."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        yc = permute_labels_by_group(y, codes, rng)
        if all(len(np.unique(yc[f.fold != i])) == k for f in folds for i in range(f.n_splits)):
            return yc
    return None


def control_logp(
    design: Design, y_ctrl: np.ndarray, lams: list[float], tol: float, max_iter: int, log: FitLog, pool: Any = None
) -> np.ndarray:
    """Held-out log-probabilities (design row order) of the probe on the control labels
    `y_ctrl` (caller's row order): the same folds, each outer fold fitted at the lam the real
    labels chose there (no inner CV of its own). The design's vectors are shared."""
    import copy

    F, k = design.n_blocks, design.k
    cd = copy.copy(design)
    cd.y = np.asarray(y_ctrl)[design.order]
    cd.counts = [np.bincount(cd.y[lo:hi], minlength=k) for lo, hi in zip(design.start, design.stop, strict=True)]
    # the folds' fits start from one loose fit on all rows (a solver path, not a model: each fold's
    # fit is still certified at `tol`). Permuted labels at a small lam are nearly interpolated, and
    # from zeros they take ~10x the evaluations of the real labels' warm-started outer fits
    # (measured on the benchmark's 40-class probe at lam 1e-5: 1513 evaluations cold, 280 so)
    lam0 = float(np.exp(np.mean(np.log(lams))))
    start = fit_many(cd, [Problem(tuple(range(F)), lam0, max(tol, CONTROL_START_TOL))], max_iter, pool)[0]
    log.add(start)
    fits = fit_many(
        cd,
        [Problem(tuple(j for j in range(F) if j != o), lams[o], tol, (start.W, start.b)) for o in range(F)],
        max_iter,
        pool,
    )
    logp = np.full((len(cd.y), k), np.nan)
    for o, (fit, lp) in enumerate(zip(fits, heldout_logp(cd, fits, [(o,) for o in range(F)], pool), strict=True)):
        log.add(fit)
        logp[design.start[o] : design.stop[o]] = lp[o]
    return logp


# --------------------------------------------------------------------------- paper protocol


def paper_split(
    X: np.ndarray, rows: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, weight_decay: float, max_iter: int
) -> dict[str, Any]:
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
    return {
        "accuracy": float(accuracy_score(y[te], pred)),
        "f1_macro": float(f1_score(y[te], pred, average="macro", zero_division=0)),
        "n_iter": int(np.max(clf.n_iter_)),
        "pred": pred,
        "nll_bits": nll_bits,
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
    }


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


def _retention(acc: Any, c: float) -> Any:
    return None if acc is None else (acc - c) / (1 - c)


def _ci(reps: np.ndarray | None, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile CI of replicates, or none when more of them are undefined (NaN: a ratio whose
    denominator a resample took to 0) than the interval's tails hold."""
    if reps is None or len(reps) == 0 or np.mean(~np.isfinite(reps)) > (1 - level) / 2:
        return None, None
    return percentile_ci(reps, level)


def attribute_level(
    attr: str,
    c: float,
    acc: dict[str, float],
    reps: dict[str, np.ndarray] | None = None,
    n: int | None = None,
    n_groups: int | None = None,
) -> list[Metric]:
    """The retention numbers across stages, each under its own name (science.md §1), and the
    chance level c they use (`chance_retention`), so that a reader sees the c of each number.
    With `reps` (stage -> accuracy replicates on the shared group resamples) each number gets
    its CI from the same draws at every stage (c held at the probed rows' value)."""
    out = [Metric("chance_retention", c, None, attr)]
    a_en, a_ad, a_fi = acc.get("encoder"), acc.get("adapter"), acc.get("llm.final")
    r = reps or {}
    r_en, r_ad, r_fi = r.get("encoder"), r.get("adapter"), r.get("llm.final")

    def metric(name: str, value: Any, rep: Any) -> Metric:
        lo, hi = _ci(rep) if rep is not None and value is not None else (None, None)
        return Metric(name, value, None, attr, lo, hi, n, n_groups if lo is not None else None)

    if a_ad is not None and a_fi is not None:
        # the reference returns NaN when the adapter is within 0.001 of chance
        rep = None
        if r_ad is not None and r_fi is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                rep = np.where(r_ad - c > 1e-3, 100 * (r_fi - c) / (r_ad - c), np.nan)
        out.append(metric("retained_pct", 100 * (a_fi - c) / (a_ad - c) if a_ad - c > 1e-3 else None, rep))
    if a_fi is not None:
        out.append(
            metric("final_over_chance", a_fi / c if c > 0 else None, r_fi / c if r_fi is not None and c > 0 else None)
        )
    if a_en is not None and a_fi is not None:
        rep = _retention(r_en, c) - _retention(r_fi, c) if r_en is not None and r_fi is not None else None
        out.append(metric("delta_tau", _retention(a_en, c) - _retention(a_fi, c), rep))
    return out


def d_over_n_note(attr: str, n: int, dims: dict[str, int]) -> str:
    """The note every default probe record carries (science.md §1)."""
    ds = sorted(set(dims.values()))
    d = str(ds[0]) if len(ds) == 1 else f"{ds[0]}-{ds[-1]} by stage"
    return (
        f"{attr}: I_probe is a lower bound on I(Y; h) whose looseness grows with d/N (d = {d}, N = {n} rows): "
        f"a linear probe fitted on N rows of d dimensions leaves information unfound as d/N grows"
    )


@dataclass
class AttrPlan:
    """One attribute's rows, folds (one per grouped-CV seed), control labels and shared resamples."""

    enc: Any
    folds: list[Folds]
    chance: dict[str, float]
    h: float
    info: dict[str, Any]
    groups: RowGroups  # bootstrap groups of the probed rows (science.md §8)
    y_ctrl: np.ndarray | None  # control-task labels, or None (control off or impossible)
    accs: dict[str, float]
    acc_reps: dict[str, np.ndarray]
    weights: np.ndarray | None = None  # (B, n) row weights of the shared resamples, made once


class Probe(Analysis):
    """Linear probes per (stage, attribute) under both protocols (docs/probe-solver.md)."""

    name = "probe"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        return dict(PAPER_PARAMS if protocol == "paper" else DEFAULT_PARAMS)

    def preflight(self, params, protocol, samples, attributes) -> None:
        """Before any extraction (default protocol): the fold counts can work, and parameters
        that would skip every attribute the defaults can probe are an error, not an empty table."""
        if protocol == "paper":
            return
        inner = params.get("inner_folds")
        inner_pairs(int(params["n_splits"]), None if inner is None else int(inner))

        def probeable(p: dict[str, Any], counts: list[int]) -> bool:  # _run_default's skip rule
            kept = [c for c in counts if c >= 2]  # classes with one member are dropped
            return (
                len(kept) >= 2 and sum(kept) >= max(p["min_samples"], 2 * p["n_splits"]) and max(kept) >= p["n_splits"]
            )

        counts = {}
        for a, spec in attributes.items():
            labels = [s.labels.get(a, "") for s in samples]
            counts[a] = [labels.count(c) for c in spec.classes]
        if not counts or any(probeable(params, c) for c in counts.values()):
            return
        if any(probeable(DEFAULT_PARAMS, c) for c in counts.values()):
            largest = max((max(c) for c in counts.values() if c), default=0)
            raise MchError(
                f"analysis 'probe': n_splits={params['n_splits']} and min_samples={params['min_samples']} "
                f"leave no attribute to probe on these {len(samples)} samples (an attribute needs "
                f"max(min_samples, 2 n_splits) labelled rows and a class of n_splits; the largest class "
                f"has {largest}); lower --param probe.n_splits or probe.min_samples"
            )

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
        inner_pairs(int(p["n_splits"]), inner_folds)  # bad fold counts fail before any work
        if p["retention_chance"] not in ("majority", "uniform"):
            raise MchError(
                f"probe parameter retention_chance must be majority or uniform, not {p['retention_chance']!r}"
            )
        if not isinstance(p["control"], bool):
            raise MchError(f"probe parameter control must be true or false, not {p['control']!r}")
        if isinstance(p["n_repeats"], bool) or not str(p["n_repeats"]).isdigit() or int(p["n_repeats"]) < 1:
            raise MchError(
                f"probe parameter n_repeats must be a positive number of grouped-CV seeds, not {p['n_repeats']!r}"
            )
        n_rep = int(p["n_repeats"])
        out = AnalysisOutput(
            summary={
                "protocol": "default",
                "lambda_grid": list(LAMBDA_GRID),
                "objective": "mean cross-entropy + lam/2 ||W||^2 on z-scored vectors",
                "standardisation": "over all samples of the run (no labels used)",
                "retention_chance": p["retention_chance"],
                "i_probe": "V-information: CE of the intercept-only model fitted on the same "
                "training folds minus the probe's CE (held out, bits)",
                "ci": f"percentile, {int(p['n_bootstrap'])} group-bootstrap resamples shared "
                f"with every analysis of the run (science.md §8)",
                "control": bool(p["control"]),
                "n_repeats": n_rep,
                "attributes": {},
            }
        )
        plan: dict[str, AttrPlan] = {}
        for attr, spec in ctx.attributes.items():
            enc = encode_labels(ctx.labels[attr], order=list(spec.classes))
            info: dict[str, Any] = {
                "classes": enc.classes,
                "n": int(len(enc.rows)),
                "n_unlabelled": enc.n_unlabelled,
                "dropped_classes": enc.dropped,
            }
            out.summary["attributes"][attr] = info
            if enc.dropped:
                out.notes.append(f"{attr}: dropped {len(enc.dropped)} classes with a single member")
            largest = int(np.bincount(enc.y).max()) if len(enc.y) else 0
            if (
                len(enc.rows) < max(p["min_samples"], 2 * p["n_splits"])
                or len(enc.classes) < 2
                or largest < int(p["n_splits"])
            ):  # no stratified split into n_splits folds exists
                info["skipped"] = (
                    f"{len(enc.rows)} usable rows in {len(enc.classes)} classes, the largest with "
                    f"{largest} (needs {p['min_samples']} rows and a class of {p['n_splits']})"
                )
                out.notes.append(f"{attr}: skipped ({info['skipped']})")
                continue
            groups = ctx.groups.get(attr)
            g_rows = None if groups is None else np.asarray(groups)[enc.rows]
            folds = [grouped_folds(enc.y, g_rows, p["n_splits"], ctx.seed + r) for r in range(n_rep)]
            k = len(enc.classes)
            # chance levels: 1/K, and the majority class rate of the probed rows
            chance = {"uniform": 1.0 / k, "majority": float(np.bincount(enc.y, minlength=k).max() / len(enc.y))}
            h = entropy_bits(prior(enc.y, k))
            rg = attribute_groups(ctx, attr).subset(enc.rows)
            info.update(
                {
                    "n_classes": k,
                    "split": "grouped" if folds[0].grouped else "stratified",
                    "split_detail": folds[0].reason,
                    "label_entropy_bits": h,
                    "chance_uniform": chance["uniform"],
                    "chance_majority": chance["majority"],
                    "bootstrap_key": rg.key,
                    "n_groups": rg.n_groups,
                    "stages": {},
                }
            )
            if not folds[0].grouped:
                out.notes.append(
                    f"{attr}: splits are not grouped by {ctx.attributes[attr].group_key!r} ({folds[0].reason})"
                )
            y_ctrl = None
            if p["control"]:
                codes, _ = group_codes(g_rows, len(enc.y))
                y_ctrl = control_labels(enc.y, codes, folds, k, resample_seed(ctx.seed, attr, "control"))
                info["control"] = (
                    f"labels permuted across groups of {spec.group_key!r} (group structure kept), "
                    f"same folds, each fold at the lam the real labels chose"
                )
                if y_ctrl is None:
                    info["control"] = "none: no permutation across groups kept every class in every training part"
                    out.notes.append(f"{attr}: no control task ({info['control']})")
            out.metrics += [
                Metric("chance_uniform", chance["uniform"], None, attr, n=len(enc.y)),
                Metric("chance_majority", chance["majority"], None, attr, n=len(enc.y)),
            ]
            out.notes.append(d_over_n_note(attr, len(enc.y), {s: int(np.shape(ctx.reps[s])[1]) for s in stages}))
            plan[attr] = AttrPlan(enc, folds, chance, h, info, rg, y_ctrl, {}, {})
        unconverged: list[str] = []
        # the solver's chunk tasks run on worker threads, each on one BLAS thread: the
        # arithmetic of every product then does not depend on the number of threads
        workers = n_workers(p["n_jobs"])
        out.summary["threads"] = workers
        with ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
            self._fit_stages(ctx, p, stages, plan, unconverged, inner_folds, pool, out)
        for attr, pl in plan.items():
            out.metrics += attribute_level(
                attr,
                pl.chance[p["retention_chance"]],
                pl.accs,
                pl.acc_reps if pl.groups.n_groups >= 2 else None,
                len(pl.enc.y),
                pl.groups.n_groups,
            )
            if pl.groups.n_groups < 10:
                out.notes.append(
                    f"{attr}: its CIs rest on {pl.groups.n_groups} groups of {pl.groups.key!r}"
                    + (" (none: one group cannot be resampled)" if pl.groups.n_groups < 2 else "")
                )
            out.replicates[("_groups", None, attr)] = groups_identity(ctx, pl.groups)
        out.summary["converged"] = not unconverged
        if unconverged:
            out.notes.append(
                f"some fits reached max_iter={p['max_iter']} before the convergence bound: " + ", ".join(unconverged)
            )
        return out

    def _fit_stages(self, ctx, p, stages, plan, unconverged, inner_folds, pool, out) -> None:
        """The nested-CV probes (and control probes) of every (stage, attribute) in `plan`,
        into `out` and the plans."""
        n_boot = int(p["n_bootstrap"])
        with ctx.progress.task("probe", len(stages) * len(plan)) as advance:
            for stage in stages:
                if not plan:
                    break
                basis = stage_basis(ctx.reps[stage])
                for attr, pl in plan.items():
                    enc, k = pl.enc, len(pl.enc.classes)
                    log, clog = FitLog(), FitLog()
                    runs, ctrl_runs, lam_runs, curve_runs = [], [], [], []
                    for folds in pl.folds:
                        order = np.argsort(folds.fold, kind="stable")  # the design's row order
                        design = Design(basis.arrange(enc.rows[order]), folds.fold, enc.y, k, ordered=True)
                        with one_blas_thread():
                            logp_d, lams, curves = nested_cv_probe(
                                design,
                                LAMBDA_GRID,
                                int(p["patience"]),
                                float(p["tol"]),
                                int(p["max_iter"]),
                                log,
                                float(p["inner_tol"]),
                                inner_folds,
                                pool,
                            )
                            ctrl_d = (
                                None
                                if pl.y_ctrl is None
                                else control_logp(
                                    design, pl.y_ctrl, lams, float(p["tol"]), int(p["max_iter"]), clog, pool
                                )
                            )
                        runs.append({"logp": _row_order(logp_d, design), "null": null_nll_bits(enc.y, folds.fold, k)})
                        if ctrl_d is not None:
                            ctrl_runs.append(
                                {"logp": _row_order(ctrl_d, design), "null": null_nll_bits(pl.y_ctrl, folds.fold, k)}
                            )
                        lam_runs.append(lams)
                        curve_runs.append(curves)
                        del design
                    if pl.weights is None:  # the attribute's resamples: the same at every stage
                        pl.weights = pl.groups.weights(n_boot)
                    with one_blas_thread():  # small products: a waiting BLAS thread costs more than it gives
                        pt, reps = heldout_replicates(enc.y, k, pl.h, runs, pl.weights)
                        self._stage_metrics(out, stage, attr, pl, p, pt, reps, ctrl_runs, pl.weights)
                    pl.accs[stage] = pt["accuracy"]
                    pl.acc_reps[stage] = reps["accuracy"]
                    pl.info["stages"][stage] = {
                        "lambda": lam_runs[0] if len(lam_runs) == 1 else lam_runs,
                        "inner_cv": curve_runs[0] if len(curve_runs) == 1 else curve_runs,
                        "rank": basis.rank,
                        "dim": basis.dim,
                        "null_cross_entropy_bits": pt["null_cross_entropy_bits"],
                        "fits": log.n_fits,
                        "converged": log.n_converged == log.n_fits,
                        "n_unconverged": log.n_fits - log.n_converged,
                        "max_evals": log.max_evals,
                        "total_evals": log.n_evals,
                        "max_gap_bound_nats": log.max_gap,
                    }
                    if ctrl_runs:
                        pl.info["stages"][stage]["control_fits"] = {
                            "fits": clog.n_fits,
                            "converged": clog.n_converged == clog.n_fits,
                            "total_evals": clog.n_evals,
                            "max_gap_bound_nats": clog.max_gap,
                        }
                    if log.n_converged < log.n_fits or clog.n_converged < clog.n_fits:
                        unconverged.append(f"{attr}@{stage}" + (" (control)" if log.n_converged == log.n_fits else ""))
                    advance(1)
                del basis

    @staticmethod
    def _stage_metrics(out, stage, attr, pl, p, pt, reps, ctrl_runs, w) -> None:
        n, ng = len(pl.enc.y), pl.groups.n_groups
        c = pl.chance[p["retention_chance"]]

        def m(name: str, value: float, rep: np.ndarray) -> Metric:
            lo, hi = _ci(rep) if ng >= 2 else (None, None)  # one group: nothing to resample
            return Metric(name, value, stage, attr, lo, hi, n, ng if lo is not None else None)

        out.metrics += [
            m(key, pt[key], reps[key])
            for key in (
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "cross_entropy_bits",
                "i_probe_bits",
                "i_probe_prior_bits",
            )
        ]
        out.metrics.append(m("retention_ratio", _retention(pt["accuracy"], c), _retention(reps["accuracy"], c)))
        for key in ("accuracy", "i_probe_bits"):
            out.replicates[(key, stage, attr)] = reps[key]
        if ctrl_runs:
            cpt, creps = heldout_replicates(pl.y_ctrl, len(pl.enc.classes), pl.h, ctrl_runs, w)
            out.metrics += [
                m("control_accuracy", cpt["accuracy"], creps["accuracy"]),
                m("control_i_probe_bits", cpt["i_probe_bits"], creps["i_probe_bits"]),
                m("selectivity", pt["accuracy"] - cpt["accuracy"], reps["accuracy"] - creps["accuracy"]),
            ]
            if pt["i_probe_bits"] <= cpt["i_probe_bits"]:
                out.notes.append(
                    f"{attr}@{stage}: I_probe {pt['i_probe_bits']:.3f} bits does not exceed its control "
                    f"task's {cpt['i_probe_bits']:.3f}: no evidence of information present"
                )

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
            out.summary["attributes"][attr] = {
                "classes": enc.classes,
                "n": int(len(enc.rows)),
                "n_classes": k,
                "dropped_classes": enc.dropped,
                "chance": 1.0 / k,
                "stages": {},
            }
            out.metrics.append(Metric("chance_uniform", 1.0 / k, None, attr, n=len(enc.y)))
            out.notes.append(d_over_n_note(attr, len(enc.y), {s: int(np.shape(ctx.reps[s])[1]) for s in stages}))
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
            advance = stack.enter_context(
                ctx.progress.task("probe (paper)", len(stages) * sum(len(sp) for _, sp in plan.values()))
            )
            for stage in stages:
                self._paper_stage(ctx, p, stage, plan, accs, pool, wd, mi, out, advance)
        for attr, (enc, _) in plan.items():
            out.metrics += attribute_level(attr, 1.0 / len(enc.classes), accs[attr])
        if plan:
            out.notes.append(
                "paper: each CI averages the row-bootstrap replicates of the 5 splits' test rows as if "
                "the splits were independent; the 80/20 splits overlap (they share rows), so the "
                "intervals understate the estimator's spread (kept as a reference number; the default "
                "protocol's CIs resample groups, science.md §8)"
            )
        return out

    def _paper_stage(self, ctx, p, stage, plan, accs, pool, wd, mi, out, advance) -> None:
        """The reference's probes of every attribute at one stage, into `out` and `accs`."""
        X = np.asarray(ctx.reps[stage], dtype=np.float32)  # a float32 store is read in place, not copied
        jobs = [(attr, tr, te) for attr, (_, splits) in plan.items() for tr, te in splits]
        fits = []
        fit = lambda j: paper_split(X, plan[j[0]][0].rows, plan[j[0]][0].y, j[1], j[2], wd, mi)  # noqa: E731
        for f in pool.map(fit, jobs) if pool is not None else map(fit, jobs):  # in submission order
            fits.append(f)
            advance(1)
        for attr, (enc, splits) in plan.items():
            k = len(enc.classes)
            chance = 1.0 / k
            per = [f for (a, _, _), f in zip(jobs, fits, strict=True) if a == attr]
            a = np.array([s["accuracy"] for s in per])
            f1 = np.array([s["f1_macro"] for s in per])
            ret = (a - chance) / (1 - chance)
            ce = np.array([s["nll_bits"].mean() for s in per])
            h = entropy_bits(prior(enc.y, k))
            # extra: CIs from resampling each split's test rows (the reference has none)
            reps = [
                bootstrap_classification(enc.y[te], s["pred"], s["nll_bits"], k, int(p["n_bootstrap"]), ctx.seed + i)
                for i, ((_, te), s) in enumerate(zip(splits, per, strict=True))
            ]
            acc_ci = percentile_ci(np.mean([r["accuracy"] for r in reps], axis=0))
            ce_rep = np.mean([r["cross_entropy_bits"] for r in reps], axis=0)
            n_test = per[0]["n_test"]
            out.metrics += [
                Metric("accuracy", float(a.mean()), stage, attr, *acc_ci, n_test),
                Metric("std_accuracy", float(a.std(ddof=1)), stage, attr),
                Metric("macro_f1", float(f1.mean()), stage, attr, n=n_test),
                Metric(
                    "retention_ratio",
                    float(ret.mean()),
                    stage,
                    attr,
                    _retention(acc_ci[0], chance),
                    _retention(acc_ci[1], chance),
                    n_test,
                ),
                Metric("cross_entropy_bits", float(ce.mean()), stage, attr, *percentile_ci(ce_rep), n_test),
                Metric("i_probe_bits", float(h - ce.mean()), stage, attr, *percentile_ci(h - ce_rep), n_test),
            ]
            accs[attr][stage] = float(a.mean())
            out.summary["attributes"][attr]["stages"][stage] = {
                "accuracies": a.tolist(),
                "f1_macro": f1.tolist(),
                "retention": ret.tolist(),
                "mean_accuracy": float(a.mean()),
                "std_accuracy": float(a.std(ddof=1)),
                "mean_retention": float(ret.mean()),
                "std_retention": float(ret.std(ddof=1)),
                "mean_f1": float(f1.mean()),
                "chance": chance,
                "n_classes": k,
                "n_train": per[0]["n_train"],
                "n_test": n_test,
                "n_iter": [s["n_iter"] for s in per],
                "converged": all(s["n_iter"] < int(p["max_iter"]) for s in per),
            }
