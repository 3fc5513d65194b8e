"""Exact W1 between two uniform empirical laws (science.md §3: exact EMD on Euclidean cost,
via POT), written once for bound, distances and per_type."""

from __future__ import annotations

import numpy as np

# POT's default cap (1e5 network-simplex iterations) can stop before the optimum on problems
# of ~2000 points a side (it warns and returns a larger W1); one cap for every caller
NUM_ITER_MAX = 10**7


def w1_from_cost(M: np.ndarray) -> float:
    """Exact W1 between uniform weights on the rows and on the columns of the cost matrix M."""
    import ot

    M = np.ascontiguousarray(M, dtype=np.float64)
    n, m = M.shape
    return float(ot.emd2(np.ones(n) / n, np.ones(m) / m, M, numItermax=NUM_ITER_MAX))


def exact_w1(X: np.ndarray, Y: np.ndarray) -> float:
    """Exact W1 between the uniform laws on the rows of X and Y, Euclidean cost, full space."""
    from scipy.spatial.distance import cdist

    return w1_from_cost(cdist(np.asarray(X, np.float64), np.asarray(Y, np.float64), metric="euclidean"))
