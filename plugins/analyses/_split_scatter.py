"""An attribute's place under a split (`_split`): its per-mode between-class scatter,
noise-corrected, with a group-preserving label-permutation null and group-bootstrap replicates
(per_type, gradient); and whether a split ranked the attributes as their text says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mch.api import MchError

from ._split_basis import _blocks

if TYPE_CHECKING:
    from ._split import Split


def scatter_terms(
    P: np.ndarray, y: np.ndarray, n_classes: int, W: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-mode between-class scatter S_B,k = Σ_c n_c (μ_ck − μ_k)² and within-class scatter
    S_W,k of the rows P (n, m) with integer labels y, under row weights W (b, n) (None: one
    weighting of ones). Returns (S_B (b, m), S_W (b, m), n (b,))."""
    if W is None:
        W = np.ones((1, len(y)))
    onehot = np.zeros((len(y), n_classes))
    onehot[np.arange(len(y)), y] = 1.0
    n = W.sum(1)
    tot = W @ P  # (b, m)
    sq = W @ (P * P)
    sb = np.zeros_like(tot)
    sw = sq.copy()
    for c in range(n_classes):
        wc = W * onehot[:, c]
        nc = wc.sum(1)
        sc = wc @ P
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(nc[:, None] > 0, sc * sc / np.maximum(nc, 1e-300)[:, None], 0.0)
        sb += part
        sw -= part
    with np.errstate(invalid="ignore", divide="ignore"):
        sb -= tot * tot / n[:, None]
    return sb, sw, n


def corrected(sb: np.ndarray, sw: np.ndarray, n: np.ndarray, n_classes: int) -> np.ndarray:
    """S_B minus its expectation when the classes carry nothing: (C − 1)/(n − C) · S_W."""
    return sb - ((n_classes - 1) / np.maximum(n - n_classes, 1))[:, None] * sw


def _plugin_null(
    P: np.ndarray, ms: np.ndarray, Yp: np.ndarray, C: int, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in between-class scatter in the MS modes and in all kept modes for each row of
    permuted labels Yp (R, n) of the rows P (n, m)."""
    n = P.shape[0]
    tot2 = P.sum(0) ** 2 / n
    eye = np.eye(C)
    ms_out, all_out = np.empty(Yp.shape[0]), np.empty(Yp.shape[0])
    for s in _blocks(Yp.shape[0], chunk):
        oh = eye[Yp[s]]  # (r, n, C)
        sums = np.matmul(oh.transpose(0, 2, 1), P)  # (r, C, m)
        nc = oh.sum(1)  # (r, C)
        with np.errstate(invalid="ignore", divide="ignore"):
            sb = np.where(nc[..., None] > 0, sums * sums / np.maximum(nc, 1e-300)[..., None], 0.0).sum(1) - tot2
        ms_out[s] = (sb * ms).sum(1)
        all_out[s] = sb.sum(1)
    return ms_out, all_out


@dataclass
class AttributeShares:
    """Where one attribute's class scatter sits under a split (pooled over its directions)."""

    var_frac_MS: float  # noise-corrected
    var_frac_TA: float
    var_frac_MS_plugin: float  # the plug-in (uncorrected) share: the permutation test's statistic
    weighted_alpha: float  # Σ_k d_k α̃_k / Σ_k d_k (noise-corrected scatter weights)
    signal_fraction: float  # corrected / plug-in total scatter in the kept modes
    p_value: float | None  # permutation p of the plug-in MS share (group structure kept)
    null_mean: float | None
    null_q: tuple[float, float] | None
    n_rows: int
    boot: dict[str, np.ndarray] = field(default_factory=dict)
    n_groups: int | None = None  # the bootstrap's groups among the labelled rows (None: no replicates)


def attribute_shares(
    split: Split,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    n_perm: int = 0,
    n_boot: int = 0,
    seed: int = 0,
    names: Sequence[str] = (),
    boot_groups: np.ndarray | None = None,
) -> AttributeShares | None:
    """The attribute's scatter under `split` (rows: the run's rows; '' = unlabelled), with a
    label-permutation null (labels permuted across `groups`, `_stats.permute_labels_by_group`)
    and group-bootstrap replicates (`_stats.group_resamples`, seeded by `names`) of
    `boot_groups` (the attribute's bootstrap key, `_stats.attribute_groups`: its declared
    cluster key where the dataset gives one, science.md §8), default `groups`."""
    from ._stats import group_codes, group_resamples, permute_labels_by_group, resample_seed

    labels = np.asarray(labels).astype(str)
    lab = labels != ""
    classes = np.unique(labels[lab])
    C = len(classes)
    if C < 2:
        return None
    y_all = np.full(len(labels), -1)
    y_all[lab] = np.searchsorted(classes, labels[lab])
    gcodes = group_codes(groups, len(labels))[0] if groups is not None else np.arange(len(labels))
    bcodes = gcodes if boot_groups is None else group_codes(np.asarray(boot_groups), len(labels))[0]
    sel = []  # per direction: (eval positions labelled, P rows)
    for d in split.directions:
        if d.P is None:
            raise MchError("attribute_shares needs the split computed with scores=True")
        keep = lab[d.eval]
        sel.append((keep, d.eval[keep]))

    def pooled(y_of: np.ndarray, W_of=None) -> tuple[np.ndarray, ...]:
        ms_c = tot_c = ms_p = tot_p = wa = 0.0
        for d, (keep, rows) in zip(split.directions, sel, strict=True):
            W = None if W_of is None else W_of(rows)
            sb, sw, n = scatter_terms(d.P[keep], y_of[rows], C, W)
            dc = corrected(sb, sw, n, C)
            ms_c = ms_c + (dc * d.ms).sum(1)
            tot_c = tot_c + dc.sum(1)
            ms_p = ms_p + (sb * d.ms).sum(1)
            tot_p = tot_p + sb.sum(1)
            wa = wa + (dc * np.nan_to_num(d.alpha)).sum(1)
        return ms_c, tot_c, ms_p, tot_p, wa

    ms_c, tot_c, ms_p, tot_p, wa = (float(x[0]) for x in pooled(y_all))
    nan = float("nan")
    share = ms_c / tot_c if tot_c > 0 else nan
    plug = ms_p / tot_p if tot_p > 0 else nan
    p_value = null_mean = null_q = None
    n_groups_l = len(np.unique(gcodes[lab]))
    if n_perm and n_groups_l >= 2:
        rng = np.random.default_rng(resample_seed(seed, *names, "permutation"))
        rows_l = np.flatnonzero(lab)
        sub, n_sub = group_codes(gcodes[rows_l].astype(str))
        perms = np.empty((n_perm + 1, len(rows_l)), dtype=np.int64)
        perms[0] = y_all[rows_l]  # row 0: the observed labels, through the same arithmetic as the null
        for r in range(1, n_perm + 1):  # one row per group: a plain permutation (the same law, no Python loop)
            perms[r] = (
                y_all[rows_l][rng.permutation(len(rows_l))]
                if n_sub == len(rows_l)
                else permute_labels_by_group(y_all[rows_l], sub, rng)
            )
        pos = np.full(len(labels), -1)
        pos[rows_l] = np.arange(len(rows_l))
        ms_n = np.zeros(n_perm + 1)
        tot_n = np.zeros(n_perm + 1)
        for d, (keep, rows) in zip(split.directions, sel, strict=True):
            a, b = _plugin_null(d.P[keep], d.ms, perms[:, pos[rows]], C)
            ms_n += a
            tot_n += b
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = np.where(tot_n > 0, ms_n / tot_n, np.nan)
        obs, null = stat[0], stat[1:]
        ok = null[np.isfinite(null)]
        p_value = float((1 + (ok >= obs).sum()) / (1 + len(ok))) if np.isfinite(obs) else None
        null_mean = float(ok.mean()) if len(ok) else None
        null_q = (float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975))) if len(ok) else None
    boot: dict[str, np.ndarray] = {}
    n_boot_groups = len(np.unique(bcodes[lab]))
    if n_boot and n_boot_groups >= 2:
        G = int(bcodes.max()) + 1
        counts = group_resamples(G, n_boot, resample_seed(seed, *names)).counts
        bms = np.empty(n_boot)
        bwa = np.empty(n_boot)
        for s in _blocks(n_boot, 64):
            W_of = lambda rows, s=s: counts[s][:, bcodes[rows]].astype(np.float64)  # noqa: E731
            a, b, _, _, w = pooled(y_all, W_of)
            with np.errstate(invalid="ignore", divide="ignore"):
                bms[s] = np.where(b > 0, a / b, np.nan)
                bwa[s] = np.where(b > 0, w / b, np.nan)
        boot = {"var_frac_MS": bms, "var_frac_TA": 1 - bms, "weighted_alpha": bwa}
    return AttributeShares(
        var_frac_MS=share,
        var_frac_TA=1 - share if np.isfinite(share) else nan,
        var_frac_MS_plugin=plug,
        weighted_alpha=wa / tot_c if tot_c > 0 else nan,
        signal_fraction=tot_c / tot_p if tot_p > 0 else nan,
        p_value=p_value,
        null_mean=null_mean,
        null_q=null_q,
        n_rows=int(lab.sum()),
        boot=boot,
        n_groups=n_boot_groups if boot else None,
    )


def known_truth(attributes: Mapping[str, Any], ms_share: Mapping[str, float]) -> dict[str, Any] | None:
    """Did a split put every attribute the paired text names (text_describable: what the
    decoder was trained to read) below every hidden one in MS share? None without both kinds."""
    read = [a for a, at in attributes.items() if getattr(at, "text_describable", False) and a in ms_share]
    hidden = [a for a, at in attributes.items() if not getattr(at, "text_describable", False) and a in ms_share]
    vals = {a: ms_share[a] for a in read + hidden}
    if not read or not hidden or not all(np.isfinite(v) for v in vals.values()):
        return None
    ok = max(vals[a] for a in read) < min(vals[a] for a in hidden)
    return {"text_describable": read, "hidden": hidden, "recovered": bool(ok)}
