"""What the causal tests (`ablation`, `swap`, `gradient`, science.md §5) share: the TA/MS
eigenmodes of the pooled adapter outputs (§4: under `default` the one split of `_split`,
the same as `modes` and `per_type`), the choice of samples, and forward hooks on the adapter
output that always come off again.

Every intervention goes through `edit_adapter`: a `mch.hooks.Trace` edit of the module at
`stage_map("modal")["adapter"]` that replaces its output z (R, T, D) by f(z) for every
modality token, removed on exit, so the model is unchanged after each intervention.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import MchError, Param, Sample

from ._params import TEXT_STAGE
from ._split import SPLIT_SPECS, check_split_params, split_defaults

PAPER_SEED = 42  # the reference's numpy default_rng(42) (random modes, swap donors)


# --------------------------------------------------------------------------- parameters

RANDOM_SEED = Param(int, ge=0, le=2**32 - 1, nullable=True)  # None: the run seed (`random_seed`)


def causal_specs(**own: Param) -> dict[str, Param]:
    """An analysis's own parameter declarations beside those the causal tests share (which
    samples, how many modes, the text stage, batching, the bootstrap and the run's split)."""
    shared = {
        "n_samples": Param(int, ge=1, nullable=True),
        "n_modes": Param(int, ge=1, nullable=True),
        "text_stage": TEXT_STAGE,
        "batch_size": Param(int, ge=1),
        "n_boot": Param(int, ge=1),
    }
    return {**shared, **own, **SPLIT_SPECS}


def causal_defaults(protocol: str) -> dict[str, Any]:
    """The defaults the causal tests share: 200 samples, batches of 8, 2000 resamples, the
    protocol's text stage; paper: the top-100 modes at raw α < 0.5; default: the run's split."""
    if protocol == "paper":
        modes: dict[str, Any] = {"n_modes": 100, "threshold": 0.5, "alpha_scale": "none"}
    else:
        modes = {"n_modes": None, **split_defaults()}
    return {"n_samples": 200, **modes, "text_stage": None, "batch_size": 8, "n_boot": 2000}


def random_seed(ctx: Any) -> int:
    """The seed of an analysis's random draws (directions, donors): `random_seed` or the run's."""
    p = ctx.params
    return int(p["random_seed"]) if p.get("random_seed") is not None else int(ctx.seed)


# --------------------------------------------------------------------------- eigenmodes


@dataclass
class Modes:
    """Eigenpairs (λ_k, u_k) of Σ_M (pooled adapter outputs), descending, with their
    alignment α_k (see `compute_modes`) and the MS/TA split at `threshold`."""

    mean: np.ndarray  # (d,) mean of the pooled adapter outputs
    eigvals: np.ndarray  # (K,)
    vectors: np.ndarray  # (d, K), column k = u_k
    alpha: np.ndarray  # (K,) as used for the split (trace-normalised when alpha_scale == "trace")
    alpha_raw: np.ndarray  # (K,) u_kᵀ Σ_T u_k / λ_k
    ms: np.ndarray  # (K,) bool: modality-specific
    total_variance: float  # tr Σ_M (all d directions)
    text_total_variance: float
    rows: np.ndarray  # (N, d) the modal rows Σ_M came from (variance along any direction)
    text_stage: str
    threshold: float
    alpha_scale: str
    split: dict[str, Any] | None = None  # the `split` record (default protocol)

    @property
    def ta(self) -> np.ndarray:
        return ~self.ms

    @property
    def kept_variance(self) -> float:
        return float(self.eigvals.sum())

    def variance_along(self, Q: np.ndarray) -> np.ndarray:
        """uᵀ Σ_M u for each column u of Q."""
        P = (self.rows - self.mean) @ Q
        return (P * P).sum(0) / max(len(self.rows) - 1, 1)

    def split_summary(self) -> dict[str, Any]:
        extra = {"split": self.split} if self.split is not None else {}
        return {
            **extra,
            "text_stage": self.text_stage,
            "threshold": self.threshold,
            "alpha_scale": self.alpha_scale,
            "n_modes": int(len(self.eigvals)),
            "n_ms_modes": int(self.ms.sum()),
            "n_ta_modes": int(self.ta.sum()),
            "ms_variance_fraction": float(self.eigvals[self.ms].sum() / self.kept_variance)
            if self.kept_variance > 0
            else None,
            "kept_variance": self.kept_variance,
            "total_variance": self.total_variance,
            "text_total_variance": self.text_total_variance,
        }


def text_stage_for(ctx: Any, protocol: str, override: str | None, quirk_final: bool = False) -> str:
    """Which text-baseline stage gives Σ_T. default: `adapter` (the LLM's input embeddings
    of the paired text, the same space as the modal adapter output); paper: the reference's
    llm_hidden_16 (else llm_final; `_params.paper_text_stage`), or llm.final for script 11's
    quirk (B3)."""
    from ._params import paper_text_stage

    if override:
        return str(override)
    if protocol != "paper":
        return "adapter"
    if quirk_final:
        return "llm.final"
    return paper_text_stage(list(ctx.text_reps()))


def compute_modes(
    ctx: Any,
    protocol: str,
    text_stage: str,
    n_modes: int | None,
    threshold: float = 0.5,
    alpha_scale: str = "none",
    analysis: str = "ANALYSIS",
    params: dict[str, Any] | None = None,
) -> Modes:
    """The TA/MS modes of science.md §4, as the causal tests use them.

    paper: `_linalg.modes`' top `n_modes` (100) modes, all-zero rows dropped, MS = α < τ
    (scripts 11-13; in float64, where 12/13 used float32, W9). default: the split of
    `_split.run_split` with the analysis's split parameters `params` (the same split as
    `modes` and `per_type`): the eigenvectors of its first cross-fit direction, labelled by
    that direction's α̃ and rule, each with the variance of all pooled adapter outputs along
    it (what an edit of these samples removes), largest first; the first `n_modes` of them."""
    from ._linalg import modes as eigenmodes

    if "adapter" not in ctx.reps:
        raise MchError("the causal tests need the `adapter` stage in the store; extract it (no --stage filter)")
    X = np.asarray(ctx.reps["adapter"], dtype=np.float64)
    treps = ctx.text_reps()
    if text_stage not in treps:
        raise MchError(
            f"the text baseline has no stage {text_stage!r}; it has {', '.join(sorted(treps))} "
            f"(choose one with --param {analysis}.text_stage=STAGE)"
        )
    T = np.asarray(treps[text_stage], dtype=np.float64)
    if X.shape[1] != T.shape[1]:
        raise MchError(
            f"the adapter output is {X.shape[1]}-d but the text stage {text_stage!r} is "
            f"{T.shape[1]}-d; choose a text stage of the decoder's width with --param {analysis}.text_stage=STAGE"
        )
    if protocol != "paper":  # the stored arrays themselves: the run's other analyses share their split
        return _split_modes(ctx, ctx.reps["adapter"], treps[text_stage], text_stage, n_modes, params or {})
    X = X[np.any(X != 0, axis=1)]
    T = T[np.any(T != 0, axis=1)]
    m = eigenmodes(X, T, protocol=protocol, tau=threshold, vectors=True, alpha_scale=alpha_scale)
    k = min(int(n_modes or 100), m.n_modes) if protocol == "paper" else min(int(n_modes or m.n_modes), m.n_modes)
    lam, U, alpha = m.eigenvalues[:k], m.eigenvectors[:, :k], m.alpha[:k]
    raw = m.text_variance[:k] / (np.maximum(lam, 1e-10) if protocol == "paper" else lam)
    ms = alpha < threshold if protocol == "paper" else alpha <= threshold
    return Modes(
        mean=np.asarray(m.mean, dtype=np.float64),
        eigvals=lam,
        vectors=U,
        alpha=alpha,
        alpha_raw=raw,
        ms=ms,
        total_variance=float(m.total_variance),
        text_total_variance=float(m.text_total_variance),
        rows=X,
        text_stage=text_stage,
        threshold=float(threshold),
        alpha_scale=alpha_scale,
    )


def _split_modes(ctx: Any, Xs: Any, Ts: Any, text_stage: str, n_modes: int | None, params: dict[str, Any]) -> Modes:
    from ._split import run_split

    sp = run_split(ctx, Xs, Ts, params, stage="adapter", text_stage=text_stage)
    d = sp.primary
    X = np.asarray(Xs, dtype=np.float64)
    U = d.vectors(X)
    mean = X.mean(0)
    P = (X - mean) @ U
    var = (P * P).sum(0) / max(len(X) - 1, 1)
    order = np.argsort(-var, kind="stable")[: int(n_modes) if n_modes else None]
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = d.tv / d.lam
    return Modes(
        mean=mean,
        eigvals=var[order],
        vectors=U[:, order],
        alpha=d.alpha[order],
        alpha_raw=raw[order],
        ms=d.ms[order],
        total_variance=float(sp.total_variance),
        text_total_variance=float(sp.text_total_variance),
        rows=X,
        text_stage=text_stage,
        threshold=float(sp.params["tau"]),
        alpha_scale=str(sp.params["alpha_scale"]),
        split=sp.record(),
    )


def modes_for(ctx: Any, analysis: str, quirk_final: bool = False) -> Modes:
    """The modes `analysis` intervenes on, from its parameters (`ctx.params`): under default
    the split's parameters checked first; the protocol's text stage unless `text_stage` names
    one (`text_stage_for`); then `compute_modes`."""
    p, protocol = ctx.params, ctx.protocol
    if protocol != "paper":
        check_split_params(p, analysis)
    stage = text_stage_for(ctx, protocol, p.get("text_stage"), quirk_final)
    return compute_modes(
        ctx,
        protocol,
        stage,
        p.get("n_modes"),
        float(p.get("threshold", p.get("tau", 0.5))),
        str(p["alpha_scale"]),
        analysis=analysis,
        params=p,
    )


def digest(*arrays: np.ndarray) -> str:
    """Short content hash of arrays (cache keys of model-derived numbers)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.round(np.asarray(a, dtype=np.float64), 10))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- samples


def select_samples(ctx: Any, n: int | None, protocol: str, need_text: bool) -> np.ndarray:
    """Rows of ctx.samples to intervene on. paper: the first n in loader order (the
    reference); default: a seeded random subset. The default loss scores the paired text,
    so samples without one are left out."""
    rows = np.arange(len(ctx.samples))
    if need_text:
        rows = np.array([i for i in rows if (ctx.samples[i].text or "").strip()], dtype=int)
        if len(rows) == 0:
            raise MchError(
                "the default loss scores each sample's paired text (content tokens), and no sample has "
                "one; use --protocol paper (prompt tokens) or a dataset with transcripts/captions"
            )
    if n is not None and len(rows) > int(n):
        if protocol == "paper":
            rows = rows[: int(n)]
        else:
            rows = np.sort(np.random.default_rng(ctx.seed).choice(rows, size=int(n), replace=False))
    return rows


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, int(size))
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ids_digest(samples: Sequence[Sample]) -> str:
    return hashlib.sha256("\0".join(s.sample_id for s in samples).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- hooks


@contextlib.contextmanager
def edit_adapter(model: Any, fn: Callable[[Any], Any]) -> Iterator[None]:
    """Replace the adapter output z by fn(z) while inside (`mch.hooks.Trace`, whose hooks
    always come off)."""
    from mch.hooks import Trace

    path = model.stage_map("modal")["adapter"]
    try:
        trace = Trace(model.module, {"adapter": path}, edit={"adapter": fn})
    except AttributeError:
        raise MchError(f"model {model.spec.name!r}: adapter stage path {path!r} does not resolve") from None
    with trace:
        yield


@contextlib.contextmanager
def frozen(module: Any) -> Iterator[None]:
    """No parameter requires grad while inside (a gradient with respect to an activation then
    builds no parameter graph); the flags are restored after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def adapter_pool(model: Any, batch: Sequence[Sample], protocol: str) -> Any:
    """The adapter stage's Pool (row owner, span masks) for this batch: which rows and
    positions of the adapter output are each sample's modality tokens."""
    return model.prepare(batch, protocol, "modal").pools.get("adapter")


# --------------------------------------------------------------------------- statistics
#
# `seed` below is an int (a row bootstrap: the paper protocol, whose extras keep their
# numbers) or a `_stats.RowGroups` of the rows (the default protocol: every CI resamples
# the run's groups with the shared seed, science.md §8); `sample_groups` picks one.


def sample_groups(ctx: Any, samples: Sequence[Sample]) -> Any:
    """The bootstrap groups of these samples (default protocol: the run's coarsest bootstrap
    key, `_stats.run_groups`, so deltas resample speakers, chapters, actors ... with the seed
    shared by the run's analyses), or the run seed (paper protocol: rows, as before)."""
    if ctx.protocol == "paper":
        return int(ctx.seed)
    from ._stats import run_groups

    pos = {s.sample_id: i for i, s in enumerate(ctx.samples)}
    return run_groups(ctx).subset(np.array([pos[s.sample_id] for s in samples], dtype=np.int64))


def grouped(out: Any, seed: Any) -> Any:
    """Stamp `n_groups` on every metric with a CI (and the key in the summary) when the CIs
    resampled groups."""
    from ._stats import RowGroups

    if isinstance(seed, RowGroups):
        for m in out.metrics:
            if m.ci_low is not None and m.n_groups is None:
                m.n_groups = seed.n_groups
        out.summary["bootstrap"] = {"resamples": "groups", "key": seed.key, "n_groups": seed.n_groups}
    return out


def _weights(seed: Any, n_boot: int) -> np.ndarray | None:
    from ._stats import RowGroups

    if not isinstance(seed, RowGroups):
        return None
    # one group cannot be resampled: no replicates, so no CI rather than a zero-width one
    return seed.weights(int(n_boot)) if seed.n_groups >= 2 else np.zeros((0, len(seed.codes)))


def bootstrap(
    stat: Callable[[np.ndarray], float], n: int, seed: Any, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of stat(rows) over n rows resampled with replacement (paired: the same
    rows for every array the statistic reads), through `_stats.bootstrap`; with groups, each
    resample's rows are its drawn groups' rows, repeated as often as drawn."""
    from ._stats import bootstrap as boot, percentile_ci

    if n < 2:
        return float("nan"), float("nan")
    w = _weights(seed, n_boot)
    if w is not None:
        rows = np.arange(n)
        reps = np.array([stat(np.repeat(rows, wb.astype(np.int64))) for wb in w], dtype=np.float64)
        lo, hi = percentile_ci(reps, level)
    else:
        lo, hi = percentile_ci(boot(lambda idx: np.array([stat(i) for i in idx]), n, int(n_boot), seed), level)
    return (float("nan"), float("nan")) if lo is None else (lo, hi)


def mean_ci(x: np.ndarray, seed: Any, n_boot: int = 2000) -> tuple[float, float, float]:
    from ._stats import bootstrap as boot, percentile_ci, weighted_means

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan"), float("nan")
    w = _weights(seed, n_boot)
    reps = weighted_means(x, w) if w is not None else boot(lambda idx: x[idx].mean(1), len(x), int(n_boot), seed)
    lo, hi = percentile_ci(reps)
    return float(x.mean()), lo if lo is not None else float("nan"), hi if hi is not None else float("nan")


def ratio_of_means_pct(num: np.ndarray, den: np.ndarray, seed: Any, n_boot: int = 2000) -> tuple[float, float, float]:
    """100·mean(num)/mean(den) (the reference's pct change: a ratio of means) and its paired
    bootstrap CI."""
    from ._stats import bootstrap as boot, percentile_ci

    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    point = 100.0 * num.mean() / den.mean() if den.mean() != 0 else float("nan")
    if len(num) < 2:
        return point, float("nan"), float("nan")
    w = _weights(seed, n_boot)
    with np.errstate(divide="ignore", invalid="ignore"):
        if w is not None:
            reps = 100.0 * (w @ num) / (w @ den)
        else:
            reps = boot(lambda idx: 100.0 * num[idx].mean(1) / den[idx].mean(1), len(num), int(n_boot), seed)
    lo, hi = percentile_ci(reps)
    return point, lo if lo is not None else float("nan"), hi if hi is not None else float("nan")


def finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None
