"""The shared group primitives (science.md §8): bootstrap over groups, group-preserving
label permutation, group halves."""

from __future__ import annotations

import numpy as np

from mch.plugins.analyses._stats import (
    group_codes,
    group_halves,
    group_resamples,
    permute_labels_by_group,
    resample_seed,
)


def test_group_codes_follow_first_appearance():
    codes, g = group_codes(np.array(["z", "z", "a", "m", "a"]))
    assert g == 3 and codes.tolist() == [0, 0, 1, 2, 1]
    codes, g = group_codes(None, 4)
    assert g == 4 and codes.tolist() == [0, 1, 2, 3]


def test_resamples_draw_whole_groups():
    codes = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 6])
    r = group_resamples(6, 200, seed=3)
    assert r.counts.shape == (200, 6) and (r.counts.sum(1) == 6).all()
    w = r.weights(codes)
    # every row of a group carries its group's count
    for g in range(6):
        rows = np.flatnonzero(codes == g)
        assert (w[:, rows] == r.counts[:, [g]]).all()
    # the weighted mean of a per-group constant is the mean over drawn groups, size-weighted
    v = codes.astype(float)
    expect = (r.counts * np.arange(6) * np.bincount(codes)).sum(1) / (r.counts * np.bincount(codes)).sum(1)
    assert np.allclose(r.weighted_mean(v, codes), expect)


def test_resample_seed_is_shared_and_distinct():
    assert resample_seed(0, "emotion") == resample_seed(0, "emotion")
    assert resample_seed(0, "emotion") != resample_seed(0, "speaker") != resample_seed(1, "emotion")


def test_group_bootstrap_covers_a_clustered_mean_where_rows_do_not():
    """Strong group effect: the group bootstrap's 95% CI covers the true mean far more often
    than a row bootstrap's (science.md §8's known answer, small version)."""
    rng = np.random.default_rng(0)
    hits_g = hits_r = 0
    reps = 60
    for _ in range(reps):
        n_groups, per = 12, 20
        codes = np.repeat(np.arange(n_groups), per)
        x = rng.normal(size=n_groups)[codes] + 0.3 * rng.normal(size=len(codes))
        rg = group_resamples(n_groups, 400, int(rng.integers(1 << 30)))
        lo, hi = np.percentile(rg.weighted_mean(x, codes), [2.5, 97.5])
        hits_g += lo <= 0.0 <= hi
        rr = group_resamples(len(x), 400, int(rng.integers(1 << 30)))
        lo, hi = np.percentile(rr.weighted_mean(x, np.arange(len(x))), [2.5, 97.5])
        hits_r += lo <= 0.0 <= hi
    assert hits_g / reps >= 0.8
    assert hits_r / reps <= 0.6


def test_permutation_keeps_group_structure():
    rng = np.random.default_rng(1)
    codes = np.repeat(np.arange(8), 5)
    y = np.repeat(rng.integers(0, 3, 8), 5)  # constant within groups
    for _ in range(20):
        p = permute_labels_by_group(y, codes, rng)
        assert all(len(set(p[codes == g])) == 1 for g in range(8))  # still constant within groups
        assert sorted(p) == sorted(y)  # the group -> label map is permuted
    singles = np.arange(30)
    y1 = rng.integers(0, 4, 30)
    p = permute_labels_by_group(y1, singles, rng)
    assert sorted(p) == sorted(y1) and not np.array_equal(p, y1)


def test_permutation_breaks_the_association():
    rng = np.random.default_rng(2)
    codes = np.repeat(np.arange(40), 3)
    y = np.repeat(np.arange(40) % 2, 3)
    agree = np.mean([np.mean(permute_labels_by_group(y, codes, rng) == y) for _ in range(200)])
    assert abs(agree - 0.5) < 0.05


def test_halves_are_disjoint_unions_of_whole_groups():
    codes = np.repeat(np.arange(10), [3, 7, 2, 9, 4, 4, 6, 1, 5, 8])
    a, b = group_halves(codes, seed=0)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(codes)
    assert not set(codes[a]) & set(codes[b])
    assert abs(len(a) - len(b)) <= 9
    a2, _ = group_halves(codes, seed=0)
    assert np.array_equal(a, a2)
