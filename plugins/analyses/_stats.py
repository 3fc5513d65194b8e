"""Statistics helpers the analyses share: entropy in bits, label encoding, grouped folds,
confusion-based scores and percentile bootstraps over rows (vectorised, seeded).

Everything here is plain numpy (sklearn only for fold assignment), deterministic for a
given seed, and free of plugin knowledge.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LN2 = float(np.log(2.0))


# --------------------------------------------------------------------------- entropy, labels


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy (bits) of a probability vector; zero entries contribute nothing."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def prior(y: np.ndarray, k: int) -> np.ndarray:
    """Empirical label prior P(y) of integer codes 0..k-1."""
    return np.bincount(y, minlength=k).astype(np.float64) / len(y)


@dataclass
class Encoded:
    """Integer-coded labels of the rows kept for an analysis."""

    rows: np.ndarray  # indices into the run's samples
    y: np.ndarray  # codes 0..K-1
    classes: list[str]  # code -> class name
    dropped: dict[str, int] = field(default_factory=dict)  # class name -> members, dropped as too rare
    n_unlabelled: int = 0


def encode_labels(labels: np.ndarray, order: Sequence[str] | None = None, min_count: int = 2) -> Encoded:
    """Drop unlabelled rows ("") and classes with fewer than `min_count` members (the
    reference drops singletons), then code classes in `order` (the names given, others
    appended in sorted order) or, when `order` is None, in sorted order (LabelEncoder's)."""
    labels = np.asarray(labels).astype(str)
    labelled = np.flatnonzero(labels != "")
    names, counts = np.unique(labels[labelled], return_counts=True)
    keep = {n for n, c in zip(names, counts, strict=True) if c >= min_count}
    dropped = {str(n): int(c) for n, c in zip(names, counts, strict=True) if c < min_count}
    rows = labelled[np.isin(labels[labelled], list(keep))] if keep else labelled[:0]
    if order is None:
        classes = sorted(keep)
    else:
        classes = [c for c in order if c in keep] + sorted(keep - set(order))
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[v] for v in labels[rows]), dtype=np.int64, count=len(rows))
    return Encoded(rows, y, classes, dropped, int(len(labels) - len(labelled)))


# --------------------------------------------------------------------------- folds


@dataclass
class Folds:
    """`fold[i]` = the outer fold of row i (each row is tested exactly once)."""

    fold: np.ndarray
    n_splits: int
    grouped: bool
    reason: str  # why the split is (not) grouped, for the record

    def test(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.fold == i)

    def train(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.fold != i)


def _every_train_part_has_every_class(fold: np.ndarray, y: np.ndarray, n_splits: int) -> bool:
    k = int(y.max()) + 1
    return all(len(np.unique(y[fold != i])) == k for i in range(n_splits))


def grouped_folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> Folds:
    """Stratified k-fold whose folds keep each group whole (sklearn's StratifiedGroupKFold,
    shuffled with `seed`). Falls back to a stratified k-fold (and says why) when the group
    key cannot give a usable split: fewer groups than folds, a class found in fewer than
    two groups, or a training part that would miss a class."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n = len(y)
    reason = ""
    if groups is None:
        reason = "no group key"
    else:
        groups = np.asarray(groups).astype(str)
        n_groups = len(np.unique(groups))
        per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
        if n_groups < n_splits:
            reason = f"only {n_groups} groups for {n_splits} folds"
        elif min(per_class) < 2:
            reason = f"{sum(p < 2 for p in per_class)} classes occur in a single group"
        else:
            fold = np.empty(n, dtype=np.int64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "least populated class" warnings: checked below
                splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                for i, (_, te) in enumerate(splitter.split(np.zeros(n), y, groups)):
                    fold[te] = i
            if _every_train_part_has_every_class(fold, y, n_splits):
                why = "one sample per group" if n_groups == n else f"{n_groups} groups"
                return Folds(fold, n_splits, True, why)
            reason = "a group-disjoint training part would miss a class"
    fold = np.empty(n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (_, te) in enumerate(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(n), y)):
            fold[te] = i
    return Folds(fold, n_splits, False, f"stratified fallback: {reason}")


# --------------------------------------------------------------------------- scores


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def scores_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 from (..., K, K) confusion counts (rows =
    truth). Classes absent from the truth are left out of balanced accuracy; macro-F1
    averages over classes present in truth or prediction, F1 = 0 where undefined
    (sklearn's zero_division=0)."""
    conf = np.asarray(conf, dtype=np.float64)
    return scores_from_counts(np.diagonal(conf, axis1=-2, axis2=-1), conf.sum(-1), conf.sum(-2))


def scores_from_counts(tp: np.ndarray, true_n: np.ndarray, pred_n: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of `scores_from_confusion` from (..., K) true positives, true and predicted
    class totals (all a confusion matrix's scores need; weighted counts work alike)."""
    total = true_n.sum(-1)
    present = true_n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, true_n, 1), 0.0)
        bal = recall.sum(-1) / present.sum(-1)
        denom = true_n + pred_n
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
        macro_f1 = f1.sum(-1) / (denom > 0).sum(-1)
    return {"accuracy": tp.sum(-1) / total, "balanced_accuracy": bal, "macro_f1": macro_f1}


# --------------------------------------------------------------------------- bootstrap


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return None, None
    a = (1 - level) / 2 * 100
    return float(np.percentile(r, a)), float(np.percentile(r, 100 - a))


def bias_corrected_ci(replicates: np.ndarray, point: float | None, level: float = 0.95, bounds: Any = None) -> Any:
    """Percentile CI of the replicates minus the bootstrap's bias estimate mean - point (science.md
    §8): at H(Y)'s ceiling GMI's replicates lie below the point and the plain interval can miss
    it; this one holds it whenever the mean is inside their central range. The ends are clipped
    to the quantity's range `bounds` (GMI: [0, log2 K]), which the shift can pass."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0 or point is None or not np.isfinite(point):
        return None, None
    lo, hi = np.clip(percentile_ci(r - (r.mean() - float(point)), level), *(bounds or (-np.inf, np.inf)))
    return float(lo), float(hi)


def bootstrap_rows(n: int, n_boot: int, seed: int, chunk: int = 128):
    """Yield (B_chunk, n) index arrays of rows resampled with replacement; `n_boot` rows in
    all, generated in chunks so memory stays at chunk * n."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def bootstrap(stat: Callable[[np.ndarray], Any], n: int, n_boot: int, seed: int) -> np.ndarray:
    """Replicates of `stat(idx)` for resampled row indices; `stat` takes a (B, n) index
    array and returns (B,) or (B, m) values (vectorise it over the first axis)."""
    parts = [np.asarray(stat(idx), dtype=np.float64) for idx in bootstrap_rows(n, n_boot, seed)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0,))


def bootstrap_classification(
    y: np.ndarray, pred: np.ndarray, nll_bits: np.ndarray, k: int, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """Bootstrap replicates (over rows) of accuracy, balanced accuracy, macro-F1 and mean
    cross-entropy in bits, one pass over shared resamples."""
    cell = y * k + pred
    out: dict[str, list[np.ndarray]] = {
        "accuracy": [],
        "balanced_accuracy": [],
        "macro_f1": [],
        "cross_entropy_bits": [],
    }
    for idx in bootstrap_rows(len(y), n_boot, seed):
        b = idx.shape[0]
        flat = (cell[idx] + (np.arange(b) * k * k)[:, None]).ravel()
        conf = np.bincount(flat, minlength=b * k * k).reshape(b, k, k)
        s = scores_from_confusion(conf)
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            out[key].append(s[key])
        out["cross_entropy_bits"].append(nll_bits[idx].mean(axis=1))
    return {key: np.concatenate(v) if v else np.zeros(0) for key, v in out.items()}


# --------------------------------------------------------------------------- groups (science.md §8)
#
# Shared by every analysis that resamples or permutes: one definition of a group bootstrap,
# a group-preserving label permutation and group halves, so that numbers computed from the
# same rows (and ratios of them) come from the same draws.


def group_codes(groups: np.ndarray | None, n: int | None = None) -> tuple[np.ndarray, int]:
    """Integer group codes 0..G-1 of each row (first-appearance order); None: every row its own
    group (then `n` rows)."""
    if groups is None:
        if n is None:
            raise ValueError("group_codes needs groups or n")
        return np.arange(n, dtype=np.int64), int(n)
    g = np.asarray(groups).astype(str)
    _, first, codes = np.unique(g, return_index=True, return_inverse=True)
    # renumber by first appearance, so the codes do not depend on the group names' sort order
    order = np.argsort(np.argsort(first))
    return order[codes].astype(np.int64), int(len(first))


def resample_seed(seed: int, *names: str) -> int:
    """A seed for the shared resamples of (run seed, names...): every analysis that resamples
    the same attribute's groups draws the same resamples (science.md §8)."""
    import hashlib

    h = hashlib.sha256(("\x1f".join([str(int(seed)), *map(str, names)])).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class GroupResamples:
    """B group-bootstrap resamples of G groups: `counts[b, g]` = how often group g was drawn.

    A row's weight in resample b is its group's count, so a statistic that is a weighted mean
    over rows (accuracy, mean cross-entropy, a GMI term) is evaluated on every resample with
    one product; any subset of rows (an analysis's labelled rows) reuses the same draws."""

    counts: np.ndarray  # (B, G) int32

    @property
    def n_boot(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.counts.shape[1])

    def weights(self, codes: np.ndarray) -> np.ndarray:
        """(B, n) float64 row weights for rows whose group codes are `codes`."""
        return self.counts[:, np.asarray(codes, dtype=np.int64)].astype(np.float64)

    def weighted_mean(self, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(B,) or (B, m) weighted means of per-row `values` ((n,) or (n, m)) on every resample;
        NaN where a resample drew none of these rows."""
        w = self.weights(codes)
        tot = w.sum(1)
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if v.ndim == 1:
                return (w @ v) / tot
            return (w @ v) / tot[:, None]


def group_resamples(n_groups: int, n_boot: int, seed: int, keep: np.ndarray | None = None) -> GroupResamples:
    """`n_boot` resamples of `n_groups` groups drawn with replacement (seeded). `keep`: only those
    groups' counts, in one byte each while they fit (the probe's memory, issue 17)."""
    rng, cols = np.random.default_rng(seed), slice(None) if keep is None else np.asarray(keep)
    counts = np.zeros((int(n_boot), n_groups if keep is None else len(cols)), np.int32 if keep is None else np.uint8)
    for b in range(int(n_boot)):
        c = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)[cols]
        counts = counts if c.max(initial=0) <= np.iinfo(counts.dtype).max else counts.astype(np.int32)
        counts[b] = c
    return GroupResamples(counts)


def permute_labels_by_group(y: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted across groups with the group structure kept (science.md §1, §2):
    the groups are shuffled (group g receives the labels of group pi(g)), and the row of rank
    r inside g takes the label of the row of rank r mod |pi(g)| inside pi(g). A label that is
    constant within groups gets a shuffled group -> label map; with one row per group it is a
    plain permutation of the rows' labels; a group's label mix moves with it."""
    y = np.asarray(y)
    codes = np.asarray(codes, dtype=np.int64)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    pi = rng.permutation(n_groups)
    # vectorised: rows sorted stably by group (each group's rows in row order), a row's rank
    # inside its group, and the source row of the same rank (mod size) in group pi(g)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts[codes[order]]
    src = pi[codes]
    if len(codes) and (sizes[src] == 0).any():
        raise ValueError("group codes must be 0..G-1 with every group present")
    return y[order[starts[src] + rank % np.maximum(sizes[src], 1)]]


def group_halves(codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint row sets, each a union of whole groups holding about half the rows (for
    cross-fitting, science.md §4); groups assigned in a seeded random order, each to the half
    with fewer rows so far."""
    codes = np.asarray(codes, dtype=np.int64)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    sizes = np.bincount(codes, minlength=n_groups)
    side = np.zeros(n_groups, dtype=np.int8)
    filled = [0, 0]
    for g in np.random.default_rng(seed).permutation(n_groups):
        h = 0 if filled[0] <= filled[1] else 1
        side[g] = h
        filled[h] += int(sizes[g])
    row_side = side[codes]
    return np.flatnonzero(row_side == 0), np.flatnonzero(row_side == 1)


# --------------------------------------------------------------------------- shared resamples of a run (science.md §8)
# Every analysis of a run that puts a CI on numbers of an attribute's rows draws the same group
# resamples: the groups are coded over *all* the run's samples (so a group has one code whatever
# rows an analysis keeps) and drawn with `resample_seed(run seed, attribute)`. A ratio of two
# analyses' numbers (GMI / I_probe) or a paired change (LoRA) takes its CI draw by draw.


def bootstrap_key(spec: Any) -> str:
    """The `Sample.groups` key whose groups an attribute's CIs resample: its declared cluster key,
    else its group key."""
    return getattr(spec, "cluster_key", None) or spec.group_key


@dataclass
class RowGroups:
    """The bootstrap groups of some rows of a run. `codes[i]` is row i's group among the run's
    `n_total` groups of key `key`; `seed` the shared resample seed."""

    codes: np.ndarray
    n_total: int
    seed: int
    key: str

    @property
    def n_groups(self) -> int:
        """Distinct groups among these rows (what a record's `n_groups` says)."""
        return int(len(np.unique(self.codes)))

    def resamples(self, n_boot: int, keep: np.ndarray | None = None) -> GroupResamples:
        """The run's resamples of this key: the same draws for every analysis and row subset
        (and the first B of them for any n_boot >= B); `keep`: group_resamples'."""
        return group_resamples(self.n_total, n_boot, self.seed, keep)

    def weights(self, n_boot: int) -> np.ndarray:
        """(n_boot, n) row weights: how often each row's group was drawn."""
        return self.resamples(n_boot).weights(self.codes)

    def subset(self, idx: np.ndarray) -> RowGroups:
        return RowGroups(np.asarray(self.codes)[np.asarray(idx)], self.n_total, self.seed, self.key)


def attribute_groups(ctx: Any, attribute: str) -> RowGroups:
    """The bootstrap groups of every sample of the run for `attribute` (its cluster key, else its
    group key; without one every sample is its own group), with the shared seed."""
    from mch.api import MchError

    spec = ctx.attributes[attribute]
    key = bootstrap_key(spec)
    n = len(ctx.samples)
    if getattr(spec, "cluster_key", None):
        missing = [s.sample_id for s in ctx.samples if key not in s.groups]
        if missing:
            raise MchError(
                f"attribute {attribute!r} declares cluster key {key!r}, which sample {missing[0]} lacks; "
                f"the dataset must give every sample that group"
            )
        values = np.array([s.groups[key] for s in ctx.samples], dtype=object)
    else:
        values = ctx.groups.get(attribute)
    codes, total = group_codes(None if values is None else np.asarray(values), n)
    return RowGroups(codes, total, resample_seed(ctx.seed, attribute), key)


def samples_digest(ctx: Any) -> str:
    """Short hash of the run's sample ids in order: two outputs' replicates pair up only when
    it matches (same rows, so the same group codes and draws)."""
    import hashlib

    return hashlib.sha256("\0".join(s.sample_id for s in ctx.samples).encode()).hexdigest()[:16]


def groups_identity(ctx: Any, groups: RowGroups) -> dict[str, Any]:
    """What must match for two analyses' replicates to come from the same draws."""
    return {"seed": groups.seed, "n_total": groups.n_total, "key": groups.key, "ids": samples_digest(ctx)}


def run_groups(ctx: Any) -> RowGroups:
    """The bootstrap groups of an analysis that is about samples, not one attribute (the causal
    tests' per-sample deltas): the coarsest bootstrap key of the run's attributes (fewest
    groups, at least two), with that attribute's seed, so its draws are that attribute's."""
    best: RowGroups | None = None
    for name in sorted(ctx.attributes):
        g = attribute_groups(ctx, name)
        if g.n_total >= 2 and (best is None or g.n_total < best.n_total):
            best = g
    if best is None:
        codes, total = group_codes(None, len(ctx.samples))
        return RowGroups(codes, total, resample_seed(ctx.seed, "sample"), "sample")
    return best


def weighted_scores(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 under each row weighting of `w` (B, n): the
    per-class counts are weighted sums, so no (B, K, K) confusion is formed."""
    y, pred = np.asarray(y), np.asarray(pred)
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1.0
    Pr = np.zeros((len(y), k))
    Pr[np.arange(len(y)), pred] = 1.0
    return scores_from_counts(w @ (Y * (y == pred)[:, None]), w @ Y, w @ Pr)


def weighted_means(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) means of per-row `values` under each row weighting of `w` (B, n); NaN where a
    resample drew none of the rows."""
    tot = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ np.asarray(values, dtype=np.float64)) / tot


def tost(delta_reps: np.ndarray, margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Two one-sided tests of |delta| < margin from bootstrap replicates of delta (paired): each
    one-sided p-value is the share of replicates beyond its margin (the percentile bootstrap's
    test), and equivalence holds at level alpha when both are below it, i.e. when the
    (1 - 2 alpha) percentile interval lies inside (-margin, margin)."""
    r = np.asarray(delta_reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0 or not margin > 0:
        return {"equivalent": False, "p": None, "ci90": [None, None], "margin": float(margin)}
    p = float(max(np.mean(r <= -margin), np.mean(r >= margin)))
    lo, hi = percentile_ci(r, 1 - 2 * alpha)
    return {
        "equivalent": bool(p < alpha and -margin < lo and hi < margin),
        "p": p,
        "ci90": [lo, hi],
        "margin": float(margin),
    }


def describe(values: np.ndarray, n_boot: int, seed: Any) -> dict[str, tuple[float, float | None, float | None]]:
    """mean, median, p95, p99 with bootstrap percentile CIs over samples; max without one.
    `seed`: an int (rows resampled) or a `_stats.RowGroups` of the values' rows (their groups
    resampled with the run's shared draws, science.md §8)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    v = v[ok]
    if v.size == 0:
        return {}
    stats = (
        ("mean", lambda a: a.mean(-1)),
        ("median", lambda a: np.median(a, -1)),
        ("p95", lambda a: np.percentile(a, 95, axis=-1)),
        ("p99", lambda a: np.percentile(a, 99, axis=-1)),
    )
    if isinstance(seed, RowGroups):
        g = seed.subset(np.flatnonzero(ok))
        rows = np.arange(v.size)
        reps = (
            np.array([[f(v[np.repeat(rows, wb.astype(np.int64))]) for _, f in stats] for wb in g.weights(n_boot)])
            if n_boot and g.n_groups >= 2
            else None
        )
    else:
        reps = (
            bootstrap(lambda idx: np.stack([f(v[idx]) for _, f in stats], 1), v.size, n_boot, seed) if n_boot else None
        )
    out: dict[str, tuple[float, float | None, float | None]] = {}
    for j, (name, f) in enumerate(stats):
        lo, hi = percentile_ci(reps[:, j]) if reps is not None else (None, None)
        out[name] = (float(f(v)), lo, hi)
    out["max"] = (float(v.max()), None, None)
    return out
