"""The default probe's machinery (science.md §1): the stage basis, the nested-CV walk over the
lam grid, the held-out scores with their group-bootstrap replicates, and the control task.
Why it is computed this way: docs/probe-solver.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import eigh
from scipy.linalg.blas import ssyrk

from mch.api import MchError

from ._linalg import one_blas_thread
from ._probe_select import fold_sums, select
from ._softmax import Design, Problem, SoftmaxFit, fit_many, heldout_logp
from ._stats import LN2, Folds, confusion, permute_labels_by_group, scores_from_confusion, scores_from_counts


@dataclass
class Basis:
    """A stage's vectors z-scored over the run's samples, in principal-axis coordinates
    (computed and kept in float32: the vectors' own precision)."""

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


RANK_TOL = 8 * float(np.finfo(np.float32).eps)  # an axis's variance / the largest below which it is rounding
BASIS_ROWS = 512  # rows z-scored at a time: the basis's memory is O(block d) besides its own arrays
MOMENT_ROWS = 128  # rows taken to float64 at a time for the moments (two such copies live)


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and (ddof 0) standard deviation of the rows of X, in float64, in row blocks.
    Each sum runs row by row in row order (the running sum leads each block's reduction), as
    numpy's axis-0 sums of the whole array do: the same values, without its float64 copy."""
    n, d = X.shape
    s = np.zeros(d)
    for lo in range(0, n, MOMENT_ROWS):
        s = np.add.reduce(np.vstack([s[None], np.asarray(X[lo : lo + MOMENT_ROWS], dtype=np.float64)]), axis=0)
    mu = s / n
    q = np.zeros(d)
    for lo in range(0, n, MOMENT_ROWS):
        dev = np.asarray(X[lo : lo + MOMENT_ROWS], dtype=np.float64) - mu
        q = np.add.reduce(np.vstack([q[None], np.multiply(dev, dev, out=dev)]), axis=0)
    return mu, np.sqrt(q / n)


def _eigh(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric `A` (Fortran order, lower triangle read), ascending,
    overwriting it: LAPACK's MRRR driver (syevr) needs O(n) workspace besides the eigenvectors,
    where numpy's divide and conquer (syevd) holds a copy of A and 2 n^2 of workspace. In A's
    own precision: float32 for the basis (see _stage_basis)."""
    return eigh(A, lower=True, overwrite_a=True, check_finite=False, driver="evr")


def _first_kept(w: np.ndarray, rel: float) -> int:
    """The first kept axis of ascending eigenvalues `w` (nonzero variance: above rel x the
    largest): the kept axes are a tail, so they are a view, not a copy."""
    keep = w > max(w[-1], 0) * rel
    return int(np.argmax(keep)) if keep.any() else len(w)


def _reverse_columns(A: np.ndarray, block: int = 64) -> None:
    """A's columns in reverse order, in place (numpy's overlapping A[:] = A[:, ::-1] copies A)."""
    r = A.shape[1]
    for lo in range(0, r // 2, block):
        hi = min(lo + block, r // 2)
        left = A[:, lo:hi].copy()
        A[:, lo:hi] = A[:, r - hi : r - lo][:, ::-1]
        A[:, r - hi : r - lo] = left[:, ::-1]


def _stage_basis(X: np.ndarray) -> Basis:
    """Float32 throughout (the vectors' precision): the Gram or covariance is a float32
    product, so its entries already carry float32 rounding, O(eps32 |G|); a float32
    eigendecomposition adds error of that same order, and halves the n x n pair that a float64
    one holds (issue 17: at N = 2620, d = 4096 that pair alone was 2.6x the stage's vectors).
    Axes kept: variance above RANK_TOL of the largest. Below that a float32 eigenvalue is
    rounding, not variance: on rank-deficient stages the null axes come out at up to ~1.2 eps32
    of the largest (measured, N 600-3000, D 64-4096), so the float64 route's 1e-10 kept them
    and the record's `rank` counted them (the toy's adapter: 49 for its true 32)."""
    n, d = X.shape
    mu, sd = _moments(X)
    sd[sd == 0] = 1.0  # StandardScaler's rule for a constant feature
    mu32, sd32 = mu.astype(np.float32), sd.astype(np.float32)

    def zscored(lo: int, hi: int) -> np.ndarray:  # float32 (x - mu) / sd, the caller's X untouched
        b = np.subtract(np.asarray(X[lo:hi], dtype=np.float32), mu32)
        return np.divide(b, sd32, out=b)

    if d <= n:
        C = np.zeros((d, d), dtype=np.float32, order="F")
        for lo in range(0, n, BASIS_ROWS):
            b = zscored(lo, min(lo + BASIS_ROWS, n))
            C = ssyrk(1.0, b.T, beta=1.0, c=C, lower=1, overwrite_c=1)  # lower of C += b^T b, in place
        w, V = _eigh(C)
        del C
        V = V[:, _first_kept(w, RANK_TOL) :]  # a view (Fortran order: still contiguous)
        _reverse_columns(V)
        Z = np.empty((n, V.shape[1]), dtype=np.float32)
        for lo in range(0, n, BASIS_ROWS):
            hi = min(lo + BASIS_ROWS, n)
            np.matmul(zscored(lo, hi), V, out=Z[lo:hi])
        return Basis(Z, d, V.shape[1])
    # N < d: the N x N Gram of the z-scored rows, its lower triangle block by block (no z-scored
    # copy of the stage: a row block is z-scored again for each block it meets)
    G = np.empty((n, n), dtype=np.float32, order="F")
    for lo in range(0, n, BASIS_ROWS):
        hi = min(lo + BASIS_ROWS, n)
        zj = zscored(lo, hi)
        for lo2 in range(lo, n, BASIS_ROWS):
            hi2 = min(lo2 + BASIS_ROWS, n)
            G[lo2:hi2, lo:hi] = (zj if lo2 == lo else zscored(lo2, hi2)) @ zj.T
        del zj
    w, U = _eigh(G)
    del G
    first = _first_kept(w, RANK_TOL)
    U = U[:, first:]  # a view
    _reverse_columns(U)
    U *= np.sqrt(w[first:][::-1])
    Z = np.empty(U.shape, dtype=np.float32)  # C order (the designs read row blocks); U goes after
    for lo in range(0, n, BASIS_ROWS):
        Z[lo : lo + BASIS_ROWS] = U[lo : lo + BASIS_ROWS]
    return Basis(Z, d, Z.shape[1])


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
CONTROL_START_TOL = 3e-2  # bound of the control task's all-rows starting fit (only a starting point: measured
# on LibriSpeech-shaped vectors, 3e-2 left the fold fits' evaluations as at 1e-3 and cut the start's by
# two thirds; 1e-1 and 1 made the fold fits slower, a start per chosen lam or at 1e-4 cost more)
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
    select_tol: float | None = None,
) -> tuple[np.ndarray, list[float], list[list[tuple[float, float, float]]]]:
    """Held-out log-probabilities (n, k) of every row (in the design's row order) from its
    outer fold's model, the lam each outer fold chose, and each fold's inner CV curve
    [(lam, CE nats, the bound in nats its fits were solved to: `inner_tol` for the walk's points,
    tighter for those the selection re-solved)]. The design's blocks are the outer folds.

    The walk solves the inner fits to `inner_tol`; each fold's choice is then settled on fits
    re-solved to `select_tol` (None: no re-solve) at the walk's best lam and its grid
    neighbours (`_probe_select.select`). The fits of one lam step (and the outer fits) run in one lockstep
    batch; with `pool` its tasks run on worker threads (callers hold BLAS at one thread), and
    every fit's arithmetic, and the result, is the same whatever the number of workers."""
    F, k = design.n_blocks, design.k
    pairs = [p for p in inner_pairs(F, inner_folds) if design.present([j for j in range(F) if j not in p]).sum() >= 2]
    warm: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    last: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}
    kept: dict[tuple[int, int], dict[int, SoftmaxFit]] = {p: {} for p in pairs}  # grid index -> walk fit
    best = [np.inf] * F
    best_i = [0] * F
    stale = [0] * F
    active = [True] * F
    curves: list[list[tuple[float, float, float]]] = [[] for _ in range(F)]

    for i, lam in enumerate(grid):
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
        nll, cnt = fold_sums(design, jobs, fits, logps, lambda o: active[o])
        for p, fit in zip(jobs, fits, strict=True):
            log.add(fit)
            warm[p] = _next_start(fit, lam, last.get(p), grid)  # in the fit's (the design's) precision
            last[p] = (fit.W, fit.b, lam)
            kept[p][i] = fit
        del fits, logps  # the walk's state is what it keeps below, not this step's fits (issue 17)
        for o in range(F):
            if not active[o] or cnt[o] == 0:
                continue
            ce = nll[o] / cnt[o]
            curves[o].append((lam, float(ce), inner_tol or tol))
            if ce < best[o]:
                best[o], best_i[o], stale[o] = ce, i, 0
            else:
                stale[o] += 1
                if stale[o] >= patience:
                    active[o] = False
        for p in jobs:  # keep only what the selection step may start from: each fold's best and its neighbours
            kept[p] = {j: f for j, f in kept[p].items() if any(abs(j - best_i[o]) <= 1 for o in p)}

    warm.clear()
    last.clear()
    tight = (
        select(design, grid, pairs, kept, best_i, curves, inner_tol or tol, select_tol, max_iter, log, pool)
        if select_tol
        else None
    )
    best_init: list[tuple[np.ndarray, np.ndarray] | None] = []
    for o in range(F):  # the outer fit starts from the mean of its inner fits at the chosen lam
        fs = [(tight or kept)[p].get(best_i[o]) for p in pairs if o in p]
        fs = [f for f in fs if f is not None]
        if not fs:
            best_init.append(None)
            continue
        c = np.maximum(sum(f.present.astype(float) for f in fs), 1)
        best_init.append((sum(f.W for f in fs) / c, sum(np.where(f.present, f.b, 0.0) for f in fs) / c))
    best_lam = [grid[i] for i in best_i]
    del tight, kept  # the outer fits need only their starts

    outer = fit_many(
        design,
        [Problem(tuple(j for j in range(F) if j != o), best_lam[o], tol, best_init[o]) for o in range(F)],
        max_iter,
        pool,
    )
    logp = np.full((len(design.y), k), np.nan)
    for o, (fit, lp) in enumerate(zip(outer, heldout_logp(design, outer, [(o,) for o in range(F)], pool), strict=True)):
        log.add(fit)
        logp[design.start[o] : design.stop[o]] = lp[o]
    return logp, best_lam, curves


def row_order(logp_d: np.ndarray, design: Design) -> np.ndarray:
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


def resample_counts(groups: Any, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared resamples' draw counts of the groups these rows belong to, (B, G) in one
    byte each while they fit, and each row's column: B x G small integers where
    (B, n) float64 row weights were (issue 17: 80 MiB per attribute at n = 10000)."""
    present, cols = np.unique(groups.codes, return_inverse=True)
    return groups.resamples(n_boot, present).counts, cols


def resampled_sums(counts: np.ndarray, cols: np.ndarray, M: np.ndarray, chunk: int = 128) -> np.ndarray:
    """(B, m) = W @ M for row weights W[b, i] = counts[b, cols[i]], without W: M summed per
    group, then the counts (in blocks of `chunk` resamples) times those sums."""
    order = np.argsort(cols, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(cols[order]) != 0])
    gs = np.zeros((counts.shape[1], M.shape[1]))
    gs[cols[order][starts]] = np.add.reduceat(M[order], starts, axis=0)
    out = np.empty((len(counts), M.shape[1]))
    for lo in range(0, len(counts), chunk):
        out[lo : lo + chunk] = counts[lo : lo + chunk].astype(np.float64) @ gs
    return out


def heldout_replicates(
    y: np.ndarray, k: int, h_bits: float, runs: list[dict[str, np.ndarray]], resamples: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point values and group-bootstrap replicates of the held-out scores.

    `runs` holds one grouped CV per seed (`logp` (n, k), `null` (n,) bits); the point value is
    the mean over seeds, and replicate b reads seed b mod R, so the seeds' spread enters the CI.
    `resamples`: `resample_counts` of the rows' groups (the shared group resamples). i_probe_bits = CE_null - CE
    (V-information); i_probe_prior_bits = H(Y) - CE (the prior's entropy held fixed)."""
    counts, cols = resamples
    R, B = len(runs), counts.shape[0]
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
        S = resampled_sums(counts if R == 1 else counts[sel], cols, M)
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
