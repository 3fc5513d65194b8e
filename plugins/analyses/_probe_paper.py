"""`--protocol paper`: the reference's script 03 exactly (scaler on each split's training
rows, sklearn lbfgs at C = 1 / (weight_decay n_train), 5 stratified shuffle splits), with
row-bootstrap CIs the reference does not have."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np

from mch.api import AnalysisOutput, MchError, Metric

from ._linalg import one_blas_thread
from ._probe_cv import n_workers
from ._probe_records import _retention, attribute_level, d_over_n_note
from ._stats import bootstrap_classification, encode_labels, entropy_bits, percentile_ci, prior


def paper_split(
    X: np.ndarray, rows: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, weight_decay: float, max_iter: int
) -> dict[str, Any]:
    """The reference's procedure on one split: scaler on train, lbfgs. `X` holds the stage's
    float32 vectors, `rows` the probed rows (y[i] labels X[rows[i]]), `tr`/`te` index y. The
    caller silences warnings (the reference does; `catch_warnings` is not thread-safe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    k = int(y.max()) + 1
    xtr = X[rows[tr]]
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(solver="lbfgs", C=1.0 / (weight_decay * len(tr)), max_iter=max_iter)
    clf.fit(scaler.transform(xtr), y[tr])
    del xtr
    xte = scaler.transform(X[rows[te]])
    pred = clf.predict(xte)
    proba = np.zeros((len(te), k))
    proba[:, clf.classes_] = clf.predict_proba(xte)
    with np.errstate(divide="ignore"):
        nll_bits = -np.log2(proba[np.arange(len(te)), y[te]])
    return {
        "accuracy": float(accuracy_score(y[te], pred)),
        "f1_macro": float(f1_score(y[te], pred, average="macro", zero_division=0)),
        "n_iter": int(np.max(clf.n_iter_)),
        "pred": pred,
        "nll_bits": nll_bits,
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
    }


def paper_splits(y: np.ndarray, n_splits: int, train_size: float, random_state: int):
    from sklearn.model_selection import StratifiedShuffleSplit

    sss = StratifiedShuffleSplit(n_splits=n_splits, train_size=train_size, random_state=random_state)
    return list(sss.split(np.zeros((len(y), 1)), y))


def paper_encode(labels: np.ndarray, attribute: Any, class_order: str):
    """The reference's label filters (script 03): lexical needs >= 5 distinct words and >= 50
    labelled rows; other types >= 20 labels; classes with < 2 members dropped; >= 20 rows
    left. Returns (Encoded, reason skipped or None)."""
    labels = np.asarray(labels).astype(str)
    labelled = labels[labels != ""]
    lexical = attribute.name == "lexical"
    if lexical and (len(np.unique(labelled)) < 5 or len(labelled) < 50):
        return None, f"{len(np.unique(labelled))} distinct words in {len(labelled)} labelled rows (needs 5 and 50)"
    if not lexical and len(labelled) < 20:
        return None, f"{len(labelled)} labelled rows (needs 20)"
    if class_order == "declared" or (class_order == "auto" and lexical):
        enc = encode_labels(labels, order=list(attribute.classes))
    elif class_order in ("sorted", "auto"):
        enc = encode_labels(labels)
    else:
        raise MchError(f"probe parameter class_order must be auto, sorted or declared, not {class_order!r}")
    if len(enc.rows) < 20 or len(enc.classes) < 2:
        return None, f"{len(enc.rows)} rows in {len(enc.classes)} classes after dropping singleton classes"
    return enc, None


def run_paper(ctx, p: dict[str, Any], stages: list[str]) -> AnalysisOutput:
    out = AnalysisOutput(summary={"protocol": "paper", "attributes": {}})
    plan = {}
    for attr, spec in ctx.attributes.items():
        enc, why = paper_encode(ctx.labels[attr], spec, p["class_order"])
        if enc is None:
            out.summary["attributes"][attr] = {"skipped": why}
            out.notes.append(f"{attr}: skipped as the reference would ({why})")
            continue
        splits = paper_splits(enc.y, int(p["n_splits"]), float(p["train_size"]), int(p["random_state"]))
        k = len(enc.classes)
        out.summary["attributes"][attr] = {
            "classes": enc.classes,
            "n": int(len(enc.rows)),
            "n_classes": k,
            "dropped_classes": enc.dropped,
            "chance": 1.0 / k,
            "stages": {},
        }
        out.metrics.append(Metric("chance_uniform", 1.0 / k, None, attr, n=len(enc.y)))
        out.notes.append(d_over_n_note(attr, len(enc.y), {s: int(np.shape(ctx.reps[s])[1]) for s in stages}))
        plan[attr] = (enc, splits)
    accs: dict[str, dict[str, float]] = {a: {} for a in plan}
    # n_jobs = 1: the splits one after another with the process's BLAS threads, as a plain
    # sklearn script runs them. n_jobs > 1: one stage's splits of every attribute run
    # concurrently, each on one BLAS thread (faster for these skinny products; float32
    # BLAS rounding then differs from a multi-threaded run in the coefficients' last bits)
    workers = n_workers(p["n_jobs"])
    out.summary["threads"] = workers
    wd, mi = float(p["weight_decay"]), int(p["max_iter"])
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # the reference silences ConvergenceWarning
        pool = None
        if workers > 1:
            stack.enter_context(one_blas_thread())
            pool = stack.enter_context(ThreadPoolExecutor(workers))
        advance = stack.enter_context(
            ctx.progress.task("probe (paper)", len(stages) * sum(len(sp) for _, sp in plan.values()))
        )
        for stage in stages:
            _paper_stage(ctx, p, stage, plan, accs, pool, wd, mi, out, advance)
    for attr, (enc, _) in plan.items():
        out.metrics += attribute_level(attr, 1.0 / len(enc.classes), accs[attr])
    if plan:
        out.notes.append(
            "paper: each CI averages the row-bootstrap replicates of the 5 splits' test rows as if "
            "the splits were independent; the 80/20 splits overlap (they share rows), so the "
            "intervals understate the estimator's spread (kept as a reference number; the default "
            "protocol's CIs resample groups, science.md §8)"
        )
    return out


def _paper_stage(ctx, p, stage, plan, accs, pool, wd, mi, out, advance) -> None:
    """The reference's probes of every attribute at one stage, into `out` and `accs`."""
    X = np.asarray(ctx.reps[stage], dtype=np.float32)  # a float32 store is read in place, not copied
    jobs = [(attr, tr, te) for attr, (_, splits) in plan.items() for tr, te in splits]
    fits = []
    fit = lambda j: paper_split(X, plan[j[0]][0].rows, plan[j[0]][0].y, j[1], j[2], wd, mi)  # noqa: E731
    for f in pool.map(fit, jobs) if pool is not None else map(fit, jobs):  # in submission order
        fits.append(f)
        advance(1)
    for attr, (enc, splits) in plan.items():
        k = len(enc.classes)
        chance = 1.0 / k
        per = [f for (a, _, _), f in zip(jobs, fits, strict=True) if a == attr]
        a = np.array([s["accuracy"] for s in per])
        f1 = np.array([s["f1_macro"] for s in per])
        ret = (a - chance) / (1 - chance)
        ce = np.array([s["nll_bits"].mean() for s in per])
        h = entropy_bits(prior(enc.y, k))
        # extra: CIs from resampling each split's test rows (the reference has none)
        reps = [
            bootstrap_classification(enc.y[te], s["pred"], s["nll_bits"], k, int(p["n_bootstrap"]), ctx.seed + i)
            for i, ((_, te), s) in enumerate(zip(splits, per, strict=True))
        ]
        acc_ci = percentile_ci(np.mean([r["accuracy"] for r in reps], axis=0))
        ce_rep = np.mean([r["cross_entropy_bits"] for r in reps], axis=0)
        n_test = per[0]["n_test"]
        out.metrics += [
            Metric("accuracy", float(a.mean()), stage, attr, *acc_ci, n_test),
            Metric("std_accuracy", float(a.std(ddof=1)), stage, attr),
            Metric("macro_f1", float(f1.mean()), stage, attr, n=n_test),
            Metric(
                "retention_ratio",
                float(ret.mean()),
                stage,
                attr,
                _retention(acc_ci[0], chance),
                _retention(acc_ci[1], chance),
                n_test,
            ),
            Metric("cross_entropy_bits", float(ce.mean()), stage, attr, *percentile_ci(ce_rep), n_test),
            Metric("i_probe_bits", float(h - ce.mean()), stage, attr, *percentile_ci(h - ce_rep), n_test),
        ]
        accs[attr][stage] = float(a.mean())
        out.summary["attributes"][attr]["stages"][stage] = {
            "accuracies": a.tolist(),
            "f1_macro": f1.tolist(),
            "retention": ret.tolist(),
            "mean_accuracy": float(a.mean()),
            "std_accuracy": float(a.std(ddof=1)),
            "mean_retention": float(ret.mean()),
            "std_retention": float(ret.std(ddof=1)),
            "mean_f1": float(f1.mean()),
            "chance": chance,
            "n_classes": k,
            "n_train": per[0]["n_train"],
            "n_test": n_test,
            "n_iter": [s["n_iter"] for s in per],
            "converged": all(s["n_iter"] < int(p["max_iter"]) for s in per),
        }
