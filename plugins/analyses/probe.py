"""Linear probes: the information present per (stage, attribute) (science.md §1).

`default`: multinomial logistic regression on z-scored vectors in the stage's principal
axes, lam chosen per outer fold of a grouped 5-fold split by nested CV over a harness-owned
grid, each fit stopped at a certified bound; V-information I_probe against the held-out
intercept-only model, a control task on labels permuted across groups, group-bootstrap CIs
from the held-out predictions. `paper`: the reference's script 03 exactly. How each is
computed, and why the default fit is fast without changing the model it finds:
docs/probe-solver.md.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric, stage_sort_key

from ._linalg import one_blas_thread
from ._params import check_params
from ._probe_cv import (
    Basis,
    FitLog,
    control_labels,
    control_logp,
    heldout_replicates,
    inner_pairs,
    n_workers,
    nested_cv_probe,
    null_nll_bits,
    resample_counts,
    row_order,
    stage_basis,
)
from ._probe_paper import run_paper
from ._probe_records import _ci, _retention, attribute_level, d_over_n_note
from ._softmax import Design
from ._stats import (
    Folds,
    RowGroups,
    attribute_groups,
    encode_labels,
    entropy_bits,
    group_codes,
    grouped_folds,
    groups_identity,
    prior,
    resample_seed,
)

__all__ = ["Basis", "Probe", "attribute_level", "inner_pairs", "stage_basis"]

# The regularisation grid, owned by the harness (never by a model or dataset plugin, so
# every model is probed alike: the SUPERB fairness rule). lam is the per-sample L2 weight on
# z-scored features: objective = mean CE + lam/2 ||W||^2. Half-decades from 1 (weights near
# zero) to 1e-5 (nearly unpenalised); the reference's fixed 1e-4 is on the grid.
LAMBDA_GRID: tuple[float, ...] = tuple(float(10.0 ** (-k / 2)) for k in range(11))

DEFAULT_PARAMS = {
    "n_splits": 5,  # outer folds (every sample tested once)
    "inner_folds": None,  # inner CV folds per outer fold: None = all n_splits - 1; or an even number of neighbours
    "patience": 1,  # grid steps past the best inner CV cross-entropy before the walk stops
    "tol": 1e-5,  # convergence of the outer fits: ||grad||^2 / (2 lam) <= tol (nats above the optimum)
    "inner_tol": 1e-6,  # the same bound for the inner fits: at 1e-4 loose fits ranked too small a lam (toy, n = 100)
    "select_tol": 1e-7,  # each fold's best lam and its neighbours re-solved to this before the choice (null: not)
    "max_iter": 10000,  # L-BFGS iterations per fit (a fit that hits it is reported unconverged)
    "n_bootstrap": 1000,  # group resamples of the held-out predictions for the CIs (science.md §8)
    "control": True,  # the control task: labels permuted across groups, same folds and lam (science.md §1)
    "n_repeats": 1,  # grouped-CV seeds (each sample tested once per seed); their spread enters the CIs
    "retention_chance": "majority",  # chance level c of the retention numbers: majority or uniform
    "min_samples": 20,  # fewer labelled rows: the attribute is skipped (the reference's 20)
    "n_jobs": None,  # threads for the fits (None: usable cores, at most 4); results do not depend on it
}
PAPER_PARAMS = {
    "n_splits": 5,
    "train_size": 0.8,
    "random_state": 42,
    "weight_decay": 1e-4,  # C = 1 / (weight_decay * n_train)
    "max_iter": 100,
    "class_order": "auto",  # auto: rank order for lexical, sorted otherwise; or sorted / declared
    "n_bootstrap": 1000,
    "n_jobs": 1,  # 1: the reference's arithmetic exactly; more: splits run concurrently
}

# Types and ranges beyond what each default says (`mch list params`; mch.api.Param), checked
# before any work. The default protocol also needs n_splits >= 3 and an even inner_folds
# (checked in `preflight`, before any extraction).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "probe",
    n_splits=Param(int, ge=2),
    inner_folds=Param(int, ge=2, nullable=True),
    tol=Param(float, gt=0),
    inner_tol=Param(float, gt=0),
    select_tol=Param(float, gt=0, nullable=True),
    max_iter=Param(int, ge=1),
    n_bootstrap=Param(int, ge=1),
    retention_chance=Param(str, choices=("majority", "uniform")),
    min_samples=Param(int, ge=2),
    n_jobs=Param(int, ge=1, nullable=True),
    train_size=Param(float, gt=0, lt=1),
    random_state=Param(int, ge=0, le=2**32 - 1),
    weight_decay=Param(float, gt=0),
    class_order=Param(str, choices=("auto", "sorted", "declared")),
    control=Param(bool, help="the control task (science.md 1): labels permuted across groups, same folds and lam"),
    n_repeats=Param(int, ge=1, help="grouped-CV seeds; their spread enters the CIs"),
)


@dataclass
class AttrPlan:
    """One attribute's rows, folds (one per grouped-CV seed), control labels and shared resamples."""

    enc: Any
    folds: list[Folds]
    chance: dict[str, float]
    h: float
    info: dict[str, Any]
    groups: RowGroups  # bootstrap groups of the probed rows (science.md §8)
    y_ctrl: np.ndarray | None  # control-task labels, or None (control off or impossible)
    accs: dict[str, float]
    acc_reps: dict[str, np.ndarray]
    resamples: tuple[np.ndarray, np.ndarray] | None = None  # resample_counts of the rows' groups, made once


def _bases_ahead(ctx: Any, stages: list[str], stack: ExitStack) -> Any:
    """(stage, basis) in order, each next stage's basis computed on a thread of its own while
    the caller fits this one's: the eigendecomposition runs on one core, and the fits leave the
    other idle part of each round (at N = 2620 a lockstep batch holds one fit, whose step between
    rounds is serial). Only where a basis is smaller than its stage (N < D, the N x N Gram
    route): for N >= D the coordinates are as large as the stage, and two of them cost issue
    17's bound (review: 2.19x the vectors read on 3 stages of 3000 x 512, 1.78x in turn)."""
    if not stages:
        return
    ex = stack.enter_context(ThreadPoolExecutor(1))

    def start(st: str) -> Any:
        X = ctx.reps[st]
        return ex.submit(stage_basis, X) if X.shape[0] < X.shape[1] else None

    nxt = start(stages[0])
    for i, stage in enumerate(stages):
        basis = nxt.result() if nxt is not None else stage_basis(ctx.reps[stage])
        nxt = start(stages[i + 1]) if i + 1 < len(stages) else None
        yield stage, basis
        basis = None  # the caller's reference is the only one left


class Probe(Analysis):
    """Linear probes per (stage, attribute) under both protocols (docs/probe-solver.md)."""

    name = "probe"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        return dict(PAPER_PARAMS if protocol == "paper" else DEFAULT_PARAMS)

    def preflight(self, params, protocol, samples, attributes) -> None:
        """Before any extraction (default protocol): the fold counts can work, and parameters
        that would skip every attribute the defaults can probe are an error, not an empty table."""
        if protocol == "paper":
            return
        inner = params.get("inner_folds")
        inner_pairs(int(params["n_splits"]), None if inner is None else int(inner))

        def probeable(p: dict[str, Any], counts: list[int]) -> bool:  # _run_default's skip rule
            kept = [c for c in counts if c >= 2]  # classes with one member are dropped
            return (
                len(kept) >= 2 and sum(kept) >= max(p["min_samples"], 2 * p["n_splits"]) and max(kept) >= p["n_splits"]
            )

        counts = {}
        for a, spec in attributes.items():
            labels = [s.labels.get(a, "") for s in samples]
            counts[a] = [labels.count(c) for c in spec.classes]
        if not counts or any(probeable(params, c) for c in counts.values()):
            return
        if any(probeable(DEFAULT_PARAMS, c) for c in counts.values()):
            largest = max((max(c) for c in counts.values() if c), default=0)
            raise MchError(
                f"analysis 'probe': n_splits={params['n_splits']} and min_samples={params['min_samples']} "
                f"leave no attribute to probe on these {len(samples)} samples (an attribute needs "
                f"max(min_samples, 2 n_splits) labelled rows and a class of n_splits; the largest class "
                f"has {largest}); lower --param probe.n_splits or probe.min_samples"
            )

    def run(self, ctx) -> AnalysisOutput:
        params = {**self.default_params(ctx.protocol), **ctx.params}
        check_params(self.name, params, self.default_params(ctx.protocol))
        stages = sorted((s for s in ctx.stages if s in ctx.reps), key=stage_sort_key)
        if not stages:
            raise MchError("the probe has no stage to read: the run extracted no representations")
        if ctx.protocol == "paper":
            return self._run_paper(ctx, params, stages)
        return self._run_default(ctx, params, stages)

    # ------------------------------------------------------------------ default
    def _run_default(self, ctx, p: dict[str, Any], stages: list[str]) -> AnalysisOutput:
        if p["inner_folds"] is not None and not str(p["inner_folds"]).isdigit():
            raise MchError(f"probe parameter inner_folds must be null or an even number, not {p['inner_folds']!r}")
        inner_folds = None if p["inner_folds"] is None else int(p["inner_folds"])
        inner_pairs(int(p["n_splits"]), inner_folds)  # bad fold counts fail before any work
        if p["retention_chance"] not in ("majority", "uniform"):
            raise MchError(
                f"probe parameter retention_chance must be majority or uniform, not {p['retention_chance']!r}"
            )
        if not isinstance(p["control"], bool):
            raise MchError(f"probe parameter control must be true or false, not {p['control']!r}")
        if isinstance(p["n_repeats"], bool) or not str(p["n_repeats"]).isdigit() or int(p["n_repeats"]) < 1:
            raise MchError(
                f"probe parameter n_repeats must be a positive number of grouped-CV seeds, not {p['n_repeats']!r}"
            )
        n_rep = int(p["n_repeats"])
        out = AnalysisOutput(
            summary={
                "protocol": "default",
                "lambda_grid": list(LAMBDA_GRID),
                "objective": "mean cross-entropy + lam/2 ||W||^2 on z-scored vectors",
                "standardisation": "over all samples of the run (no labels used)",
                "retention_chance": p["retention_chance"],
                "i_probe": "V-information: CE of the intercept-only model fitted on the same "
                "training folds minus the probe's CE (held out, bits)",
                "ci": f"percentile, {int(p['n_bootstrap'])} group-bootstrap resamples shared "
                f"with every analysis of the run (science.md §8)",
                "control": bool(p["control"]),
                "n_repeats": n_rep,
                "attributes": {},
            }
        )
        plan: dict[str, AttrPlan] = {}
        for attr, spec in ctx.attributes.items():
            enc = encode_labels(ctx.labels[attr], order=list(spec.classes))
            info: dict[str, Any] = {
                "classes": enc.classes,
                "n": int(len(enc.rows)),
                "n_unlabelled": enc.n_unlabelled,
                "dropped_classes": enc.dropped,
            }
            out.summary["attributes"][attr] = info
            if enc.dropped:
                out.notes.append(f"{attr}: dropped {len(enc.dropped)} classes with a single member")
            largest = int(np.bincount(enc.y).max()) if len(enc.y) else 0
            if (
                len(enc.rows) < max(p["min_samples"], 2 * p["n_splits"])
                or len(enc.classes) < 2
                or largest < int(p["n_splits"])
            ):  # no stratified split into n_splits folds exists
                info["skipped"] = (
                    f"{len(enc.rows)} usable rows in {len(enc.classes)} classes, the largest with "
                    f"{largest} (needs {p['min_samples']} rows and a class of {p['n_splits']})"
                )
                out.notes.append(f"{attr}: skipped ({info['skipped']})")
                continue
            groups = ctx.groups.get(attr)
            g_rows = None if groups is None else np.asarray(groups)[enc.rows]
            folds = [grouped_folds(enc.y, g_rows, p["n_splits"], ctx.seed + r) for r in range(n_rep)]
            k = len(enc.classes)
            # chance levels: 1/K, and the majority class rate of the probed rows
            chance = {"uniform": 1.0 / k, "majority": float(np.bincount(enc.y, minlength=k).max() / len(enc.y))}
            h = entropy_bits(prior(enc.y, k))
            rg = attribute_groups(ctx, attr).subset(enc.rows)
            info.update(
                {
                    "n_classes": k,
                    "split": "grouped" if folds[0].grouped else "stratified",
                    "split_detail": folds[0].reason,
                    "label_entropy_bits": h,
                    "chance_uniform": chance["uniform"],
                    "chance_majority": chance["majority"],
                    "bootstrap_key": rg.key,
                    "n_groups": rg.n_groups,
                    "stages": {},
                }
            )
            if not folds[0].grouped:
                out.notes.append(
                    f"{attr}: splits are not grouped by {ctx.attributes[attr].group_key!r} ({folds[0].reason})"
                )
            y_ctrl = None
            if p["control"]:
                codes, _ = group_codes(g_rows, len(enc.y))
                y_ctrl = control_labels(enc.y, codes, folds, k, resample_seed(ctx.seed, attr, "control"))
                info["control"] = (
                    f"labels permuted across groups of {spec.group_key!r} (group structure kept), "
                    f"same folds, each fold at the lam the real labels chose"
                )
                if y_ctrl is None:
                    info["control"] = "none: no permutation across groups kept every class in every training part"
                    out.notes.append(f"{attr}: no control task ({info['control']})")
            out.metrics += [
                Metric("chance_uniform", chance["uniform"], None, attr, n=len(enc.y)),
                Metric("chance_majority", chance["majority"], None, attr, n=len(enc.y)),
            ]
            out.notes.append(d_over_n_note(attr, len(enc.y), {s: int(np.shape(ctx.reps[s])[1]) for s in stages}))
            plan[attr] = AttrPlan(enc, folds, chance, h, info, rg, y_ctrl, {}, {})
        unconverged: list[str] = []
        # the solver's chunk tasks run on worker threads, each on one BLAS thread: the
        # arithmetic of every product then does not depend on the number of threads
        workers = n_workers(p["n_jobs"])
        out.summary["threads"] = workers
        with ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
            self._fit_stages(ctx, p, stages, plan, unconverged, inner_folds, pool, out)
        for attr, pl in plan.items():
            out.metrics += attribute_level(
                attr,
                pl.chance[p["retention_chance"]],
                pl.accs,
                pl.acc_reps if pl.groups.n_groups >= 2 else None,
                len(pl.enc.y),
                pl.groups.n_groups,
            )
            if pl.groups.n_groups < 10:
                out.notes.append(
                    f"{attr}: its CIs rest on {pl.groups.n_groups} groups of {pl.groups.key!r}"
                    + (" (none: one group cannot be resampled)" if pl.groups.n_groups < 2 else "")
                )
            out.replicates[("_groups", None, attr)] = groups_identity(ctx, pl.groups)
        out.summary["converged"] = not unconverged
        if unconverged:
            out.notes.append(
                f"some fits reached max_iter={p['max_iter']} before the convergence bound: " + ", ".join(unconverged)
            )
        return out

    def _fit_stages(self, ctx, p, stages, plan, unconverged, inner_folds, pool, out) -> None:
        """The nested-CV probes (and control probes) of every (stage, attribute) in `plan`,
        into `out` and the plans."""
        n_boot = int(p["n_bootstrap"])
        with ctx.progress.task("probe", len(stages) * len(plan)) as advance, ExitStack() as bases:
            bases.enter_context(one_blas_thread())  # held until the basis thread below has stopped
            for stage, basis in _bases_ahead(ctx, stages if plan else [], bases):
                for attr, pl in plan.items():
                    enc, k = pl.enc, len(pl.enc.classes)
                    log, clog = FitLog(), FitLog()
                    runs, ctrl_runs, lam_runs, curve_runs = [], [], [], []
                    for folds in pl.folds:
                        order = np.argsort(folds.fold, kind="stable")  # the design's row order
                        design = Design(basis.arrange(enc.rows[order]), folds.fold, enc.y, k, ordered=True)
                        with one_blas_thread():
                            logp_d, lams, curves = nested_cv_probe(
                                design,
                                LAMBDA_GRID,
                                int(p["patience"]),
                                float(p["tol"]),
                                int(p["max_iter"]),
                                log,
                                float(p["inner_tol"]),
                                inner_folds,
                                pool,
                                None if p["select_tol"] is None else float(p["select_tol"]),
                            )
                            ctrl_d = (
                                None
                                if pl.y_ctrl is None
                                else control_logp(
                                    design, pl.y_ctrl, lams, float(p["tol"]), int(p["max_iter"]), clog, pool
                                )
                            )
                        runs.append({"logp": row_order(logp_d, design), "null": null_nll_bits(enc.y, folds.fold, k)})
                        if ctrl_d is not None:
                            ctrl_runs.append(
                                {"logp": row_order(ctrl_d, design), "null": null_nll_bits(pl.y_ctrl, folds.fold, k)}
                            )
                        lam_runs.append(lams)
                        curve_runs.append(curves)
                        del design
                    if pl.resamples is None:  # the attribute's resamples: the same at every stage
                        pl.resamples = resample_counts(pl.groups, n_boot)
                    with one_blas_thread():  # small products: a waiting BLAS thread costs more than it gives
                        pt, reps = heldout_replicates(enc.y, k, pl.h, runs, pl.resamples)
                        self._stage_metrics(out, stage, attr, pl, p, pt, reps, ctrl_runs, pl.resamples)
                    pl.accs[stage] = pt["accuracy"]
                    pl.acc_reps[stage] = reps["accuracy"]
                    pl.info["stages"][stage] = {
                        "lambda": lam_runs[0] if len(lam_runs) == 1 else lam_runs,
                        "inner_cv": curve_runs[0] if len(curve_runs) == 1 else curve_runs,
                        "rank": basis.rank,
                        "dim": basis.dim,
                        "null_cross_entropy_bits": pt["null_cross_entropy_bits"],
                        "fits": log.n_fits,
                        "converged": log.n_converged == log.n_fits,
                        "n_unconverged": log.n_fits - log.n_converged,
                        "max_evals": log.max_evals,
                        "total_evals": log.n_evals,
                        "max_gap_bound_nats": log.max_gap,
                    }
                    if ctrl_runs:
                        pl.info["stages"][stage]["control_fits"] = {
                            "fits": clog.n_fits,
                            "converged": clog.n_converged == clog.n_fits,
                            "total_evals": clog.n_evals,
                            "max_gap_bound_nats": clog.max_gap,
                        }
                    if log.n_converged < log.n_fits or clog.n_converged < clog.n_fits:
                        unconverged.append(f"{attr}@{stage}" + (" (control)" if log.n_converged == log.n_fits else ""))
                    advance(1)
                del basis

    @staticmethod
    def _stage_metrics(out, stage, attr, pl, p, pt, reps, ctrl_runs, w) -> None:
        n, ng = len(pl.enc.y), pl.groups.n_groups
        c = pl.chance[p["retention_chance"]]

        def m(name: str, value: float, rep: np.ndarray) -> Metric:
            lo, hi = _ci(rep) if ng >= 2 else (None, None)  # one group: nothing to resample
            return Metric(name, value, stage, attr, lo, hi, n, ng if lo is not None else None)

        out.metrics += [
            m(key, pt[key], reps[key])
            for key in (
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "cross_entropy_bits",
                "i_probe_bits",
                "i_probe_prior_bits",
            )
        ]
        out.metrics.append(m("retention_ratio", _retention(pt["accuracy"], c), _retention(reps["accuracy"], c)))
        for key in ("accuracy", "i_probe_bits"):
            out.replicates[(key, stage, attr)] = reps[key]
        if ctrl_runs:
            cpt, creps = heldout_replicates(pl.y_ctrl, len(pl.enc.classes), pl.h, ctrl_runs, w)
            out.metrics += [
                m("control_accuracy", cpt["accuracy"], creps["accuracy"]),
                m("control_i_probe_bits", cpt["i_probe_bits"], creps["i_probe_bits"]),
                m("selectivity", pt["accuracy"] - cpt["accuracy"], reps["accuracy"] - creps["accuracy"]),
            ]
            if pt["i_probe_bits"] <= cpt["i_probe_bits"]:
                out.notes.append(
                    f"{attr}@{stage}: I_probe {pt['i_probe_bits']:.3f} bits does not exceed its control "
                    f"task's {cpt['i_probe_bits']:.3f}: no evidence of information present"
                )

    def _run_paper(self, ctx, p: dict[str, Any], stages: list[str]) -> AnalysisOutput:
        return run_paper(ctx, p, stages)
