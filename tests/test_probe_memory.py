"""The default probe's memory (issue 17): what the solver and the lam walk hold, measured.

- A round's chunk products are summed as they come: at most IN_FLIGHT (+ the one being summed
  and the one just summed) are alive at once, whatever the number of chunks (before: every
  chunk's product of the round was held until all were done).
- Between the walk's lam steps (and before the outer fits) the walk holds, per inner pair,
  a few float32 weight matrices: its warm start and the fits the selection step may start
  from (before: float64 fits, the previous step's fits and held-out log-probabilities too).
"""

from __future__ import annotations

import tracemalloc
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mch.plugins.analyses import _probe_cv, _softmax as S
from mch.plugins.analyses._probe_cv import FitLog, nested_cv_probe
from mch.plugins.analyses.probe import LAMBDA_GRID

pytestmark = pytest.mark.usefixtures("blas_one_thread")


def test_a_rounds_chunk_products_are_not_all_held(monkeypatch):
    rng = np.random.default_rng(0)
    n, r, k = 40 * S.CHUNK_ROWS, 16, 3
    y = rng.integers(0, k, n)
    Z = (rng.standard_normal((n, r)) + rng.standard_normal((k, r))[y]).astype(np.float32)
    design = S.Design(Z, np.zeros(n, dtype=int), y, k)
    assert len(design.chunks) == 40
    live, most = [0], [0]
    real = S._chunk_products

    def counted(*a, **kw):
        task = real(*a, **kw)

        def run(c):
            out = task(c)
            live[0] += 1  # under the GIL: a counter is enough
            most[0] = max(most[0], live[0])
            weakref.finalize(out[2], lambda: live.__setitem__(0, live[0] - 1))  # the product GT
            return out

        return run

    monkeypatch.setattr(S, "_chunk_products", counted)
    monkeypatch.setattr(S, "POOL_MIN_WORK", 0)  # share out even this small round
    with ThreadPoolExecutor(2) as pool:
        fit = S.fit_many(design, [S.Problem((0,), 1e-2, 1e-6)], 1000, pool)[0]
    assert fit.converged
    assert most[0] <= S.IN_FLIGHT + 2, (most[0], S.IN_FLIGHT)


def test_the_walks_state_between_steps_is_a_few_float32_fits_per_pair(monkeypatch):
    """Traced memory held at each entry to the walk's and the outer fits' `fit_many`, beyond
    what was held before the probe, on a 1000 x 200 float32 design with 30 classes (5 folds:
    10 inner pairs): at most 6 float32 r x k matrices' bytes per pair (a warm start and the
    fits at its two folds' best lam and neighbours; measured 4.2); main at 1a269cf held 13.3
    (float64 fits, the last step's fits and log-probabilities, the selection's fits at the
    outer fits)."""
    rng = np.random.default_rng(3)
    n, r, k, F = 1000, 200, 30, 5
    y = np.arange(n) % k
    Z = (rng.standard_normal((n, r)) + 0.5 * rng.standard_normal((k, r))[y]).astype(np.float32)
    fold = (np.arange(n) // k) % F  # every class in every fold
    design = S.Design(Z, fold, y, k)
    held: list[int] = []
    real = _probe_cv.fit_many

    def traced(*a, **kw):
        held.append(tracemalloc.get_traced_memory()[0])
        return real(*a, **kw)

    monkeypatch.setattr(_probe_cv, "fit_many", traced)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        nested_cv_probe(design, LAMBDA_GRID, 1, 1e-5, 10000, FitLog(), 1e-6, None, None, 1e-7)
    finally:
        tracemalloc.stop()
    pairs = F * (F - 1) // 2
    bound = pairs * 6 * r * k * 4
    assert len(held) >= 4  # walk steps and the outer fits
    assert max(held) - base <= bound, ((max(held) - base) / (pairs * r * k * 4), "float32 matrices per pair")


def test_the_next_stages_basis_is_computed_ahead_only_where_it_is_smaller_than_its_stage(monkeypatch):
    """Issue 17 (review): for N >= D a basis is as large as its stage, so none is computed ahead
    (two held at once put 3 stages of 3000 x 512 at 2.19x the vectors read); for N < D (the
    N x N Gram route) the next one is, beside this stage's fits (issue 18's speed)."""
    import threading
    from contextlib import ExitStack
    from types import SimpleNamespace

    import numpy as np

    from mch.plugins.analyses import probe

    calls: list[tuple[int, bool]] = []

    def basis(X):
        calls.append((X.shape[0], threading.current_thread() is threading.main_thread()))
        return X.shape

    monkeypatch.setattr(probe, "stage_basis", basis)
    for n, d in ((60, 10), (10, 60)):
        calls.clear()
        ctx = SimpleNamespace(reps={s: np.zeros((n, d), np.float32) for s in ("a", "b", "c")})
        with ExitStack() as stack:
            got = [stage for stage, _ in probe._bases_ahead(ctx, ["a", "b", "c"], stack)]
        assert got == ["a", "b", "c"] and len(calls) == 3
        assert all(main for _, main in calls) == (n >= d)  # in turn on the caller's thread, or ahead on its own
