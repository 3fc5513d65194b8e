"""`distances`: how far apart the modal and text laws are (science.md §3): MMD², linear CKA,
exact and sliced W1 per stage, on pooled vectors of the modal view and of the paired text.

default: at the decoder input `adapter` (against the text's decoder input), the middle LLM
layer and `llm.final`, the same pairs at every stage; the estimators, the permutation null and
the m-out-of-n subsample CIs are `_distances`'. `paper` is the reference's script 05 (below):
hooks = the stages shared with the reference's text file (llm.16 and llm.final), all-zero rows
dropped, one `default_rng(42)` used in its order (MMD subsample, σ² from the first 500 + 500
rows, 200 + 200 with-replacement index draws; CKA on *independently* subsampled rows; W1 on
fresh subsamples with the PCA refitted per replicate), percentile CIs, and `CKA_cross_stage`
(encoder vs adapter) when both exist.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._distances import (  # the names a caller (and the tests) read through distances, re-exported
    compare,
    emd_w1 as emd_w1,
    linear_cka,
    mmd2_many as mmd2_many,
    pooled_gram as pooled_gram,
    sliced_w1_many as sliced_w1_many,
    sq_dists_from_gram as sq_dists_from_gram,
)
from ._linalg import _blocks
from ._params import as_list, check_params, middle_llm_stage, need_stage

REF_NAMES = {"encoder": "encoder_output", "adapter": "adapter_output", "llm.final": "llm_final"}


def ref_name(stage: str) -> str:
    if stage.startswith("llm.") and stage[4:].isdigit():
        return f"llm_hidden_{stage[4:]}"
    return REF_NAMES.get(stage, stage)


# --------------------------------------------------------------------------- paper protocol


class NonzeroRows:
    """The reference's `X[np.any(X != 0, axis=1)].astype(float64)` without the copy: the
    indices of the nonzero rows (found in row blocks), and float64 rows made only for the
    rows a subsample takes. The same rows and values as the eager copy, so the same numbers;
    memory O(n_subsample * d) instead of two float64 copies of every stage at large N."""

    def __init__(self, X: Any):
        self.X = X
        keep = [np.flatnonzero(np.any(np.asarray(X[s]) != 0, axis=1)) + s.start for s in _blocks(X.shape[0])]
        self.rows = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray | None = None) -> np.ndarray:
        rows = self.rows if idx is None else self.rows[idx]
        return np.asarray(self.X[rows]).astype(np.float64)


def _ref_subsample(X: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(X) <= n:
        return X.take() if isinstance(X, NonzeroRows) else X
    idx = rng.choice(len(X), size=n, replace=False)
    return X.take(idx) if isinstance(X, NonzeroRows) else X[idx]


def _ref_w1(X: np.ndarray, Y: np.ndarray, pca_dim: int, seed: int) -> float:
    from sklearn.decomposition import PCA

    from ._w1 import exact_w1

    comb = np.concatenate([X, Y])
    pca = PCA(n_components=min(pca_dim, comb.shape[1], comb.shape[0]), random_state=seed).fit(comb)
    return exact_w1(pca.transform(X), pca.transform(Y))


def paper_hook(
    Xm: Any, Xt: Any, rng: np.random.Generator, n_subsample: int, pca_dim: int, n_bootstrap: int, pca_seed: int
) -> list[dict[str, Any]]:
    """Script 05 for one hook, consuming `rng` in the reference's order."""
    from scipy.spatial.distance import cdist

    rows = []
    # MMD²: σ² fixed from the first 500 + 500 subsampled rows; with-replacement bootstrap
    Xs, Ys = _ref_subsample(Xm, n_subsample, rng), _ref_subsample(Xt, n_subsample, rng)
    comb = np.concatenate([Xs[:500], Ys[:500]])
    dd = cdist(comb, comb, metric="sqeuclidean")
    sigma_sq = float(np.median(dd[np.triu_indices_from(dd, k=1)]))
    Z = np.concatenate([Xs, Ys])
    K = np.exp(-cdist(Z, Z, metric="sqeuclidean") / (2.0 * sigma_sq))  # entries equal the reference's per pair
    nx, ny = len(Xs), len(Ys)

    def mmd(ix: np.ndarray, iy: np.ndarray) -> float:
        Kxx = K[np.ix_(ix, ix)]
        Kyy = K[np.ix_(nx + iy, nx + iy)]
        Kxy = K[np.ix_(ix, nx + iy)]
        np.fill_diagonal(Kxx, 0.0)
        np.fill_diagonal(Kyy, 0.0)
        n, m = len(ix), len(iy)
        return float(Kxx.sum() / (n * (n - 1)) + Kyy.sum() / (m * (m - 1)) - 2.0 * Kxy.sum() / (n * m))

    point = mmd(np.arange(nx), np.arange(ny))
    bx = [rng.choice(nx, size=nx, replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(ny, size=ny, replace=True) for _ in range(n_bootstrap)]
    boot = np.array([mmd(bx[i], by[i]) for i in range(n_bootstrap)])
    rows.append(
        {
            "metric": "MMD2",
            "value": point,
            "ci_lower": float(np.percentile(boot, 2.5)),
            "ci_upper": float(np.percentile(boot, 97.5)),
        }
    )
    # CKA on independently subsampled rows (the reference's defect: the pairing is lost)
    n_cka = min(len(Xm), len(Xt), n_subsample)
    rows.append(
        {
            "metric": "CKA",
            "value": linear_cka(_ref_subsample(Xm, n_cka, rng), _ref_subsample(Xt, n_cka, rng)),
            "ci_lower": None,
            "ci_upper": None,
        }
    )
    # W1 on fresh subsamples, PCA refitted on every replicate
    Xw, Yw = _ref_subsample(Xm, n_subsample, rng), _ref_subsample(Xt, n_subsample, rng)
    point = _ref_w1(Xw, Yw, pca_dim, pca_seed)
    bx = [rng.choice(len(Xw), size=len(Xw), replace=True) for _ in range(n_bootstrap)]
    by = [rng.choice(len(Yw), size=len(Yw), replace=True) for _ in range(n_bootstrap)]
    boot = np.array([_ref_w1(Xw[bx[i]], Yw[by[i]], pca_dim, pca_seed) for i in range(n_bootstrap)])
    rows.append(
        {
            "metric": "W1",
            "value": point,
            "ci_lower": float(np.percentile(boot, 2.5)),
            "ci_upper": float(np.percentile(boot, 97.5)),
        }
    )
    return rows


# --------------------------------------------------------------------------- the analysis


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import STAGE, Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "distances",
    stages=Param(list, items=str, pattern=STAGE.pattern, nullable=True),
    n_subsample=Param(int, ge=2),
    pca_dim=Param(int, ge=1),
    n_bootstrap=Param(int, ge=1),
    seed=Param(int, ge=0, le=2**32 - 1),
    max_n=Param(int, ge=2),
    n_perm=Param(int, ge=1),
    n_boot=Param(int, ge=1),
    w1_max_n=Param(int, ge=2),
    w1_n_perm=Param(int, ge=1),
    w1_n_boot=Param(int, ge=1),
    n_directions=Param(int, ge=1),
    subsample_fraction=Param(float, gt=0, lt=1),
)


class Distances(Analysis):
    name = "distances"
    needs_model = False
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        if protocol == "paper":
            return {"stages": None, "n_subsample": 1000, "pca_dim": 256, "n_bootstrap": 200, "seed": 42}
        return {
            "stages": None,
            "max_n": 1000,
            "n_perm": 200,
            "n_boot": 200,
            "w1_max_n": 500,
            "w1_n_perm": 50,
            "w1_n_boot": 50,
            "pca_dim": 256,
            "n_directions": 128,
            "subsample_fraction": 0.5,
        }

    def _stages(self, ctx: Any, treps: Any) -> list[str]:
        shared = [s for s in ctx.reps if s in treps]
        asked = as_list(ctx.params.get("stages"))
        if asked:
            for s in asked:
                need_stage(self.name, ctx.reps, s)
                need_stage(self.name, treps, s, "text")
            return asked
        if ctx.protocol == "paper":  # the reference's text file had only these two hooks
            return sorted((s for s in ("llm.16", "llm.final") if s in shared), key=ref_name)
        out = [s for s in ("adapter", middle_llm_stage(shared), "llm.final") if s in shared]
        return list(dict.fromkeys(out))

    def run(self, ctx: Any) -> AnalysisOutput:
        p = ctx.params
        check_params(self.name, p, self.default_params(ctx.protocol))
        treps = ctx.text_reps()
        stages = self._stages(ctx, treps)
        if not stages:
            raise MchError("analysis 'distances' found no stage shared by the modal and text representations")
        return self._paper(ctx, treps, stages) if ctx.protocol == "paper" else self._default(ctx, treps, stages)

    def _default(self, ctx: Any, treps: Any, stages: list[str]) -> AnalysisOutput:
        p = ctx.params
        frac = float(p["subsample_fraction"])
        if not 0 < frac < 1:
            raise MchError("distances: subsample_fraction must be between 0 and 1")
        metrics, per_stage = [], {}
        N = ctx.reps[stages[0]].shape[0]
        rng = np.random.default_rng(ctx.seed)
        rows = np.sort(rng.choice(N, min(N, int(p["max_n"])), replace=False))  # the same pairs at every stage
        with ctx.progress.task("distances", len(stages)) as advance:
            for i, st in enumerate(stages):
                X, Y = ctx.reps[st], treps[st]
                if X.shape[0] != Y.shape[0]:
                    raise MchError(f"distances: stage {st!r} has {X.shape[0]} modal but {Y.shape[0]} text rows")
                res = compare(
                    X[rows],
                    Y[rows],
                    paired=True,
                    seed=ctx.seed + 1000 * (i + 1),
                    n_perm=int(p["n_perm"]),
                    n_boot=int(p["n_boot"]),
                    w1_max_n=int(p["w1_max_n"]),
                    w1_n_perm=int(p["w1_n_perm"]),
                    w1_n_boot=int(p["w1_n_boot"]),
                    pca_dim=int(p["pca_dim"]),
                    n_directions=int(p["n_directions"]),
                    frac=frac,
                )
                per_stage[st] = res
                for name, r in res.items():
                    n = r.get("n_per_side", len(rows))
                    metrics.append(Metric(name, r["value"], stage=st, ci_low=r["ci_low"], ci_high=r["ci_high"], n=n))
                    metrics.append(Metric(f"{name}_p_value", r["p_value"], stage=st, n=n))
                    metrics.append(Metric(f"{name}_null_mean", r["null_mean"], stage=st, n=n))
                    if name != "MMD2":  # MMD² is unbiased; the others sit above zero at finite n
                        nm = r["null_mean"]
                        metrics.append(
                            Metric(
                                f"{name}_excess",
                                r["value"] - nm,
                                stage=st,
                                ci_low=r["ci_low"] - nm,
                                ci_high=r["ci_high"] - nm,
                                n=n,
                            )
                        )
                advance(1)
        notes = [
            "modal vs text: pooled vectors of the modal view and of the paired text through the same model; at "
            "'adapter' this is the decoder input (adapter output vs the text's input embeddings)",
            f"p-values: permutation null swapping modal/text within pairs (CKA: permuting the pairing); CIs: "
            f"spread of subsamples of {frac:.0%} of the pairs, scaled by sqrt(m/(n-m)), centred on the estimate; "
            f"W1, sliced W1 and CKA are biased upward at finite n: *_null_mean is their value under the null "
            f"and *_excess = value - null_mean",
        ]
        return AnalysisOutput(
            metrics=metrics, summary={"stages": stages, "n": int(len(rows)), "results": per_stage}, notes=notes
        )

    def _paper(self, ctx: Any, treps: Any, stages: list[str]) -> AnalysisOutput:
        p = ctx.params
        rng = np.random.default_rng(int(p["seed"]))
        metrics, table = [], []

        nonzero = NonzeroRows  # the reference's all-zero rows dropped, rows converted when sampled

        with ctx.progress.task("distances (paper)", len(stages)) as advance:
            for st in stages:
                rows = paper_hook(
                    nonzero(ctx.reps[st]),
                    nonzero(treps[st]),
                    rng,
                    int(p["n_subsample"]),
                    int(p["pca_dim"]),
                    int(p["n_bootstrap"]),
                    int(p["seed"]),
                )
                for r in rows:
                    table.append({"hook_point": ref_name(st), **r})
                    metrics.append(
                        Metric(
                            r["metric"],
                            r["value"],
                            stage=st,
                            ci_low=r["ci_lower"],
                            ci_high=r["ci_upper"],
                            n=min(len(ctx.reps[st]), int(p["n_subsample"])),
                        )
                    )
                advance(1)
        if "encoder" in ctx.reps and "adapter" in ctx.reps:
            Xe, Xa = nonzero(ctx.reps["encoder"]), nonzero(ctx.reps["adapter"])
            n_cross = min(len(Xe), len(Xa), int(p["n_subsample"]))
            v = linear_cka(_ref_subsample(Xe, n_cross, rng), _ref_subsample(Xa, n_cross, rng))
            table.append(
                {
                    "hook_point": "encoder_output<->adapter_output",
                    "metric": "CKA_cross_stage",
                    "value": v,
                    "ci_lower": None,
                    "ci_upper": None,
                }
            )
            metrics.append(Metric("CKA_cross_stage", v, stage="encoder<->adapter", n=n_cross))
        notes = [
            "paper protocol: the reference's script 05 (hooks shared with its text file: llm_hidden_16, "
            "llm_final; with-replacement bootstrap CIs, biased away from zero; CKA on independently "
            "subsampled rows, so its pairing is lost)",
            f"text vectors: {ctx.text_source}",
            "PCA: sklearn's default solver with a fixed random_state (the reference left it unseeded)",
        ]
        return AnalysisOutput(metrics=metrics, summary={"stages": stages, "rows": table}, notes=notes)
