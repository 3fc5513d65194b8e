"""Penalised multinomial logistic regression, many fits at once (the probe's solver).

Each fit minimises mean CE over its training rows + lam/2 ||W||^2 over (W, b). The fits of one
probe share the rows of one design matrix Z, grouped in blocks (the outer folds); a fit trains
on whole blocks. They run in lockstep: each round makes, per block, one product over every fit
that trains on it, which reads Z once per round and keeps the product wide enough to run near
the machine's peak. Per fit: preconditioned L-BFGS (compact form, Armijo backtracking) as a
generator the driver batches, stopped at ||grad||^2 / (2 lam) <= tol, a bound in nats on the
objective's distance to its optimum. Results do not depend on the number of worker threads:
chunks are cut by block sizes alone and summed in chunk order. Details: docs/probe-solver.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

CHUNK_ROWS = 256  # rows per task: wide enough for near-peak products, enough tasks to share
LBFGS_MEMORY = 10  # curvature pairs kept per fit (stored in float32: they only shape the direction)
BATCH_BYTES = 160 << 20  # solver state of the fits in one lockstep batch (L-BFGS pairs dominate)
BATCH_SHARE = 0.3  # and at most this share of the design's rows' bytes, at least one fit (issue 17: the peak is
# the stage's coordinates, its vectors' bytes when N >= d, plus this state; 0.5 left too little for the rest at
# N = 10000). Batch sizes move each fit's result by rounding only (the products' widths differ)
BATCH_FLOOR = 8 << 20  # but never below this: a small design (the toy's 600 x 64) would otherwise run its fits one
# at a time (review: the toy's probe 1.5x slower), for memory that is small anyway
POOL_MIN_WORK = 1 << 25  # multiply-adds per round below which tasks run inline: handing them to
# threads costs more (same arithmetic either way: results do not change)
PLAIN_INTERCEPTS = False  # True: the solver before issue 18 (intercepts from 0, unscaled); the
# benchmark sets it to compare both procedures in one run


@dataclass
class SoftmaxFit:
    W: np.ndarray  # (r, k) weights in the design's coordinates and precision (zero for absent classes)
    b: np.ndarray  # (k,) intercepts (absent classes: masked out, -inf in use)
    present: np.ndarray  # (k,) bool: the classes in the fit's training rows
    n_evals: int
    grad_norm: float
    gap_bound: float  # ||grad||^2 / (2 lam): nats above the optimum, at most
    converged: bool


@dataclass
class Problem:
    """One fit: train on `blocks` of the design at `lam`, from `init` = (W, b) or zeros."""

    blocks: tuple[int, ...]
    lam: float
    tol: float
    init: tuple[np.ndarray, np.ndarray] | None = None


class Design:
    """The rows of Z (n, r) grouped by block: rows of block j are `Z[start[j]:stop[j]]` after
    a stable sort by `block`; `order` maps design rows to the caller's rows."""

    def __init__(
        self,
        Z: np.ndarray,
        block: np.ndarray,
        y: np.ndarray,
        k: int,
        rows: np.ndarray | None = None,
        ordered: bool = False,
    ) -> None:
        """Design row i is caller's row `order[i]`, i.e. `Z[rows[order[i]]]` (`rows`: the
        caller's rows of Z, default all); one copy of Z's rows is made, in design order, unless
        `ordered` says Z's leading rows already are those rows (then they are used in place).
        `y` (codes 0..k-1) and `block` are per caller row. A float64 finish reads these same
        values in float64: the problem solved is the one Z's values define."""
        block = np.asarray(block)
        self.n_blocks = int(block.max()) + 1
        self.order = np.argsort(block, kind="stable")
        if ordered:
            self.Z = Z[: len(block)]
            if not self.Z.flags.c_contiguous:
                raise ValueError("an ordered design needs C-contiguous rows")
        else:
            self.Z = np.ascontiguousarray(Z[self.order if rows is None else np.asarray(rows)[self.order]])
        self.y = np.asarray(y)[self.order]
        self.k = k
        sizes = np.bincount(block, minlength=self.n_blocks)
        self.stop = np.cumsum(sizes)
        self.start = self.stop - sizes
        # chunks: (block, lo, hi), cut by block sizes only (never by the number of threads)
        self.chunks: list[tuple[int, int, int]] = []
        for j in range(self.n_blocks):
            n_chunks = max(1, int(round(sizes[j] / CHUNK_ROWS)))
            cuts = np.linspace(self.start[j], self.stop[j], n_chunks + 1).round().astype(int)
            self.chunks += [(j, int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]
        self.colsq = [
            np.square(self.Z[lo:hi], dtype=np.float32).sum(0, dtype=np.float64)
            for lo, hi in zip(self.start, self.stop, strict=True)
        ]
        self.counts = [np.bincount(self.y[lo:hi], minlength=k) for lo, hi in zip(self.start, self.stop, strict=True)]

    @property
    def rank(self) -> int:
        return int(self.Z.shape[1])

    def rows(self, blocks: Sequence[int]) -> int:
        return int(sum(self.stop[j] - self.start[j] for j in blocks))

    def present(self, blocks: Sequence[int]) -> np.ndarray:
        return sum(self.counts[j] for j in blocks) > 0


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # a ufunc, not BLAS: on a loaded machine a threaded BLAS call waits for a time slice
    return float(np.multiply(a, b, dtype=np.float64).sum())


class _Pairs:
    """The last `memory` curvature pairs (s, y) of L-BFGS in compact form (Byrd, Nocedal and
    Schnabel 1994): H g = gamma g + S a - gamma Y w with w = R^-1 S^T g and
    a = R^-T ((D + gamma Y^T Y) w - gamma Y^T g), R the upper triangle of S^T Y and D its
    diagonal. The same direction as the two-loop recursion, from a few matrix-vector
    products over one (2 memory, n) float32 buffer instead of 4 memory vector passes."""

    def __init__(self, n: int, memory: int) -> None:
        self.m = memory
        self.buf = np.zeros((2 * memory, n), dtype=np.float32)  # rows: s in [0, m), y in [m, 2m)
        self.clear()

    def clear(self) -> None:
        self.slots: list[int] = []  # physical rows, oldest pair first
        self.SY = np.zeros((0, 0))  # s_i^T y_j over the kept pairs, in order
        self.YY = np.zeros((0, 0))
        self._index()

    def _index(self) -> None:
        # what every direction reads, updated once per push (small-problem steps are overhead-bound)
        self.s_rows = np.array(self.slots, dtype=np.intp)
        self.y_rows = self.s_rows + self.m
        self.D = np.diag(self.SY).copy()

    def push(self, s: np.ndarray, y: np.ndarray, sy: float, yy: float) -> None:
        if len(self.slots) == self.m:
            phys = self.slots.pop(0)
            self.SY, self.YY = self.SY[1:, 1:], self.YY[1:, 1:]
        else:
            phys = len(self.slots)
        m, sl = self.m, self.slots
        y32, s32 = y.astype(np.float32), s.astype(np.float32)
        by = self.buf @ y32  # s_i^T y and y_i^T y
        sY = self.buf[m:] @ s32  # s^T y_i
        c = len(sl)
        rows = np.array(sl, dtype=np.intp)
        SY, YY = np.zeros((c + 1, c + 1)), np.zeros((c + 1, c + 1))
        SY[:c, :c], YY[:c, :c] = self.SY, self.YY
        SY[:c, c], SY[c, :c], SY[c, c] = by[rows], sY[rows], sy
        YY[:c, c] = YY[c, :c] = by[rows + m]
        YY[c, c] = yy
        self.buf[phys], self.buf[m + phys] = s32, y32
        self.SY, self.YY = SY, YY
        sl.append(phys)
        self._index()

    def direction(self, g: np.ndarray) -> np.ndarray:
        """H g."""
        if not self.slots:
            return g / max(np.sqrt(_dot(g, g)), 1.0)
        pq = (self.buf @ g.astype(np.float32)).astype(np.float64)
        p, q = pq[self.s_rows], pq[self.y_rows]
        gamma = self.SY[-1, -1] / self.YY[-1, -1]
        w = _upper_solve(self.SY, p, 0)  # R = the upper triangle of S^T Y
        a = _upper_solve(self.SY, self.D * w + gamma * (self.YY @ w) - gamma * q, 1)
        coef = np.zeros(2 * self.m, dtype=np.float32)
        coef[self.s_rows], coef[self.y_rows] = a, -gamma * w
        return gamma * g + coef @ self.buf


def _upper_solve(R: np.ndarray, b: np.ndarray, trans: int) -> np.ndarray:
    """R^-1 b (trans 0) or R^-T b (trans 1) for the upper triangle of the C-ordered `R` (the
    lower one is never read): the LAPACK call scipy's solve_triangular makes for a C-ordered
    matrix (trtrs on the Fortran view R^T, lower, the transpose flag flipped: the same
    arithmetic), without its per-call validation (two calls per L-BFGS step: on small probes
    that validation was a fifth of the solver's time)."""
    from scipy.linalg.lapack import dtrtrs

    x, info = dtrtrs(np.ascontiguousarray(R).T, b, lower=1, trans=1 - trans)
    if info != 0:
        raise np.linalg.LinAlgError(f"singular curvature matrix (trtrs info {info})")
    return x


Step = Generator[np.ndarray, tuple[float, np.ndarray, float], tuple[np.ndarray, int, int, float]]


def lbfgs_steps(x: np.ndarray, target: float, max_iter: int, memory: int = LBFGS_MEMORY) -> Step:
    """L-BFGS (compact form, Armijo backtracking with quadratic interpolation) as a generator:
    it yields each point to evaluate and is sent back (f, gradient, the norm the stopping
    rule reads). Stops at norm <= target, after `max_iter` iterations, or when a line search
    cannot decrease f (rounding); returns (x, iterations, evaluations, norm)."""
    f, g, gn = yield x
    evals, it = 1, 0
    pairs = _Pairs(len(x), memory)
    while gn > target and it < max_iter:
        d = -pairs.direction(g)
        slope = _dot(g, d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            pairs.clear()
            d, slope = -g, -_dot(g, g)
        t = 1.0
        while True:
            xn = x + t * d
            fn, gn_vec, gnn = yield xn
            evals += 1
            if fn <= f + 1e-4 * t * slope:
                break
            denom = 2.0 * (fn - f - slope * t)
            t = float(np.clip(-slope * t * t / denom, 0.1 * t, 0.5 * t)) if denom > 0 else 0.5 * t
            if t < 1e-10:
                return x, it, evals, gn  # no decrease left at this precision
        s_, y_ = xn - x, gn_vec - g
        sy, yy = _dot(s_, y_), _dot(y_, y_)
        if sy > 1e-12 * yy:
            pairs.push(s_, y_, sy, yy)
        del s_, y_  # stored in float32 by the pairs: not held through the next evaluation (issue 17)
        x, f, g, gn = xn, fn, gn_vec, gnn
        it += 1
    return x, it, evals, gn


IN_FLIGHT = 8  # chunk tasks submitted ahead of the one being summed (issue 17: their products are the memory)


def _imap(pool: Any, fn: Callable, items: Iterable) -> Iterator:
    """fn over `items`, results in order, at most IN_FLIGHT tasks ahead of the consumer (on `pool`)."""
    it = iter(items)
    if pool is None:
        yield from map(fn, it)
    ahead = deque(pool.submit(fn, i) for i in islice(it, IN_FLIGHT)) if pool is not None else ()
    while ahead:
        res = ahead.popleft().result()
        ahead.extend(pool.submit(fn, i) for i in islice(it, 1))
        yield res


def _masked(b: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Intercepts with -inf for the classes a fit never saw (probability 0, no gradient)."""
    return b + np.where(present, 0.0, -np.inf)


def _worth(pool: Any, design: Design, n_fits: int) -> Any:
    """`pool` when a round over `n_fits` fits is big enough to share out, else None."""
    return pool if design.Z.shape[0] * design.rank * design.k * n_fits >= POOL_MIN_WORK else None


def _chunk_products(
    design: Design, dtype: Any, users: list[list[int]], Ws: list[np.ndarray], bias: np.ndarray, stats: bool
) -> Callable[[int], tuple]:
    """The task for chunk c: logits of every fit training on the chunk's block, their loss
    sums, the softmax residuals' products (gradient parts) and, with `stats`, the sums of P
    and P^T P (the preconditioner's Hessian)."""
    k = design.k

    def task(c: int) -> tuple | None:
        j, lo, hi = design.chunks[c]
        u = users[j]
        if not u:
            return None
        m, n_u = hi - lo, len(u)
        yc = design.y[lo:hi]
        Zc = design.Z[lo:hi].astype(dtype, copy=False)  # a float64 finish widens one chunk, not the stage
        A = (Zc @ Ws[j]).reshape(m, n_u, k)
        A += bias[u]
        pick = (np.arange(m)[:, None], np.arange(n_u)[None, :], yc[:, None])
        true = A[pick].astype(np.float64)
        mx = A.max(2, keepdims=True)
        A -= mx
        np.exp(A, out=A)
        s = A.sum(2, keepdims=True)
        loss = (np.log(s[..., 0].astype(np.float64)) + mx[..., 0] - true).sum(0)
        A /= s
        extra = None
        if stats:
            extra = (A.sum(0, dtype=np.float64), np.einsum("mui,muj->uij", A, A, dtype=np.float64))
        A[pick] -= 1  # P - Y
        gb = A.sum(0, dtype=np.float64)
        GT = A.reshape(m, n_u * k).T @ Zc  # (n_u k, r): each fit's rows contiguous
        return loss, gb, GT, extra

    return task


class _Fit:
    """One fit's state in a lockstep batch."""

    def __init__(self, design: Design, p: Problem, max_iter: int) -> None:
        self.p = p
        self.present = design.present(p.blocks)
        self.n = design.rows(p.blocks)
        self.max_iter = max_iter
        r, k = design.rank, design.k
        if p.init is not None:
            W0, b0 = p.init
        else:  # W = 0 with the intercepts at their optimum there: the training rows' log prior
            counts = sum(design.counts[j] for j in p.blocks)
            W0 = np.zeros((r, k))
            b0 = np.zeros(k) if PLAIN_INTERCEPTS else np.log(np.maximum(counts, 1) / max(counts.sum(), 1))
        self.W, self.b = np.asarray(W0, dtype=np.float64), np.asarray(b0, dtype=np.float64).copy()
        self.b[~self.present] = 0.0
        self.dtype: Any = design.Z.dtype
        self.iters = self.evals = 0
        self.gen: Step | None = None
        self.result: SoftmaxFit | None = None
        self.target = float(np.sqrt(2.0 * p.lam * p.tol))

    def _value(self, design: Design, sums: _Sums) -> tuple[float, np.ndarray, np.ndarray]:
        """Objective and gradient in (W, b) from the chunk results' sums (in chunk order)."""
        lam = self.p.lam
        f = sums.loss / self.n + 0.5 * lam * _dot(self.W, self.W)
        gW = sums.gT.T.astype(np.float64)
        gW /= self.n
        gW += lam * self.W
        return f, gW, sums.gb / self.n

    def start(self, design: Design, sums: _Sums) -> None:
        """From the evaluation at the initial point (with P statistics): the preconditioner,
        then the first step."""
        n = self.n
        psum, ptp = sums.psum, sums.ptp
        Hc = np.diag(psum / n) - ptp / n  # mean softmax Hessian over classes
        L, self.Q = np.linalg.eigh(Hc)
        colsq = sum(design.colsq[j] for j in self.p.blocks)
        self.Sc = 1.0 / np.sqrt(colsq[:, None] * np.clip(L, 0, None)[None, :] / n + self.p.lam)
        # the intercepts in the same class directions, scaled to unit curvature there (b = Q (Sb v)):
        # unscaled, a rare class's intercept (curvature ~ its rate) took most of the iterations of
        # imbalanced probes. Sb = 0 on the directions without curvature: the constant shift of all
        # intercepts (softmax ignores it) and absent classes; a curvature below 1e-6 of the largest
        # is scaled as that floor (such a direction still moves, no faster than the rest)
        top = max(float(L.max()), 1e-300)
        self.Sb = np.where(L > 1e-12 * top, 1.0 / np.sqrt(np.maximum(L, 1e-6 * top)), 0.0)
        if PLAIN_INTERCEPTS:
            self.Sb = None
        x0 = np.concatenate([((self.W @ self.Q) / self.Sc).ravel(), self._b_coords(self.b)])
        self.gen = lbfgs_steps(x0, self.target, self.max_iter)
        next(self.gen)
        self.advance(design, sums)

    def advance(self, design: Design, sums: _Sums) -> None:
        """Send the evaluation at the pending point; take the next point, or finish."""
        f, gW, gb = self._value(design, sums)
        gn = float(np.sqrt(_dot(gW, gW) + _dot(gb, gb)))
        g = np.concatenate([((gW @ self.Q) * self.Sc).ravel(), gb if self.Sb is None else (gb @ self.Q) * self.Sb])
        try:
            x = self.gen.send((f, g, gn))
        except StopIteration as stop:
            x, it, ev, gn = stop.value
            self._set(x)
            self.iters, self.evals = self.iters + it, self.evals + ev
            if gn > self.target and self.iters < self.max_iter and self.dtype != np.float64:
                self.dtype = np.float64  # float32 rounding stopped the line search: finish in float64
                self.gen = lbfgs_steps(x, self.target, self.max_iter - self.iters)
                next(self.gen)
                return
            self.gen = None
            # W in the design's precision (issue 17: float32 for the probe's stage, half the walk's state):
            # every product that reads it (held-out log-probabilities) reads it so; elsewhere it is a start
            W = self.W.astype(design.Z.dtype, copy=False)
            self.result = SoftmaxFit(
                W, self.b, self.present, self.evals, gn, gn * gn / (2 * self.p.lam), gn <= self.target
            )
            return
        self._set(x)

    def _set(self, x: np.ndarray) -> None:
        r, k = self.Sc.shape
        self.W = (self.Sc * x[: r * k].reshape(r, k)) @ self.Q.T
        self.b = x[r * k :].copy() if self.Sb is None else self.Q @ (self.Sb * x[r * k :])

    def _b_coords(self, b: np.ndarray) -> np.ndarray:
        """The solver's coordinates v of intercepts b = Q (Sb v) (0 where Sb is)."""
        if self.Sb is None:
            return b.copy()
        return np.divide(b @ self.Q, self.Sb, out=np.zeros_like(b), where=self.Sb > 0)


class _Sums:
    """One fit's chunk results summed in chunk order (the order alone fixes the rounding, whatever
    the threads): loss, intercept and weight gradients, and with statistics the sums of P, P^T P."""

    def __init__(self, k: int) -> None:
        self.loss, self.gb, self.gT, self.psum, self.ptp = 0.0, np.zeros(k), None, 0, 0

    def add(self, out: tuple, slot: int, k: int) -> None:
        l_, gb_, GT, extra = out
        self.loss += l_[slot]
        self.gb += gb_[slot]
        part = GT[slot * k : (slot + 1) * k]  # (k, r), contiguous; summed on Z's dtype, as one product would be
        self.gT = part.copy() if self.gT is None else np.add(self.gT, part, out=self.gT)
        if extra is not None:
            self.psum, self.ptp = self.psum + extra[0][slot], self.ptp + extra[1][slot]


def _evaluate(design: Design, fits: list[_Fit], pool: Any, stats: bool) -> list[_Sums]:
    """One round: the products of every chunk for `fits` (all of one dtype), each summed into
    its fits' sums as it comes (issue 17: a round's products are not all held at once)."""
    dtype = fits[0].dtype  # per block: the fits that train on it and their weights side by side (its one product)
    users = [[i for i, f in enumerate(fits) if j in f.p.blocks] for j in range(design.n_blocks)]
    Ws = [np.concatenate([fits[i].W for i in u], axis=1).astype(dtype) if u else None for u in users]
    bias = np.stack([_masked(f.b, f.present) for f in fits]).astype(dtype)
    sums = [_Sums(design.k) for _ in fits]
    task = _chunk_products(design, dtype, users, Ws, bias, stats)
    for c, out in enumerate(_imap(pool, task, range(len(design.chunks)))):
        for slot, i in enumerate(users[design.chunks[c][0]] if out is not None else ()):
            sums[i].add(out, slot, design.k)
    return sums


def fit_many(design: Design, problems: Sequence[Problem], max_iter: int, pool: Any = None) -> list[SoftmaxFit]:
    """Fit every problem to its certified bound (or `max_iter` iterations), in lockstep
    batches that keep the solver state under BATCH_BYTES and BATCH_SHARE of the design's
    rows; `pool` runs the chunk tasks on worker threads (callers hold BLAS at one thread)."""
    # float32 pairs, ~12 float64 vectors (x, g, d, W, Sc, ... and a step's temporaries) and the
    # round's stacked weights and chunk products: ~200 bytes per variable measured at 50 classes
    per_fit = design.rank * design.k * (8 * LBFGS_MEMORY + 120)
    budget = min(BATCH_BYTES, max(BATCH_FLOOR, int(BATCH_SHARE * design.Z.nbytes)))
    size = max(1, budget // max(per_fit, 1))
    out: list[SoftmaxFit] = []
    for lo in range(0, len(problems), size):
        out += _fit_batch(design, problems[lo : lo + size], max_iter, pool)
    return out


def fit_one(
    Z: np.ndarray,
    y: np.ndarray,
    k: int,
    lam: float,
    init: tuple | None = None,
    tol: float = 1e-5,
    max_iter: int = 10000,
) -> SoftmaxFit:
    """One fit on all rows of `Z` (codes y in 0..k-1); `init` = (W, b)."""
    return fit_many(Design(Z, np.zeros(len(y), dtype=int), y, k), [Problem((0,), lam, tol, init)], max_iter)[0]


def _fit_batch(design: Design, problems: Sequence[Problem], max_iter: int, pool: Any) -> list[SoftmaxFit]:
    fits = [_Fit(design, p, max_iter) for p in problems]
    pool = _worth(pool, design, len(fits))
    sums = _evaluate(design, fits, pool, stats=True)
    # the fits' steps (~1% of a round's work at N = 2620) run on this thread, so their state lives in one malloc
    # arena; on the workers each one's arena kept its fits' freed state (issue 17: 112 against 79 MiB at N = 2620)
    for f, s in zip(fits, sums, strict=True):
        f.start(design, s)
    while True:
        pending = [f for f in fits if f.result is None]
        if not pending:
            break
        for dtype in sorted({f.dtype for f in pending}, key=str):  # float32 first, float64 finishes apart
            group = [f for f in pending if f.dtype == dtype]
            sums = None  # the last round's sums go before this round's are made
            sums = _evaluate(design, group, pool, stats=False)
            for f, s in zip(group, sums, strict=True):
                f.advance(design, s)
    return [f.result for f in fits]


def heldout_logp(
    design: Design, fits: Sequence[SoftmaxFit], blocks: Sequence[Sequence[int]], pool: Any = None
) -> list[dict[int, np.ndarray]]:
    """Log-probabilities (float64, absent classes -inf) of each fit on the rows of its
    `blocks`: per fit, {block: (rows of the block, k)}."""
    k, nb = design.k, design.n_blocks
    users = [[i for i, b in enumerate(blocks) if j in b] for j in range(nb)]
    bias = np.stack([_masked(f.b, f.present) for f in fits])
    # each fit's rows of each block, written in place by the chunk tasks (disjoint rows: no order to keep)
    size = design.stop - design.start
    out = [{j: np.empty((size[j], k)) for j in range(nb) if i in users[j]} for i in range(len(fits))]
    Ws: dict[int, np.ndarray] = {}  # a block's users' weights side by side, from its first chunk to its last only
    last = {j: c for c, (j, _, _) in enumerate(design.chunks)}  # (issue 17: 30 fits' stacks were the peak)

    def handed_out() -> Iterator[int]:
        for c, (j, _, _) in enumerate(design.chunks):
            if users[j] and j not in Ws:
                Ws[j] = np.concatenate([fits[i].W for i in users[j]], axis=1).astype(design.Z.dtype)
            yield c

    def task(c: int) -> int:
        j, lo, hi = design.chunks[c]
        if users[j]:
            A = (design.Z[lo:hi] @ Ws[j]).astype(np.float64).reshape(hi - lo, len(users[j]), k)
            A += bias[users[j]]
            A -= A.max(2, keepdims=True)
            A -= np.log(np.exp(A).sum(2, keepdims=True))
            for slot, i in enumerate(users[j]):
                out[i][j][lo - design.start[j] : hi - design.start[j]] = A[:, slot]
        return c

    for c in _imap(_worth(pool, design, len(fits)), task, handed_out()):
        if last[design.chunks[c][0]] == c:
            Ws.pop(design.chunks[c][0], None)
    return out
