"""Linear probes: information present per (stage, attribute) (science.md §1).

`default`: splits grouped by the attribute's group key (5 seeds), regularisation chosen by
inner grouped cross-validation on the training part only from `C_GRID` (owned here, never by
a plugin: the SUPERB fairness rule), lbfgs run to convergence (reported), accuracy with a
bootstrap 95% CI over test predictions, balanced accuracy, macro-F1, both chance levels, the
held-out cross-entropy and I_probe = H(Y) - CE in bits (a lower bound on I(Y; h)).

`paper`: the reference procedure exactly (analyses-probes-geometry.md §1): 5
StratifiedShuffleSplit 80/20 splits with random_state 42, scaler fitted on train, lbfgs
max_iter 100, C = 1/(1e-4 n_train), chance 1/K; its summary fields and retention numbers.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric, stage_sort_key

C_GRID = (0.001, 0.01, 0.1, 1.0)  # inverse L2 strength on z-scored features, chosen by inner CV
LOG2 = np.log(2.0)


def encode(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows with a label, classes with >= 2 members, encoded in sorted order (the reference's
    LabelEncoder order). Returns (row indices, codes, class names)."""
    rows = np.flatnonzero(labels != "")
    vals = labels[rows].astype(str)
    names, counts = np.unique(vals, return_counts=True)
    keep = set(names[counts >= 2])
    mask = np.array([v in keep for v in vals], dtype=bool)
    rows, vals = rows[mask], vals[mask]
    classes = sorted(set(vals))
    index = {c: i for i, c in enumerate(classes)}
    return rows, np.array([index[v] for v in vals], dtype=np.int64), classes


def entropy_bits(y: np.ndarray, k: int) -> float:
    p = np.bincount(y, minlength=k) / len(y)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000,
                 stat=np.mean) -> tuple[float, float]:
    """Percentile 95% CI of `stat` over resampled rows of `values`."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = stat(values[idx], axis=1) if stat is np.mean else np.array([stat(values[i]) for i in idx])
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _zscore(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    return sc.transform(xtr), sc.transform(xte)


def _fit(x, y, C, max_iter, warm=None):
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(x, y)
    converged = bool(np.all(m.n_iter_ < max_iter))
    return m, converged


def grouped_splits(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int,
                   test_size: float = 0.2) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Group-disjoint train/test splits whose training part holds every class; falls back to
    stratified splits (and says so) when the groups cannot give that."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    k = int(y.max()) + 1
    n_groups = len(np.unique(groups))
    if n_groups >= 5 and n_groups < len(y):
        out = []
        gss = GroupShuffleSplit(n_splits=n_splits * 20, test_size=test_size, random_state=seed)
        for tr, te in gss.split(y, y, groups):
            if len(np.unique(y[tr])) == k and len(te) > 0:
                out.append((tr, te))
            if len(out) == n_splits:
                return out, "grouped"
    sss = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return list(sss.split(np.zeros(len(y)), y)), ("stratified" if n_groups >= len(y) else "stratified-fallback")


def _choose_C(x, y, groups, seed, max_iter) -> tuple[float, bool]:
    """Inner grouped 3-fold CV on the training part: the C with the best held-out log-loss."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    k = int(y.max()) + 1
    n_groups = len(np.unique(groups))
    if 3 <= n_groups < len(y):
        folds = list(GroupKFold(n_splits=3).split(x, y, groups))
    else:
        folds = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=seed).split(x, y))
    scores = {}
    all_conv = True
    for C in C_GRID:
        loss = []
        for tr, va in folds:
            if len(np.unique(y[tr])) < 2:
                continue
            xtr, xva = _zscore(x[tr], x[va])
            m, conv = _fit(xtr, y[tr], C, max_iter)
            all_conv &= conv
            p = np.full((len(va), k), 1e-12)
            p[:, m.classes_] = np.clip(m.predict_proba(xva), 1e-12, 1)
            loss.append(-np.log(p[np.arange(len(va)), y[va]]).mean())
        scores[C] = np.mean(loss) if loss else np.inf
    return min(scores, key=scores.get), all_conv


def probe_default(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, params: dict, seed: int) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    splits, mode = grouped_splits(y, groups, params["n_seeds"], seed)
    correct, ce, bal, f1, conv, Cs = [], [], [], [], [], []
    C = None
    for i, (tr, te) in enumerate(splits):
        if C is None or params["select_C_every_seed"]:
            C, cconv = _choose_C(x[tr], y[tr], groups[tr], seed + i, params["max_iter"])
        xtr, xte = _zscore(x[tr], x[te])
        m, c = _fit(xtr, y[tr], C, params["max_iter"])
        conv.append(c)
        Cs.append(C)
        p = np.full((len(te), k), 1e-12)
        p[:, m.classes_] = np.clip(m.predict_proba(xte), 1e-12, 1)
        pred = p.argmax(1)
        correct.append(pred == y[te])
        ce.append(-np.log(p[np.arange(len(te)), y[te]]) / LOG2)
        bal.append(balanced_accuracy_score(y[te], pred))
        f1.append(f1_score(y[te], pred, average="macro", zero_division=0))
    correct_all, ce_all = np.concatenate(correct), np.concatenate(ce)
    h = entropy_bits(y, k)
    acc = float(np.mean([c.mean() for c in correct]))
    ce_mean = float(np.mean([c.mean() for c in ce]))
    lo, hi = bootstrap_ci(correct_all.astype(float), rng)
    ce_lo, ce_hi = bootstrap_ci(ce_all, rng)
    return {"accuracy": acc, "accuracy_ci": (lo, hi), "balanced_accuracy": float(np.mean(bal)),
            "macro_f1": float(np.mean(f1)), "cross_entropy_bits": ce_mean, "cross_entropy_ci": (ce_lo, ce_hi),
            "i_probe_bits": h - ce_mean, "i_probe_ci": (h - ce_hi, h - ce_lo), "label_entropy_bits": h,
            "converged": bool(all(conv)), "C": Cs, "split_mode": mode, "n_test": int(len(correct_all))}


def probe_paper(x: np.ndarray, y: np.ndarray, k: int) -> dict:
    """The reference's script 03, line for line."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.preprocessing import StandardScaler

    n = len(y)
    n_train = int(np.floor(0.8 * n))
    C = 1.0 / (1e-4 * n_train)
    accs, f1s = [], []
    sss = StratifiedShuffleSplit(n_splits=5, train_size=0.8, random_state=42)
    for tr, te in sss.split(x, y):
        sc = StandardScaler().fit(x[tr])
        m = LogisticRegression(solver="lbfgs", C=C, max_iter=100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(sc.transform(x[tr]), y[tr])
        pred = m.predict(sc.transform(x[te]))
        accs.append(accuracy_score(y[te], pred))
        f1s.append(f1_score(y[te], pred, average="macro", zero_division=0))
    chance = 1.0 / k
    ret = [(a - chance) / (1 - chance) for a in accs]
    return {"accuracies": accs, "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs, ddof=1)),
            "mean_retention": float(np.mean(ret)), "std_retention": float(np.std(ret, ddof=1)),
            "mean_f1": float(np.mean(f1s)), "chance": chance, "n_classes": k, "n_train": n_train,
            "n_test": n - n_train}


class Probe(Analysis):
    name = "probe"

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"min_samples": 20}
        return {"n_seeds": 5, "max_iter": 2000, "select_C_every_seed": False, "min_samples": 20}

    def run(self, ctx) -> AnalysisOutput:
        params = ctx.params
        out = AnalysisOutput(summary={"protocol": ctx.protocol, "per_stage": {}})
        stages = sorted(ctx.stages, key=stage_sort_key)
        acc_at: dict[tuple[str, str], float] = {}
        with ctx.progress.task("probe", len(stages) * len(ctx.attributes)) as advance:
            for attr in ctx.attributes:
                rows, y, classes = encode(ctx.labels[attr])
                k = len(classes)
                if len(rows) < params["min_samples"] or k < 2:
                    out.notes.append(f"{attr}: skipped ({len(rows)} labelled rows, {k} classes)")
                    advance(len(stages))
                    continue
                chance = 1.0 / k
                majority = float(np.bincount(y).max() / len(y))
                out.metrics += [Metric("chance_uniform", chance, None, attr, n=len(rows)),
                                Metric("chance_majority", majority, None, attr, n=len(rows))]
                groups = np.asarray(ctx.groups[attr])[rows]
                for stage in stages:
                    x = np.asarray(ctx.reps[stage][rows], dtype=np.float64)
                    if ctx.protocol == "paper":
                        r = probe_paper(x, y, k)
                        acc_at[(stage, attr)] = r["mean_accuracy"]
                        out.metrics += [Metric("accuracy", r["mean_accuracy"], stage, attr, n=r["n_test"]),
                                        Metric("std_accuracy", r["std_accuracy"], stage, attr),
                                        Metric("retention_ratio", r["mean_retention"], stage, attr),
                                        Metric("f1_macro", r["mean_f1"], stage, attr)]
                    else:
                        r = probe_default(x, y, groups, k, params, ctx.seed)
                        acc_at[(stage, attr)] = r["accuracy"]
                        lo, hi = r["accuracy_ci"]
                        n = r["n_test"]
                        out.metrics += [
                            Metric("accuracy", r["accuracy"], stage, attr, lo, hi, n),
                            Metric("balanced_accuracy", r["balanced_accuracy"], stage, attr, n=n),
                            Metric("macro_f1", r["macro_f1"], stage, attr, n=n),
                            Metric("cross_entropy_bits", r["cross_entropy_bits"], stage, attr, *r["cross_entropy_ci"], n),
                            Metric("i_probe_bits", r["i_probe_bits"], stage, attr, *r["i_probe_ci"], n),
                            Metric("retention_ratio", (r["accuracy"] - chance) / (1 - chance), stage, attr,
                                   (lo - chance) / (1 - chance), (hi - chance) / (1 - chance), n),
                        ]
                        if not r["converged"]:
                            out.notes.append(f"{attr} at {stage}: lbfgs did not converge in {params['max_iter']} iterations")
                    out.summary["per_stage"].setdefault(attr, {})[stage] = {
                        k2: v for k2, v in r.items() if k2 not in ("accuracies",)}
                    advance(1)
                self._attribute_level(out, attr, chance, acc_at)
        return out

    @staticmethod
    def _attribute_level(out: AnalysisOutput, attr: str, chance: float, acc_at: dict) -> None:
        """The four retention numbers, each under its own name (science.md §1)."""
        a_ad, a_fi, a_en = (acc_at.get((s, attr)) for s in ("adapter", "llm.final", "encoder"))
        if a_ad is not None and a_fi is not None:
            retained = 100 * (a_fi - chance) / (a_ad - chance) if a_ad - chance > 1e-3 else None
            out.metrics.append(Metric("retained_pct", retained, None, attr))
        if a_fi is not None:
            out.metrics.append(Metric("final_over_chance", a_fi / chance, None, attr))
        if a_en is not None and a_fi is not None:
            rr = lambda a: (a - chance) / (1 - chance)  # noqa: E731
            out.metrics.append(Metric("delta_tau", rr(a_en) - rr(a_fi), None, attr))
