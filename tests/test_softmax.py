"""The probe's batched solver (plugins/analyses/_softmax.py) against direct answers.

- The compact L-BFGS direction is the two-loop recursion's direction.
- Fits run in one lockstep batch equal the same fits run alone, and sklearn's optimum.
- A fit whose training blocks miss a class is the fit on the classes it has.
- The scaled intercepts (issue 18) reach the plain solver's and sklearn's optimum.
"""

from __future__ import annotations

import numpy as np
import pytest

from mch.plugins.analyses import _softmax as S

pytestmark = pytest.mark.usefixtures("blas_one_thread")


def two_loop(g, pairs):
    """The textbook two-loop recursion (Nocedal & Wright, algorithm 7.4)."""
    q = g.copy()
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    s, y = pairs[-1]
    q *= (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas), strict=True):
        q += (a - (y @ q) / (s @ y)) * s
    return q


@pytest.mark.parametrize("n_pairs", [1, 4, 7])
def test_compact_direction_is_the_two_loop_direction(n_pairs):
    rng = np.random.default_rng(n_pairs)
    n, memory = 300, 5
    A = rng.standard_normal((n, n))
    H = A @ A.T / n + np.eye(n)  # a convex quadratic's Hessian: y = H s
    pairs = []
    hist = S._Pairs(n, memory)
    for _ in range(n_pairs):
        s = rng.standard_normal(n)
        y = H @ s
        pairs.append((s.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)))
        hist.push(s, y, float(s @ y), float(y @ y))
    g = rng.standard_normal(n)
    want = two_loop(g, pairs[-memory:])
    np.testing.assert_allclose(hist.direction(g), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
    hist.clear()
    np.testing.assert_allclose(hist.direction(g), g / max(np.linalg.norm(g), 1.0))


def world(n=240, r=30, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    Z = rng.standard_normal((n, r)) * np.arange(1, r + 1) ** -0.5 + 0.6 * rng.standard_normal((k, r))[y]
    block = rng.integers(0, 4, n)
    return Z.astype(np.float32), y, block


def objective(Z, y, W, b, lam):
    from scipy.special import logsumexp

    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)  # sklearn's may be float32
    A = Z.astype(np.float64) @ W + b
    return float(np.mean(logsumexp(A, 1) - A[np.arange(len(y)), y]) + 0.5 * lam * np.sum(W * W))


def test_a_lockstep_batch_gives_each_fit_its_own_optimum(monkeypatch):
    """Three fits on different fold sets, in one batch, in batches of one, and alone
    (each reaching the same optimum as sklearn on its rows)."""
    from sklearn.linear_model import LogisticRegression

    Z, y, block = world()
    design = S.Design(Z, block, y, 4)
    problems = [S.Problem((0, 1, 2), 1e-2, 1e-12), S.Problem((1, 2, 3), 1e-1, 1e-12), S.Problem((0, 3), 3e-2, 1e-12)]
    monkeypatch.setattr(S, "BATCH_SHARE", 1e9)  # one batch (this design's rows are a few KiB)
    together = S.fit_many(design, problems, 10000)
    for p, fit in zip(problems, together, strict=True):
        assert fit.converged and fit.gap_bound <= 1e-12
        alone = S.fit_many(design, [p], 10000)[0]
        rows = np.isin(block, p.blocks)
        sk = LogisticRegression(C=1 / (p.lam * rows.sum()), tol=1e-12, max_iter=100000).fit(Z[rows], y[rows])
        f_sk = objective(Z[rows], y[rows], sk.coef_.T, sk.intercept_, p.lam)
        for W, b in ((fit.W, fit.b), (alone.W, alone.b)):
            ours = objective(Z[rows], y[rows], W, b, p.lam)
            assert ours <= f_sk + 1e-11 and f_sk - ours < 1e-8
        # two fits within the bound: ||W - W*||^2 <= 2 gap / lam each
        np.testing.assert_allclose(fit.W, alone.W, atol=2 * np.sqrt(2e-12 / p.lam))
    S.BATCH_BYTES, saved = 1, S.BATCH_BYTES  # batches of one fit each
    try:
        small = S.fit_many(design, problems, 10000)
    finally:
        S.BATCH_BYTES = saved
    for p, a, b_ in zip(problems, together, small, strict=True):
        np.testing.assert_allclose(a.W, b_.W, atol=2 * np.sqrt(2e-12 / p.lam))


def test_lockstep_batches_are_sized_to_the_design(monkeypatch):
    """Issue 17: a batch's solver state stays under BATCH_SHARE of the design's rows (at least
    one fit), as well as under BATCH_BYTES; before, only BATCH_BYTES (160 MiB, 3.9x a stage of
    2620 x 4096 float32) bounded it, so these 12 fits ran as one batch."""
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((6000, 8)).astype(np.float32)
    y, block = rng.integers(0, 2, 6000), np.arange(6000) % 4
    design = S.Design(Z, block, y, 2)
    per_fit = design.rank * design.k * (8 * S.LBFGS_MEMORY + 120)
    sizes: list[int] = []
    real = S._fit_batch
    monkeypatch.setattr(S, "_fit_batch", lambda d, ps, *a: sizes.append(len(ps)) or real(d, ps, *a))
    problems = [S.Problem((j % 4, (j + 1) % 4), 10.0 ** -(j % 3), 1e-6) for j in range(12)]
    small = S.Design(Z[:400], block[:400], rng.integers(0, 10, 400), 10)  # state per fit > half its rows' bytes
    assert small.rank * small.k * (8 * S.LBFGS_MEMORY + 120) > S.BATCH_SHARE * small.Z.nbytes
    S.fit_many(small, problems, 10000)  # BATCH_FLOOR keeps a small design's fits in one batch
    assert sizes == [12], sizes
    sizes.clear()
    monkeypatch.setattr(S, "BATCH_FLOOR", 0)
    for share, size in ((0.1, 6), (0.05, 3), (1e-9, 1)):
        monkeypatch.setattr(S, "BATCH_SHARE", share)
        sizes.clear()
        fits = S.fit_many(design, problems, 10000)
        assert sum(sizes) == 12 and all(f.converged for f in fits)
        assert max(1, int(share * Z.nbytes) // per_fit) == size and max(sizes) == size, (share, sizes)
    monkeypatch.setattr(S, "BATCH_SHARE", 1e9)  # then BATCH_BYTES bounds it
    monkeypatch.setattr(S, "BATCH_BYTES", 5 * per_fit)
    sizes.clear()
    S.fit_many(design, problems, 10000)
    assert max(sizes) == 5


def test_a_fit_missing_a_class_is_the_fit_on_the_classes_it_has():
    Z, y, block = world(k=5, seed=3)
    y[(y == 4) & np.isin(block, (0, 1))] = 0  # class 4 only in blocks 2 and 3
    design = S.Design(Z, block, y, 5)
    fit = S.fit_many(design, [S.Problem((0, 1), 3e-2, 1e-12)], 10000)[0]
    assert fit.converged and list(fit.present) == [True] * 4 + [False]
    assert np.all(fit.W[:, 4] == 0)
    rows = np.isin(block, (0, 1))
    local = S.fit_many(S.Design(Z[rows], np.zeros(rows.sum(), int), y[rows], 4), [S.Problem((0,), 3e-2, 1e-12)], 10000)[
        0
    ]
    np.testing.assert_allclose(fit.W[:, :4], local.W, atol=2 * np.sqrt(2e-12 / 3e-2))
    lp = S.heldout_logp(design, [fit], [(2, 3)])[0]
    assert np.all(np.isneginf(lp[2][:, 4])) and np.allclose(np.exp(lp[2][:, :4]).sum(1), 1)


def zipf_world(n=1200, r=60, k=30, seed=5):
    """Imbalanced classes (Zipf, the rarest a few rows), as a lexical probe's first words."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** 1.2
    y = rng.choice(k, n, p=p / p.sum())
    y[: 2 * k] = np.arange(2 * k) % k  # every class at least twice
    Z = rng.standard_normal((n, r)) * np.arange(1, r + 1) ** -0.5 + 0.3 * rng.standard_normal((k, r))[y]
    block = rng.integers(0, 4, n)
    block[: 2 * k] = 0  # ... in a training block
    return Z.astype(np.float32), y, block


@pytest.mark.parametrize("lam", [1.0, 1e-2])
def test_scaled_intercepts_reach_the_same_optimum_in_fewer_evaluations(lam, monkeypatch):
    """The intercepts start at the training rows' log prior and move in the class directions
    scaled to unit curvature: a change of variables and a start, so the optimum is sklearn's
    and the plain solver's; on imbalanced classes the plain intercepts (a rare class's
    curvature ~ its rate) took most of the iterations."""
    from sklearn.linear_model import LogisticRegression

    Z, y, block = zipf_world()
    k = int(y.max()) + 1
    design = S.Design(Z, block, y, k)
    problem = S.Problem((0, 1, 2), lam, 1e-10)
    scaled = S.fit_many(design, [problem], 100000)[0]
    monkeypatch.setattr(S, "PLAIN_INTERCEPTS", True)
    plain = S.fit_many(design, [problem], 100000)[0]
    assert scaled.converged and plain.converged
    rows = np.isin(block, problem.blocks)
    sk = LogisticRegression(C=1 / (lam * rows.sum()), tol=1e-12, max_iter=100000).fit(Z[rows], y[rows])
    f_sk = objective(Z[rows], y[rows], sk.coef_.T, sk.intercept_, lam)
    f = [objective(Z[rows], y[rows], fit.W, fit.b, lam) for fit in (scaled, plain)]
    assert abs(f[0] - f[1]) < 1e-7  # both at the optimum, to float32 products
    assert max(f) <= f_sk + 1e-9 and f_sk - min(f) < 1e-5  # sklearn's lbfgs stops a little above it
    np.testing.assert_allclose(scaled.W, plain.W, atol=2 * np.sqrt(2e-10 / lam))
    # intercepts are fixed up to a common shift: compare the centred ones; a rare class's
    # intercept has curvature ~ its rate (~0.004), so 1e-7 of objective leaves it ~ 7e-3 of room
    np.testing.assert_allclose(scaled.b - scaled.b.mean(), plain.b - plain.b.mean(), atol=1e-2)
    if lam == 1.0:  # where the intercepts are most of the problem (measured: 8 against 142)
        assert scaled.n_evals * 4 <= plain.n_evals, (scaled.n_evals, plain.n_evals)
