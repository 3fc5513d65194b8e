"""The probe's group-bootstrap replicates from per-group sums (issue 17: no (B, n) row weights)."""

import tracemalloc

import numpy as np

from mch.plugins.analyses._probe_cv import heldout_replicates, resample_counts, resampled_sums
from mch.plugins.analyses._stats import RowGroups


def test_resampled_sums_equal_the_row_weight_product():
    rng = np.random.default_rng(0)
    for codes, total in ((rng.integers(2, 9, 300), 11), (np.arange(400), 400)):
        groups = RowGroups(codes, total, 5, "g")
        M = rng.normal(size=(len(codes), 7))
        np.testing.assert_allclose(
            resampled_sums(*resample_counts(groups, 150), M), groups.weights(150) @ M, rtol=1e-12
        )


def test_heldout_replicates_hold_no_row_weights():
    """1000 resamples of 20000 one-row groups: (B, n) float64 weights were 160 MB; the counts
    (one byte each) and a block of resamples are a fraction of that."""
    n, k, B = 20000, 3, 1000
    rng = np.random.default_rng(1)
    y = rng.integers(0, k, n)
    logp = np.log(rng.dirichlet(np.ones(k), n))
    groups = RowGroups(np.arange(n), n, 2, "sample")
    tracemalloc.start()
    resamples = resample_counts(groups, B)
    pt, reps = heldout_replicates(y, k, 1.0, [{"logp": logp, "null": np.full(n, np.log2(k))}], resamples)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.3 * B * n * 8, peak
    w = groups.weights(200)  # the same replicates as the row-weight product, on the first 200 draws
    nll = -logp[np.arange(n), y] / np.log(2)
    np.testing.assert_allclose(reps["cross_entropy_bits"][:200], (w @ nll) / w.sum(1), rtol=1e-12)
    assert abs(pt["cross_entropy_bits"] - nll.mean()) < 1e-12
