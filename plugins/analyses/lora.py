"""`lora`: the fix, a LoRA on the LLM trained to make one attribute accessible, then measured
again (science.md §6; the reference's script 14, analyses-causal-lora-tables.md §5).

1. Split. default: the attribute's groups (its group key: actor, speaker, ...) are
   partitioned at random (run seed) into train / validation / evaluation groups; training
   and validation samples come from the dataset's `train_split` when it has one (the toy:
   `train`), else from the run's samples; evaluation = the run's samples of the evaluation
   groups, so no clip, actor or speaker the LoRA saw is measured (the reference leaked ~87%
   of its clips into the probe split, B6). paper: the reference's split, a balanced random
   validation set of `eval_per_class` samples per class (rng 42) and training on the rest of
   the run's samples, re-measured on all of them.
2. Train: `_lora_train` (the best-validation adapter is the one evaluated; under paper the
   last epoch's validation accuracy is reported as `post_training_generation_eval`, B5).
3. Measure. The runner runs `rerun` (probe, gmi) twice on the evaluation samples, same store:
   with the base model and with `--adapter <dir>/best`. Reported per (stage, attribute):
   lora_delta_accuracy and lora_delta_gmi_bits. default: the change is paired (the same
   samples and group resamples, science.md §8: replicate b after minus replicate b before),
   and "unchanged" is an equivalence test (TOST, alpha 0.05, every change of an attribute
   inside its declared margin `margin_accuracy`, `margin_gmi_bits`). paper: the paired CI
   alike, no equivalence test.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric, Sample

from ._lora_train import train_lora
from ._params import as_list, check_params
from ._stats import percentile_ci, tost

PAPER_SEED = 42
COMPARED = (("probe", "accuracy", "lora_delta_accuracy"), ("gmi", "gmi_bits", "lora_delta_gmi_bits"))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "lora",
    r=Param(int, ge=1),
    alpha=Param(int, ge=1),
    dropout=Param(float, ge=0, lt=1),
    target_modules=Param(list, items=str),
    lr=Param(float, gt=0),
    batch_size=Param(int, ge=1),
    max_epochs=Param(int, ge=1),
    max_grad_norm=Param(float, gt=0),
    query=Param(str, nullable=True),
    train_split=Param(str, nullable=True),
    n_train=Param(int, ge=1, nullable=True),
    val_fraction=Param(float, gt=0, lt=1),
    eval_fraction=Param(float, gt=0, lt=1),
    eval_per_class=Param(int, ge=1),
    adapter_dir=Param(str, nullable=True),
    rerun=Param(list, items=str),
    margin_accuracy=Param(float, gt=0, le=1, help="TOST equivalence margin for accuracy changes (science.md 6)"),
    margin_gmi_bits=Param(float, gt=0, help="TOST equivalence margin for GMI changes, bits (science.md 6)"),
)


class Lora(Analysis):
    name = "lora"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        p = {
            "attribute": "emotion",
            "r": 16,
            "alpha": 32,
            "dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "lr": 1e-4,
            "weight_decay": 0.01,
            "batch_size": 8,
            "max_epochs": 5,
            "patience": 2,
            "max_grad_norm": 1.0,
            "query": None,
            "train_split": "train",
            "n_train": None,
            "val_fraction": 0.17,
            "eval_fraction": 0.33,
            "eval_per_class": 167,
            "save_every": 200,
            "adapter_dir": None,
            "rerun": ["probe", "gmi"],
            "write_records": True,
            # "unchanged" = equivalent within these declared margins (TOST, science.md §6)
            "margin_accuracy": 0.05,
            "margin_gmi_bits": 0.1,
        }
        if protocol == "paper":
            p["train_split"] = None
        return p

    # ------------------------------------------------------------------ run
    def run(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_params(self.name, p, self.default_params(ctx.protocol))
        attr_name = str(p["attribute"])
        if attr_name not in ctx.attributes:
            raise MchError(
                f"lora trains attribute {attr_name!r}, which this run does not have (it has "
                f"{', '.join(ctx.attributes)}); pass --param lora.attribute=NAME"
            )
        if ctx.run_config is None or ctx.dataset is None:
            raise MchError("lora re-runs the runner and needs the run's configuration; run it through `mch bench`")
        if ctx.run_config.adapter:
            raise MchError("lora trains a LoRA on the base model; run it without --adapter")
        attr = ctx.attributes[attr_name]
        query = str(p["query"]) if p.get("query") else self._query(ctx, attr)
        split = self._split(ctx, attr)
        cfg_key = {
            k: p[k]
            for k in (
                "attribute",
                "r",
                "alpha",
                "dropout",
                "target_modules",
                "lr",
                "weight_decay",
                "batch_size",
                "max_epochs",
                "patience",
                "max_grad_norm",
            )
        }
        cfg_key.update(
            query=query,
            protocol=ctx.protocol,
            seed=ctx.seed,
            model=ctx.run_config.model,
            checkpoint=ctx.run_config.checkpoint,
            train=_hash([s.sample_id for s in split["train"]]),
            val=_hash([s.sample_id for s in split["val"]]),
        )
        out_dir = (
            Path(p["adapter_dir"])
            if p.get("adapter_dir")
            else Path(ctx.run_config.out_dir) / "adapters" / f"{ctx.run_config.model}__{attr_name}__{_hash(cfg_key)}"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "split.json").write_text(
            json.dumps(
                {
                    "attribute": attr_name,
                    "group_key": attr.group_key,
                    "protocol": ctx.protocol,
                    "seed": ctx.seed,
                    **{k: [s.sample_id for s in v] for k, v in split.items()},
                },
                indent=1,
            )
        )
        self.written: list[str] = []
        t0 = time.time()
        state = train_lora(ctx, attr, query, split, cfg_key, out_dir)
        train_s = time.time() - t0
        base, tuned = self._measure(ctx, split["eval"], out_dir / "best")
        return self._output(ctx, attr_name, query, split, state, base, tuned, out_dir, train_s)

    @staticmethod
    def _query(ctx: Any, attr: Any) -> str:
        """The query the gmi analysis uses for this attribute: the attribute's own (gmi has no
        query parameter; `--param lora.query=...` overrides it for the LoRA alone)."""
        return str(attr.query)

    # ------------------------------------------------------------------ split
    def _split(self, ctx: Any, attr: Any) -> dict[str, list[Sample]]:
        p, name = ctx.params, attr.name
        labelled = lambda ss: [s for s in ss if s.labels.get(name, "") in attr.classes]  # noqa: E731
        if ctx.protocol == "paper":  # the reference: balanced random validation set, the rest trains
            pool = labelled(ctx.samples)
            rng = np.random.default_rng(PAPER_SEED)
            val_ids: set[str] = set()
            for c in attr.classes:
                members = [s.sample_id for s in pool if s.labels[name] == c]
                k = min(int(p["eval_per_class"]), max(len(members) // 5, 1 if members else 0))
                val_ids.update(rng.choice(members, size=k, replace=False).tolist() if k else [])
            val = [s for s in pool if s.sample_id in val_ids]
            train = [s for s in pool if s.sample_id not in val_ids]
            return self._check_split({"train": train, "val": val, "eval": list(ctx.samples)}, name)
        pool = list(ctx.samples)
        if p.get("train_split"):
            try:
                pool = ctx.dataset.samples(str(p["train_split"]), p.get("n_train"), ctx.seed, ctx.protocol)
            except MchError:
                pool = list(ctx.samples)  # the dataset has no such split: split the run's samples
            else:
                run_split = getattr(ctx.run_config, "split", None)
                if run_split == p["train_split"]:
                    raise MchError(
                        f"lora: the run measures split {run_split!r}, the same split it would train on; "
                        f"run on another split or pass --param lora.train_split=SPLIT (another split)"
                    )
        key = attr.group_key
        groups = sorted({s.groups[key] for s in list(pool) + list(ctx.samples) if key in s.groups})
        if len(groups) < 3:
            raise MchError(
                f"lora needs at least 3 values of the group key {key!r} of {name!r} (train, validation and "
                f"evaluation groups must differ), got {len(groups)}"
            )
        rng = np.random.default_rng(ctx.seed)
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_eval = max(1, round(float(p["eval_fraction"]) * len(groups)))
        n_val = max(1, round(float(p["val_fraction"]) * len(groups)))
        if n_eval + n_val >= len(groups):
            n_eval, n_val = 1, 1
        g_eval, g_val = set(order[:n_eval]), set(order[n_eval : n_eval + n_val])
        train = [s for s in labelled(pool) if s.groups.get(key) not in g_eval | g_val]
        val = [s for s in labelled(pool) if s.groups.get(key) in g_val]
        ev = [s for s in ctx.samples if s.groups.get(key) in g_eval]
        return self._check_split({"train": train, "val": val, "eval": ev}, name)

    @staticmethod
    def _check_split(split: dict[str, list[Sample]], name: str) -> dict[str, list[Sample]]:
        for k, v in split.items():
            if not v:
                raise MchError(
                    f"lora: the {k} part of the split has no sample labelled for {name!r}; use more samples "
                    f"(--limit) or other split fractions"
                )
        return split

    # ------------------------------------------------------------------ measuring
    def _measure(self, ctx: Any, ev: list[Sample], adapter: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """probe/gmi (`rerun`) on the evaluation samples: base model, then with the adapter."""
        rerun = as_list(ctx.params["rerun"])
        if "lora" in rerun:
            raise MchError("lora cannot re-run itself; --param rerun lists the analyses to measure again")
        results = []
        for adapter_dir in (None, adapter):
            outs, written = ctx.rerun(
                rerun,
                [s.sample_id for s in ev],
                str(adapter_dir) if adapter_dir else None,
                write_records=adapter_dir is not None and bool(ctx.params["write_records"]),
            )
            self.written += [str(w) for w in written]
            results.append(outs)
            _free_memory()
        return results[0], results[1]

    # ------------------------------------------------------------------ output
    def _output(self, ctx, attr_name, query, split, st, base, tuned, out_dir, train_s) -> AnalysisOutput:
        metrics: list[Metric] = []
        table: dict[str, list[dict[str, Any]]] = {}
        notes: list[str] = []
        margins = {"accuracy": float(ctx.params["margin_accuracy"]), "gmi_bits": float(ctx.params["margin_gmi_bits"])}
        test = ctx.protocol != "paper"
        unpaired: set[str] = set()
        for analysis, metric, out_name in COMPARED:
            if analysis not in base or analysis not in tuned:
                continue
            before = {(m.stage, m.attribute): m for m in base[analysis].metrics if m.metric == metric}
            after = {(m.stage, m.attribute): m for m in tuned[analysis].metrics if m.metric == metric}
            rows = []
            for key in sorted(set(before) & set(after), key=lambda k: (str(k[1]), str(k[0]))):
                b, a = before[key], after[key]
                if b.value is None or a.value is None:
                    continue
                d = a.value - b.value
                reps = _paired(base[analysis], tuned[analysis], metric, key)
                lo, hi = percentile_ci(reps) if reps is not None else (None, None)
                if reps is None:
                    unpaired.add(str(key[1]))
                    if None not in (b.ci_low, b.ci_high, a.ci_low, a.ci_high):  # the paper protocol's approximation
                        z = 1.959964
                        se = math.hypot((b.ci_high - b.ci_low) / (2 * z), (a.ci_high - a.ci_low) / (2 * z))
                        lo, hi = d - z * se, d + z * se
                trained = key[1] == attr_name
                eq = tost(reps, margins[metric]) if reps is not None and test and not trained else None
                metrics.append(
                    Metric(
                        out_name,
                        d,
                        key[0],
                        key[1],
                        lo,
                        hi,
                        a.n,
                        a.n_groups if reps is not None and lo is not None else None,
                    )
                )
                rows.append(
                    {
                        "stage": key[0],
                        "attribute": key[1],
                        "before": b.value,
                        "after": a.value,
                        "delta": d,
                        "ci_low": lo,
                        "ci_high": hi,
                        "before_ci": [b.ci_low, b.ci_high],
                        "after_ci": [a.ci_low, a.ci_high],
                        "trained": trained,
                        "n_groups": a.n_groups,
                        **(
                            {
                                "equivalent": eq["equivalent"],
                                "tost_p": eq["p"],
                                "ci90": eq["ci90"],
                                "margin": eq["margin"],
                            }
                            if eq
                            else {}
                        ),
                    }
                )
            table[out_name] = rows
        equivalence: dict[str, Any] = {}
        if test:
            for other in sorted({r["attribute"] for rows in table.values() for r in rows if not r["trained"]}):
                mine = [r for rows in table.values() for r in rows if r["attribute"] == other]
                verdict = bool(mine) and all(r.get("equivalent") is True for r in mine)
                equivalence[other] = {
                    "equivalent": verdict,
                    "n_tests": len(mine),
                    "not_equivalent": [f"{r['stage']}" for r in mine if r.get("equivalent") is not True],
                }
                notes.append(
                    f"{other}: {'unchanged' if verdict else 'not shown unchanged'} (TOST at alpha 0.05, "
                    f"margins accuracy {margins['accuracy']:g}, GMI {margins['gmi_bits']:g} bits; "
                    f"{len(mine)} changes{'' if verdict else ', every one must be inside its margin'})"
                )
        for attr in sorted(unpaired):
            notes.append(
                f"{attr}: no paired replicates (paper protocol, or the two runs drew different resamples): "
                f"its CIs combine the two runs' CIs as independent normals (approximate)"
            )
        metrics.append(Metric("lora_best_val_loss", st["best_val_loss"], None, attr_name, None, None, st.get("n_val")))
        metrics.append(
            Metric("lora_best_epoch", float(st["best_epoch"] or 0), None, attr_name, None, None, st.get("n_train"))
        )
        hist = st["history"]
        best = next((h for h in hist if h["epoch"] == st["best_epoch"]), None)
        summary: dict[str, Any] = {
            "attribute": attr_name,
            "query": query,
            "adapter": str(out_dir / "best"),
            "split_file": str(out_dir / "split.json"),
            "n_train": len(split["train"]),
            "n_val": len(split["val"]),
            "n_eval": len(split["eval"]),
            "best_epoch": st["best_epoch"],
            "best_val_loss": st["best_val_loss"],
            "history": hist,
            "train_seconds": round(train_s, 2),
            "changes": table,
            "val_accuracy_base": hist[0]["val_accuracy"] if hist else None,
            "val_accuracy_best": best["val_accuracy"] if best else None,
        }
        summary["records"] = list(self.written)
        summary["margins"] = margins
        if test:
            summary["equivalence"] = equivalence
        notes = [
            f"evaluated on {len(split['eval'])} samples; LoRA trained on {len(split['train'])} "
            f"(validation {len(split['val'])})",
            *[f"wrote {w} (with the adapter)" for w in self.written],
            "CIs of the changes: paired, from the two runs' shared group resamples (science.md §8), where both "
            "runs kept replicates",
            *notes,
        ]
        if ctx.protocol == "paper":
            summary["baseline_generation_eval"] = _gen_eval(hist[0], split["val"], attr_name) if hist else None
            summary["post_training_generation_eval"] = _gen_eval(hist[-1], split["val"], attr_name) if hist else None
            val_ids = {s.sample_id for s in split["val"]}
            summary["eval_split"] = {
                "val_idx": [i for i, s in enumerate(ctx.samples) if s.sample_id in val_ids],
                "n_total": len(ctx.samples),
                "eval_per_emotion": int(ctx.params["eval_per_class"]),
                "seed": PAPER_SEED,
            }
            notes.append(
                "paper: the reference's split (balanced random validation set, re-measured on every sample, "
                "training clips included, B6); post_training_generation_eval is the last epoch's forced-choice "
                "validation accuracy (the reference's B5), the evaluated adapter is the best epoch's"
            )
        return AnalysisOutput(metrics=metrics, summary=summary, notes=notes)


def _paired(before: AnalysisOutput, after: AnalysisOutput, metric: str, key: tuple) -> np.ndarray | None:
    """Replicates of after - before on the same group resamples, or None when the two runs did
    not draw the same ones (different samples, seed or groups)."""
    stage, attr = key
    rb, ra = before.replicates.get((metric, stage, attr)), after.replicates.get((metric, stage, attr))
    gb, ga = before.replicates.get(("_groups", None, attr)), after.replicates.get(("_groups", None, attr))
    if rb is None or ra is None or gb is None or gb != ga:
        return None
    m = min(len(rb), len(ra))
    return np.asarray(ra[:m]) - np.asarray(rb[:m])


def _free_memory() -> None:
    """Drop a finished run's model before the next one loads (two 7B copies fit, three may not)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _gen_eval(h: dict[str, Any], val: list[Sample], name: str) -> dict[str, Any]:
    """The reference's generation-eval fields, from forced-choice validation accuracy."""
    per = h.get("per_class", {})
    return {
        "accuracy": h["val_accuracy"],
        "correct": sum(v["correct"] for v in per.values()),
        "total": len(val),
        "skipped": 0,
        "per_emotion": per,
        "epoch": h["epoch"],
    }
