"""The default probe's lam selection on re-solved fits (docs/probe-solver.md): the walk's
best lam per outer fold and its grid neighbours solved ever more tightly until the choice is
settled. Split from `_probe_cv` (module size)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._softmax import Design, Problem, SoftmaxFit, fit_many, heldout_logp


def fold_sums(
    design: Design, jobs: list[tuple[int, int]], fits: list[SoftmaxFit], logps: list[dict[int, np.ndarray]], want: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Each outer fold o's held-out NLL sum and row count over the pairs' fits that validate it
    (pair (i, j)'s fit serves i on j and j on i), for the folds `want(o)` accepts; in pair order,
    so the sums do not depend on scheduling."""
    F = design.n_blocks
    nll, cnt = np.zeros(F), np.zeros(F)
    for p, fit, lp in zip(jobs, fits, logps, strict=True):
        for o, (part, m) in pair_parts(design, p, fit, lp).items():
            if want(o):
                nll[o] -= part
                cnt[o] += m
    return nll, cnt


def pair_parts(
    design: Design, p: tuple[int, int], fit: SoftmaxFit, lp: dict[int, np.ndarray]
) -> dict[int, tuple[float, int]]:
    """Pair p's fit's held-out NLL sum and row count for each outer fold it validates (i on j,
    j on i): all that the curves read of its held-out log-probabilities."""
    y, out = design.y, {}
    for o, v in ((p[0], p[1]), (p[1], p[0])):
        yv = y[design.start[v] : design.stop[v]]
        seen = fit.present[yv]  # rows of a class this fit never saw carry no lam signal
        out[o] = (float(lp[v][np.flatnonzero(seen), yv[seen]].sum()), int(seen.sum()))
    return out


SELECT_STEP = 10.0  # each level of the selection solves its fits to the previous level's bound / SELECT_STEP
SETTLE_MOVE = 10.0  # best first: a neighbour is set aside unsolved when its gap over the re-solved best exceeds
# this many times the best's move from the walk (scaled by lam_best / lam_j for a smaller lam, whose fits move
# more). On the benchmark vectors a neighbour moved at most 5.6x the best's move, scaled 1.8x (speaker, llm.16)
SETTLE_FLOOR = 1e-3  # nats: and never a gap below this (a best that hardly moved says little about its neighbours)
SETTLE = 2.0  # a gap must exceed twice its last move to rule a lam out (1 let a toy near-tie through at inner_tol 1e-5)


def _best(c: dict[int, float]) -> int:
    """The grid index of the lowest CE in `c` (the smaller lam on a tie)."""
    return min(c, key=lambda j: (c[j], j))


def _settled(c: dict[int, float], prev: dict[int, float], j: int, b: int) -> bool:
    """lam j ruled out against the best b for good: its gap is positive at this level and the one
    before, and more than SETTLE times what it moved between them."""
    if j not in c or j not in prev or b not in prev:
        return False
    gap, before = c[j] - c[b], prev[j] - prev[b]
    return gap > 0 and before > 0 and gap > SETTLE * abs(gap - before)


def select(
    design: Design,
    grid: tuple[float, ...],
    pairs: list[tuple[int, int]],
    kept: dict[tuple[int, int], dict[int, SoftmaxFit]],
    best_i: list[int],
    curves: list[list[tuple[float, float, float]]],
    inner_tol: float,
    select_tol: float,
    max_iter: int,
    log: Any,
    pool: Any,
) -> dict[tuple[int, int], dict[int, SoftmaxFit]]:
    """Settle each fold's lam on inner CV curves of fits solved ever more tightly: at each level
    (bounds inner_tol / 10, / 100, ... down to `select_tol`) the fold's best lam and its grid
    neighbours are re-solved (warm from the previous level's fits; the best first, and a
    neighbour whose gap over the re-solved best exceeds SETTLE_MOVE times the best's move from
    the walk, scaled up for a smaller lam, and SETTLE_FLOOR, is ruled out unsolved at that level), and
    while the argmin sits on the edge of what was solved, the next grid lam past that edge is
    added. A lam is ruled out (re-solved no more) once its CE gap over the best is positive at
    two successive levels and larger than it moved between them: if each 10x tighter bound at
    least halves what the gap has left to move, its sign is then final. A fold is settled when
    only its best is left, else it goes on, and at `select_tol` its argmin is taken; before
    either, the best's grid neighbours that best first ruled out unsolved are re-solved at that
    level, and one that beats the best moves the search there, so the rule only orders the work:
    the choice is a lam whose neighbours were all solved at its fold's last level (then beaten
    or ruled out as above), whatever SETTLE_MOVE is. Updates `best_i` and `curves` in place
    (the tightest points, with the bound they were solved to, replace the walk's); returns
    each pair's most tightly solved fits.

    Why: the walk's inner bound leaves each point's held-out CE uncertain where the fits are
    nearly separable, and a near-tie between neighbours can then pick a too-small lam, which
    the control task (nearly interpolated there) magnifies (docs/probe-solver.md)."""
    F, n = design.n_blocks, len(grid)
    mine = [[p for p in pairs if o in p] for o in range(F)]
    prev = [{grid.index(lam): c for lam, c, _ in curves[o]} for o in range(F)]  # the walk's curve: level 0
    walk = [dict(c) for c in prev]
    tightest = [
        {grid.index(lam): (c, t) for lam, c, t in curves[o]} for o in range(F)
    ]  # (CE, the bound it was solved to)
    latest = kept  # each pair's most tightly solved fit per grid index (in place: a superseded fit goes, issue 17)
    want = [{j for j in (b - 1, b, b + 1) if 0 <= j < n} for b in best_i]
    cleared: list[set[int]] = [set() for _ in range(F)]  # lams ruled out for the fold
    unsolved: list[set[int]] = [set() for _ in range(F)]  # of those, the ones best first ruled out unsolved
    open_ = [o for o in range(F) if mine[o] and prev[o]]
    tol = inner_tol
    while open_ and tol > select_tol:
        # rounded: 1e-8 / 10 is 1.0000000000000002e-09 in floats, which is above 1e-9 and cost a
        # repeated last level; the record's curves show these bounds
        tol = max(float(f"{tol / SELECT_STEP:.6g}"), select_tol)
        final = tol <= select_tol
        level: dict[tuple[tuple[int, int], int], dict[int, tuple[float, int]]] = {}  # (pair, lam): its parts
        cur: list[dict[int, float]] = [{} for _ in range(F)]

        def solve(todo: list[tuple[tuple[int, int], int]]) -> None:
            if not todo:
                return
            starts = []
            for p, j in todo:
                near = latest[p]
                src = near.get(j) or (near[min(near, key=lambda m: (abs(m - j), m))] if near else None)
                starts.append(None if src is None else (src.W, src.b))
            fits = fit_many(
                design,
                [
                    Problem(tuple(b for b in range(F) if b not in p), grid[j], tol, s)
                    for (p, j), s in zip(todo, starts, strict=True)
                ],
                max_iter,
                pool,
            )
            lps = heldout_logp(design, fits, [p for p, _ in todo], pool)
            for (p, j), fit, lp in zip(todo, fits, lps, strict=True):
                log.add(fit)
                level[p, j] = pair_parts(design, p, fit, lp)  # not lp itself (issue 17: the peak at N = 2620)
                latest[p][j] = fit

        def point(o: int, j: int) -> None:  # fold_sums's arithmetic, in its order
            nll, cnt = 0.0, 0
            for p in mine[o]:
                nll -= level[p, j][o][0]
                cnt += level[p, j][o][1]
            cur[o][j] = float(nll / cnt) if cnt else np.inf

        # best first: each fold's best re-solved alone; a neighbour whose gap over it is far beyond how far
        # the best moved from the walk is set aside unsolved at this level (re-solved before the fold settles)
        solve(sorted({(p, best_i[o]) for o in open_ for p in mine[o]} - level.keys()))
        for o in open_:
            b = best_i[o]
            point(o, b)
            moved_b = abs(cur[o][b] - walk[o][b]) if b in walk[o] else np.inf
            for j in sorted(want[o] - {b}):
                if j in prev[o] and prev[o][j] - cur[o][b] > max(
                    SETTLE_FLOOR, SETTLE_MOVE * moved_b * max(1.0, grid[b] / grid[j])
                ):
                    want[o].discard(j)
                    cleared[o].add(j)
                    unsolved[o].add(j)
        while True:
            solve(sorted({(p, j) for o in open_ for j in want[o] for p in mine[o]} - level.keys()))
            moved = False
            for o in open_:
                for j in sorted(want[o] - cur[o].keys()):
                    point(o, j)
                b = _best(cur[o])
                for j in (b - 1, b + 1):  # the best's grid neighbours, unless already ruled out
                    if 0 <= j < n and j not in want[o] and j not in cleared[o]:
                        want[o].add(j)
                        moved = True
            if moved:
                continue
            # safe by construction: before a fold settles (and at the last level) its best's grid neighbours
            # that best first ruled out unsolved are re-solved at this level; one that beats the best moves it
            for o in open_:
                b = _best(cur[o])
                if final or all(_settled(cur[o], prev[o], j, b) for j in want[o] - {b}):
                    for j in sorted({b - 1, b + 1} & unsolved[o]):
                        unsolved[o].discard(j)
                        cleared[o].discard(j)
                        want[o].add(j)
                        moved = True
            if not moved:
                break
        still = []
        for o in open_:
            c, b = cur[o], _best(cur[o])
            best_i[o] = b
            tightest[o].update({j: (v, tol) for j, v in c.items()})
            for j in [j for j in c if j != b and _settled(c, prev[o], j, b)]:  # ruled out: re-solved no more
                want[o].discard(j)
                cleared[o].add(j)
            if want[o] != {b}:
                still.append(o)
            prev[o] = {**prev[o], **c}
        open_ = still
    for o in range(F):
        curves[o][:] = [(grid[j], *tightest[o][j]) for j in sorted(tightest[o])]
    return latest
