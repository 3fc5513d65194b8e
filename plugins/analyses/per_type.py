"""`per_type`: where each attribute's class-separating variance sits, TA or MS (science.md §4).

For every attribute, on the pooled decoder-input vectors (`adapter`) and the TA/MS modes of
the run's split (the same run's samples: basis and attribute come from one dataset):

- `var_frac_MS`, `var_frac_TA`: shares of the between-class scatter
  S_B = Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ along MS and TA modes, tr(U_MSᵀ S_B U_MS) / tr(S_B);
- `weighted_alpha` = Σ_k c_k α_k with c_k = u_kᵀ S_B u_k / tr(S_B);
- `var_frac_ms_p` (default): the share against a label-permutation null;
- `W1_TA_matched`, `W1_MS_matched`: mean W1 between class pairs after projecting on the TA
  (resp. MS) modes and reducing both to the same dimension; `ratio_MS_TA_var`,
  `ratio_MS_TA_w1`;
- `delta_tau` = retention_ratio(encoder) − retention_ratio(llm.final), read from the `probe`
  analysis run earlier in the same run (absent otherwise).

`default` (science.md §4): the split of `_split` (cross-fitted, scale-free, null
threshold), so each direction's scatter is measured on the half its modes were not chosen
on, and pooled over both directions; the scatter is noise-corrected (S_B − (C − 1)/(n − C)
S_W per mode: its expectation when the classes carry nothing is removed), so the shares
are over the class *signal* in the kept modes; `var_frac_ms_p`: the p-value of the plug-in
MS share against labels permuted across the attribute's groups (group structure kept);
CIs from a group bootstrap of the attribute's groups; class-pair W1 on the first
direction's evaluation rows with the same number of rows per class for every pair (half
the smallest class, at most `w1_max_per_class`), both subspaces reduced by PCA to
k = min(n_TA, n_MS, pca_dim) fitted on the pair's rows, CI over `w1_reps` fresh subsamples.

`paper`: the reference's script 06 on this run's vectors: one `default_rng(42)` shared by
Part A (naive W1^τ on the raw adapter vectors, PCA 256, ≤ 20 class pairs, ≤ 500 rows per
class) and Part B (all d modes, λ clipped at 1e-10, text at llm.16/llm.final, uncentred
projections, W1 matched to min(n_MS, 256)), and its Spearman fields. Rows without a label
are dropped (the reference dropped only its "__NONE__" lexical rows).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._linalg import ci, modes, one_blas_thread
from ._params import as_list, check_params, load_pair
from ._split import attribute_shares, check_split_params, known_truth, run_split, split_defaults
from ._stats import attribute_groups
from ._w1 import exact_w1

FIELDS = (
    "var_frac_MS",
    "var_frac_TA",
    "weighted_alpha",
    "W1_TA_matched",
    "W1_MS_matched",
    "ratio_MS_TA_var",
    "ratio_MS_TA_w1",
    "delta_tau",
)
CORRELATIONS = (
    ("var_frac_MS_vs_abs_delta", "var_frac_MS", True),
    ("ratio_var_vs_abs_delta", "ratio_MS_TA_var", True),
    ("ratio_w1_vs_abs_delta", "ratio_MS_TA_w1", True),
    ("weighted_alpha_vs_signed_delta", "weighted_alpha", False),
    ("weighted_alpha_vs_abs_delta", "weighted_alpha", True),
    ("var_frac_MS_vs_signed_delta", "var_frac_MS", False),
)


def delta_tau_from_probe(ctx: Any) -> dict[str, float]:
    """Δτ per attribute from an earlier `probe` in the same run: its `delta_tau` metric, or
    retention_ratio(encoder) − retention_ratio(llm.final)."""
    out: dict[str, float] = {}
    prev = ctx.previous.get("probe")
    if prev is None:
        return out
    ret: dict[tuple[str, str], list[float]] = {}
    for m in prev.metrics:
        if m.attribute is None or m.value is None:
            continue
        if m.metric == "delta_tau":
            out[m.attribute] = float(m.value)
        elif m.metric == "retention_ratio" and m.stage in ("encoder", "llm.final"):
            ret.setdefault((m.attribute, m.stage), []).append(float(m.value))
    for a in {k[0] for k in ret}:
        if a not in out and (a, "encoder") in ret and (a, "llm.final") in ret:
            out[a] = float(np.mean(ret[(a, "encoder")]) - np.mean(ret[(a, "llm.final")]))
    return out


def _attributes(ctx: Any) -> list[str]:
    asked = as_list(ctx.params.get("attributes"))
    for a in asked:
        if a not in ctx.attributes:
            raise MchError(f"per_type: attribute {a!r} is not in this run (it has {', '.join(ctx.attributes)})")
    return asked or list(ctx.attributes)


# --------------------------------------------------------------------------- W1 between classes


def pair_basis(Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(mean, loadings (dims, k)) of the top-k principal components of the rows of Z, from
    their Gram matrix (rows << dims here); loadings None when k reaches the rank of Z, where
    the projection would be an isometry and W1 is unchanged without it."""
    from scipy.linalg import eigh

    mu = Z.mean(0)
    Zc = Z - mu
    n = Zc.shape[0]
    if k >= min(n - 1, Zc.shape[1]):
        return mu, None
    ev, V = eigh(Zc @ Zc.T, subset_by_index=[n - k, n - 1], check_finite=False)
    s = np.sqrt(np.clip(ev, 1e-300, None))
    return mu, (Zc.T @ V) / s


def class_pairs(classes: np.ndarray, max_pairs: int, rng: np.random.Generator) -> list[tuple[Any, Any]]:
    """All pairs for ≤ 6 classes, else `max_pairs` random pairs (the reference's rule)."""
    allp = list(combinations(classes, 2))
    if len(classes) <= 6:
        return allp
    idx = rng.choice(len(allp), size=min(max_pairs, len(allp)), replace=False)
    return [allp[i] for i in idx]


def matched_w1(
    P: np.ndarray,
    coords: dict[str, np.ndarray],
    labels: np.ndarray,
    k: int,
    per_class: int,
    reps: int,
    max_pairs: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Mean class-pair W1 in each subspace of `coords` (name -> the columns of the mode
    coordinates P that span it), every pair with `per_class` rows per class after PCA to k
    dims fitted on all rows of the two classes; one value per replicate (fresh subsamples),
    the same subsamples for every subspace."""
    classes, counts = np.unique(labels, return_counts=True)
    ok = classes[counts >= 2 * per_class] if reps > 1 else classes[counts >= per_class]
    pairs = class_pairs(ok, max_pairs, rng)
    out = {name: np.full(reps, np.nan) for name in coords}
    if not pairs:
        return out
    members = {c: np.flatnonzero(labels == c) for c in ok}
    with one_blas_thread():
        _fill(out, P, coords, members, pairs, k, per_class, reps, rng)
    return out


def _fill(out, P, coords, members, pairs, k, per_class, reps, rng) -> None:
    # every replicate's rows are drawn first (the draw order is replicate, then pair); then
    # each class pair's PCA bases are fitted once, on all rows of the two classes, used for
    # all its replicates and dropped, so only one pair's bases are held at a time
    draws = [
        [
            (rng.choice(members[c1], per_class, replace=False), rng.choice(members[c2], per_class, replace=False))
            for c1, c2 in pairs
        ]
        for _ in range(reps)
    ]
    vals = {name: np.empty((reps, len(pairs))) for name in coords}
    for j, (c1, c2) in enumerate(pairs):
        rows = np.concatenate([members[c1], members[c2]])
        bases = {name: pair_basis(P[np.ix_(rows, cols)], k) for name, cols in coords.items()}
        for r in range(reps):
            pair = P[np.concatenate(draws[r][j])]
            for name, cols in coords.items():
                mu, L = bases[name]
                S = pair[:, cols] - mu
                if L is not None:
                    S = S @ L
                vals[name][r, j] = exact_w1(S[:per_class], S[per_class:])
    for name in coords:
        out[name][:] = vals[name].mean(1)


# --------------------------------------------------------------------------- paper (script 06)


def _ref_subsample(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return X if len(X) <= n else X[rng.choice(len(X), size=n, replace=False)]


def _ref_w1(X: np.ndarray, Y: np.ndarray, pca_dim: int) -> float:
    from sklearn.decomposition import PCA

    comb = np.concatenate([X, Y]).astype(np.float64)
    k = min(pca_dim, comb.shape[1], comb.shape[0])
    if k < 1:
        return float("nan")
    if k < comb.shape[1]:
        pca = PCA(n_components=k, random_state=0).fit(comb)
        X, Y = pca.transform(X), pca.transform(Y)
    return exact_w1(X, Y)


def ref_interclass_w1(
    X: np.ndarray, labels: np.ndarray, pca_dim: int, n_subsample: int, rng: np.random.Generator, max_pairs: int = 20
) -> float:
    """The reference's compute_w1_interclass, consuming `rng` in its order."""
    uniq = np.unique(labels)
    if len(uniq) < 2:
        return float("nan")
    if len(uniq) <= 6:
        pairs = list(combinations(uniq, 2))
    else:
        allp = [(a, b) for i, a in enumerate(uniq) for b in uniq[i + 1 :]]
        pairs = [allp[i] for i in rng.choice(len(allp), size=min(max_pairs, len(allp)), replace=False)]
    vals = []
    for a, b in pairs:
        X1, X2 = X[labels == a], X[labels == b]
        if len(X1) < 5 or len(X2) < 5:
            continue
        n_sub = min(n_subsample // 2, len(X1), len(X2))
        vals.append(_ref_w1(_ref_subsample(X1, n_sub, rng), _ref_subsample(X2, n_sub, rng), pca_dim))
    return float(np.mean(vals)) if vals else float("nan")


def _spearman(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    r = spearmanr(x, y)
    rho, p = float(r[0]), float(r[1])
    return (None if np.isnan(rho) else rho), (None if np.isnan(p) else p)


# --------------------------------------------------------------------------- the analysis


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import STAGE, TEXT_STAGE, Param, declare  # noqa: E402
from ._split import SPLIT_SPECS  # noqa: E402

PARAM_SPECS = declare(
    "per_type",
    stage=STAGE,
    text_stage=TEXT_STAGE,
    attributes=Param(list, items=str, nullable=True),
    pca_dim=Param(int, ge=1),
    n_subsample=Param(int, ge=2),
    seed=Param(int, ge=0, le=2**32 - 1),
    n_boot=Param(int, ge=0, help="group-bootstrap draws for the CIs (0: no CIs)"),
    w1_max_per_class=Param(int, ge=2),
    w1_reps=Param(int, ge=1),
    max_pairs=Param(int, ge=1),
    **SPLIT_SPECS,
)


class PerType(Analysis):
    name = "per_type"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {
                "stage": "adapter",
                "text_stage": None,
                "attributes": None,
                "alpha_threshold": 0.5,
                "pca_dim": 256,
                "n_subsample": 1000,
                "seed": 42,
            }
        return {
            "stage": "adapter",
            "text_stage": None,
            "attributes": None,
            **split_defaults(),
            "n_boot": 200,
            "n_perm": 200,
            "w1_max_per_class": 200,
            "w1_reps": 10,
            "max_pairs": 20,
            "pca_dim": 256,
        }

    def run(self, ctx: Any) -> AnalysisOutput:
        check_params(self.name, ctx.params, self.default_params(ctx.protocol))
        if ctx.protocol == "paper":
            return self._paper(ctx)
        return self._default(ctx)

    # -- default
    def _default(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_split_params(p, self.name)
        stage = p["stage"]
        X, Y, text_stage = load_pair(self.name, ctx, stage, p.get("text_stage"))
        n_boot, n_perm = int(p["n_boot"]), int(p["n_perm"])
        sp = run_split(ctx, X, Y, p, stage=stage, text_stage=text_stage, scores=True)
        d0 = sp.primary
        ta, ms = d0.ta, d0.ms
        n_ta, n_ms = int(ta.sum()), int(ms.sum())
        k_w1 = min(n_ta, n_ms, int(p["pca_dim"]))
        deltas = delta_tau_from_probe(ctx)
        rng = np.random.default_rng(ctx.seed)
        metrics: list[Metric] = []
        table: dict[str, dict[str, Any]] = {}
        for a in _attributes(ctx):
            groups = ctx.groups.get(a)
            bg = attribute_groups(ctx, a).codes  # CIs resample its cluster key where declared (science.md §8)
            kw = {"n_perm": n_perm, "n_boot": n_boot, "seed": int(ctx.seed), "names": (stage, a), "boot_groups": bg}
            with ctx.progress.task(f"per_type: {a} (null, {n_perm} permutations)", None):
                sh = attribute_shares(sp, ctx.labels[a], groups, **kw)
            if sh is None:
                table[a] = {"skipped": "fewer than 2 labelled classes"}
                continue
            res: dict[str, Any] = {
                "var_frac_MS": sh.var_frac_MS,
                "var_frac_TA": sh.var_frac_TA,
                "var_frac_MS_plugin": sh.var_frac_MS_plugin,
                "var_frac_ms_p": sh.p_value,
                "var_frac_MS_null_mean": sh.null_mean,
                "weighted_alpha": sh.weighted_alpha,
                "scatter_signal_fraction": sh.signal_fraction,
            }
            if sh.null_q is not None:
                res["var_frac_MS_null_95"] = list(sh.null_q)
            res["ratio_MS_TA_var"] = (
                sh.var_frac_MS / sh.var_frac_TA
                if np.isfinite(sh.var_frac_TA) and abs(sh.var_frac_TA) > 1e-10
                else float("nan")
            )
            cis: dict[str, tuple[float, float]] = {}
            for f, r in sh.boot.items():
                if np.isfinite(r).sum() > 1 and np.isfinite(res[f]):
                    cis[f] = tuple(float(x) for x in ci(res[f], r))
            # class-pair W1 in the first direction's TA and MS modes, on its evaluation rows
            keep = ctx.labels[a][d0.eval] != ""
            y = ctx.labels[a][d0.eval][keep]
            classes, cnt = np.unique(y, return_counts=True)
            if n_ta and n_ms and len(classes) > 1:
                per_class = int(min(p["w1_max_per_class"], max(2, cnt.min() // 2)))
                w = matched_w1(
                    d0.P[keep],
                    {"TA": np.flatnonzero(ta), "MS": np.flatnonzero(ms)},
                    y,
                    k_w1,
                    per_class,
                    int(p["w1_reps"]),
                    int(p["max_pairs"]),
                    rng,
                )
                for name in ("TA", "MS"):
                    v = w[name]
                    res[f"W1_{name}_matched"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                    if np.isfinite(v).sum() > 1:
                        cis[f"W1_{name}_matched"] = tuple(float(x) for x in np.nanpercentile(v, [2.5, 97.5]))
                rw = w["MS"] / w["TA"]
                res["ratio_MS_TA_w1"] = res["W1_MS_matched"] / res["W1_TA_matched"]
                if np.isfinite(rw).sum() > 1:
                    cis["ratio_MS_TA_w1"] = tuple(float(x) for x in np.nanpercentile(rw, [2.5, 97.5]))
                res["w1_rows_per_class"] = per_class
            if a in deltas:
                res["delta_tau"] = deltas[a]
            table[a] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in res.items()}
            for f in (*FIELDS, "var_frac_MS_plugin", "var_frac_ms_p", "scatter_signal_fraction"):
                if res.get(f) is not None:
                    lo, hi = cis.get(f, (None, None))
                    ng = sh.n_groups if lo is not None and f in sh.boot else None
                    metrics.append(Metric(f, float(res[f]), stage, a, lo, hi, sh.n_rows, ng))
        truth = known_truth(
            ctx.attributes, {a: r["var_frac_MS"] for a, r in table.items() if r.get("var_frac_MS") is not None}
        )
        summary = {
            "stage": stage,
            "text_stage": text_stage,
            "split": sp.record(),
            "n_text_aligned_modes": n_ta,
            "n_modality_specific_modes": n_ms,
            "w1_target_dim": k_w1,
            "n_perm": n_perm,
            "n_boot": n_boot,
            "known_truth": truth,
            "attributes": table,
        }
        notes = [
            "var_frac_MS: the attribute's between-class scatter in the split's MS modes, noise-corrected "
            "((C-1)/(n-C) x within-class scatter subtracted), on each direction's evaluation half, pooled over "
            "both directions (a ratio of sums); it can leave [0, 1] when the corrected scatter is small",
            f"var_frac_ms_p: label-permutation p-value ({n_perm} permutations, labels moved across the "
            "attribute's groups, group structure kept) of the plug-in MS share (var_frac_MS_plugin), the "
            "statistic whose null is stable; a share inside its null says nothing about where the attribute lives",
            "CIs: a group bootstrap over the attribute's groups (evaluation rows reweighted, split held fixed); "
            "W1: the first direction's evaluation rows, spread over fresh equal-size class subsamples",
            "known_truth: whether every attribute the paired text names (text_describable) has a lower MS share "
            "than every hidden one",
        ]
        if not deltas:
            notes.append("delta_tau needs `probe` earlier in the same run (--analysis probe,per_type)")
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)

    # -- paper
    def _paper(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        stage = p["stage"]
        rng = np.random.default_rng(int(p["seed"]))
        pca_dim, n_sub = int(p["pca_dim"]), int(p["n_subsample"])
        attrs = _attributes(ctx)
        deltas = delta_tau_from_probe(ctx)
        Xall = np.asarray(ctx.reps[stage])
        nonzero = np.any(Xall != 0, axis=1)

        def typed(a: str) -> tuple[np.ndarray, np.ndarray] | None:
            keep = nonzero & (ctx.labels[a] != "")
            if keep.sum() < 20:
                return None
            return Xall[keep].astype(np.float64), ctx.labels[a][keep].astype(str)

        # Part A: naive W1^τ on the raw vectors
        naive = {}
        for a in attrs:
            t = typed(a)
            naive[a] = float("nan") if t is None else ref_interclass_w1(t[0], t[1], pca_dim, n_sub, rng)
        # Part B: the directional analysis
        X, Y, text_stage = load_pair(self.name, ctx, stage, p.get("text_stage"))
        m = modes(X, Y, protocol="paper", tau=float(p["alpha_threshold"]), vectors=True)
        ta, ms = m.alpha > m.tau, m.alpha <= m.tau
        n_ta, n_ms = int(ta.sum()), int(ms.sum())
        V = m.eigenvectors
        rows: dict[str, dict[str, float]] = {}
        target = min(n_ms, pca_dim)
        if n_ms:
            for a in attrs:
                t = typed(a)
                if t is None:
                    rows[a] = {f: float("nan") for f in FIELDS[:-1]}
                    rows[a]["delta_tau"] = deltas.get(a, float("nan"))
                    continue
                Xt, lab = t
                mu = Xt.mean(0)
                proj = np.zeros(V.shape[1])  # u_kᵀ S_B u_k for every mode
                tr = 0.0  # tr S_B
                for c in np.unique(lab):
                    sel = lab == c
                    diff = Xt[sel].mean(0) - mu
                    proj += sel.sum() * (diff @ V) ** 2
                    tr += sel.sum() * float(diff @ diff)
                if tr < 1e-15:
                    fm = ft = wa = float("nan")
                else:
                    fm, ft = float(proj[ms].sum() / tr), float(proj[ta].sum() / tr)
                    wa = float(((proj / tr) * m.alpha).sum())
                w_ta = ref_interclass_w1(Xt @ V[:, ta], lab, target, n_sub, rng)
                w_ms = ref_interclass_w1(Xt @ V[:, ms], lab, target, n_sub, rng)
                rows[a] = {
                    "var_frac_MS": fm,
                    "var_frac_TA": ft,
                    "weighted_alpha": wa,
                    "W1_TA_matched": w_ta,
                    "W1_MS_matched": w_ms,
                    "ratio_MS_TA_var": fm / ft if ft > 1e-10 else float("nan"),
                    "ratio_MS_TA_w1": w_ms / w_ta if w_ta > 0 else float("nan"),
                    "delta_tau": deltas.get(a, float("nan")),
                }
        metrics = [Metric("W1_tau", v, stage=stage, attribute=a) for a, v in naive.items()]
        for a, r in rows.items():
            metrics += [Metric(f, r[f], stage=stage, attribute=a) for f in FIELDS]
        summary: dict[str, Any] = {
            "stage": stage,
            "text_stage": text_stage,
            "naive": [{"info_type": a, "W1_tau": naive[a], "delta_tau": deltas.get(a, float("nan"))} for a in attrs],
            "directional": [{"info_type": a, **r} for a, r in rows.items()],
        }
        if rows:
            summary.update(
                alpha_threshold=m.tau, n_text_aligned_modes=n_ta, n_modality_specific_modes=n_ms, w1_target_dim=target
            )
            for name, field, absolute in CORRELATIONS:
                pts = [
                    (r[field], abs(r["delta_tau"]) if absolute else r["delta_tau"])
                    for r in rows.values()
                    if np.isfinite(r[field]) and np.isfinite(r["delta_tau"])
                ]
                if len(pts) >= 3:
                    summary[f"rho_{name}"], summary[f"p_{name}"] = _spearman(*map(list, zip(*pts, strict=True)))
            pts = [(naive[a], deltas[a]) for a in attrs if a in deltas and np.isfinite(naive[a])]
            if len(pts) >= 3:
                summary["rho_naive_w1_vs_delta"], summary["p_naive_w1_vs_delta"] = _spearman(
                    *map(list, zip(*pts, strict=True))
                )
        notes = [
            "paper protocol: the reference's script 06 on this run's vectors (one dataset, so its type = dataset "
            "confound does not arise; all d modes, so null modes enter var_frac_TA and weighted_alpha)",
            "Spearman over at most a handful of attributes, as the reference; no CIs",
        ]
        if not n_ms:
            notes.append(
                "no modality-specific mode (every α above the threshold): like the reference, no directional table"
            )
        if not deltas:
            notes.append("delta_tau needs `probe` earlier in the same run (--analysis probe,per_type)")
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)
