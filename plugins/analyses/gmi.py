"""Information accessible to the decoder: GMI of its own scoring rule (science.md §2).

For an attribute Y with classes y_1..y_K, query Q and verbalizers v(y):

    log q(y|x) = logsumexp over v in v(y) of  sum_t log p_LM(v_t | Q(x), v_<t)
                 ("sum"; with normalize="mean" each verbalizer's sum is divided by its
                 token count: a per-token mean)
    GMI(s)     = E_(x,y)[ s log q(y|x) - log sum_y' P(y') q(y'|x)^s ]     (bits)
    GMI        = max over s >= 0 of GMI(s)

P(y) is the label prior of the evaluated samples (the labelled ones). GMI(0) = 0, so
GMI >= 0; GMI(s) is concave (a log-sum-exp of lines in s is convex), so s* is the root of
its decreasing derivative, found by bracketing and Brent's method. A decoder that ranks
the true class first on every sample has GMI rising to H(Y) as s grows: s* is then where
the curve is flat to float precision, or s_max if it is still rising there (said in the
notes).

Uncertainty: a percentile bootstrap over samples (P(y) held at the evaluated prior): each
replicate's maximum over s is taken on a fixed grid that is dense around s*, exact to
second order because the curve is flat at its maximum.

Scores come from the model plugin's `score` (media + query, every verbalizer of every
class as a continuation, shared-prefix batching inside the plugin), batched by
`batch_size` and stored through `ctx.cached`, so a second run never loads the model.

Metrics: `gmi_bits` at stage `llm.final` (the decoder's scoring rule reads llm.final), with
CI; `s_star`; `accessibility` = GMI / I_probe at every stage the probe covered, when
`probe` ran earlier in the same run (science.md names adapter and llm.final; every stage
is given; no CI, the two estimates come from different resamplings); `text_gmi_bits` (and
`text_s_star`): the same with the paired text in place of the modality (view "text"), for
attributes the text describes, over the samples whose text is not empty. The summary holds
the per-class confusion of argmax q, the prior, s*, and the normalisation.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._params import check_params
from ._stats import LN2, confusion, entropy_bits, percentile_ci

DEFAULT_PARAMS = {
    "batch_size": 16,         # samples per score() call
    "normalize": "sum",       # sum or mean (per token) of a verbalizer's log-probs
    "text_reference": True,   # also score the paired text, for attributes the text describes
    "n_bootstrap": 1000,
    "s_max": 1e4,             # upper end of the search over s
}

# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare("gmi", batch_size=Param(int, ge=1), normalize=Param(str, choices=("sum", "mean")),
                      n_bootstrap=Param(int, ge=1), s_max=Param(float, gt=0))


# --------------------------------------------------------------------------- the numbers


def class_log_q(logp: np.ndarray, n_tokens: np.ndarray, spans: Sequence[tuple[int, int]],
                normalize: str = "sum") -> np.ndarray:
    """(N, K) log q(y|x) from (N, M) continuation log-probs; class k owns columns spans[k]."""
    from scipy.special import logsumexp

    lp = np.asarray(logp, dtype=np.float64)
    if normalize == "mean":
        lp = lp / np.broadcast_to(np.asarray(n_tokens, dtype=np.float64), lp.shape)
    elif normalize != "sum":
        raise MchError(f"gmi parameter normalize must be sum or mean, not {normalize!r}")
    return np.stack([logsumexp(lp[:, a:b], axis=1) for a, b in spans], axis=1)


def _log_prior(prior: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(prior, dtype=np.float64))  # -inf for an absent class: it drops out


def gmi_terms(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s: float) -> np.ndarray:
    """Per-sample s log q(y|x) - log sum_y' P(y') q(y'|x)^s, in nats."""
    from scipy.special import logsumexp

    z = s * logq + _log_prior(prior)[None, :]
    return s * logq[np.arange(len(y)), y] - logsumexp(z, axis=1)


def gmi_bits(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s: float) -> float:
    """GMI(s) in bits."""
    return float(gmi_terms(logq, y, prior, s).mean() / LN2)


def gmi_slope(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s: float) -> float:
    """dGMI/ds (nats): E[log q(y|x) - E_pi_s log q(.|x)], pi_s(y') ∝ P(y') q(y'|x)^s."""
    from scipy.special import softmax

    lq = np.where(np.isfinite(logq), logq, -1e300)
    pi = softmax(s * lq + _log_prior(prior)[None, :], axis=1)
    expect = np.sum(np.where(pi > 0, pi * lq, 0.0), axis=1)
    return float(np.mean(lq[np.arange(len(y)), y] - expect))


def maximise_gmi(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s_max: float = 1e4) -> tuple[float, float, bool]:
    """(GMI bits, s*, capped): the maximum over s in [0, s_max]; capped = still rising at s_max."""
    from scipy.optimize import brentq

    if gmi_slope(logq, y, prior, 0.0) <= 0:
        return 0.0, 0.0, False
    lo, hi = 0.0, min(1.0, s_max)
    while gmi_slope(logq, y, prior, hi) > 0:
        if hi >= s_max:
            return max(gmi_bits(logq, y, prior, s_max), 0.0), float(s_max), True
        lo, hi = hi, min(2 * hi, s_max)
    s = brentq(lambda t: gmi_slope(logq, y, prior, t), lo, hi, xtol=1e-10, rtol=1e-10)
    return max(gmi_bits(logq, y, prior, s), 0.0), float(s), False


def bootstrap_gmi(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s_star: float, s_max: float,
                  n_boot: int, seed: int) -> np.ndarray:
    """Replicates of max_s GMI(s) (bits) over samples resampled with replacement."""
    n = len(y)
    if n_boot <= 0 or n == 0:
        return np.zeros(0)
    grid = np.concatenate([[0.0], np.logspace(-4, np.log10(s_max), 81)])
    if s_star > 0:
        grid = np.concatenate([grid, s_star * np.exp(np.linspace(-1.5, 1.5, 61))])
    grid = np.unique(grid[grid <= s_max])
    T = np.stack([gmi_terms(logq, y, prior, s) for s in grid], axis=1)  # (n, S) nats
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, 256):
        b = min(256, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        out.append((counts @ T).max(axis=1) / n / LN2)
    return np.maximum(np.concatenate(out), 0.0)


def evaluate(logq: np.ndarray, y: np.ndarray, k: int, n_boot: int, seed: int, s_max: float) -> dict[str, Any]:
    """GMI with its CI, s*, the confusion of argmax q and the prior, for codes y in 0..k-1."""
    prior = np.bincount(y, minlength=k) / len(y)
    g, s_star, capped = maximise_gmi(logq, y, prior, s_max)
    ci = percentile_ci(bootstrap_gmi(logq, y, prior, s_star, s_max, n_boot, seed))
    pred = logq.argmax(1)
    return {"gmi_bits": g, "ci": ci, "s_star": s_star, "s_capped": capped, "n": int(len(y)),
            "prior": prior.tolist(), "label_entropy_bits": entropy_bits(prior),
            "confusion": confusion(y, pred, k).tolist(), "argmax_accuracy": float(np.mean(pred == y))}


# --------------------------------------------------------------------------- the analysis


def _ids_hash(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class GMI(Analysis):
    """GMI through the decoder's scoring rule; see the module docstring."""

    name = "gmi"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        return dict(DEFAULT_PARAMS)

    def scores(self, ctx, attr: str, query: str, continuations: list[str], rows: np.ndarray,
               view: str) -> tuple[np.ndarray, np.ndarray]:
        """(n, M) log-probs and token counts of every continuation for the samples `rows`,
        computed once and kept in the store."""
        samples = [ctx.samples[i] for i in rows]
        bs = max(1, int(ctx.params.get("batch_size", DEFAULT_PARAMS["batch_size"])))

        def compute() -> np.ndarray:
            model = ctx.model  # loaded only here: a cached run never touches it
            parts = []
            with ctx.progress.task(f"gmi scores: {attr} ({view})", len(samples)) as advance:
                for i in range(0, len(samples), bs):
                    batch = samples[i:i + bs]
                    sc = model.score(batch, query, continuations, ctx.protocol, view=view)
                    lp = np.asarray(sc.logp, dtype=np.float64).reshape(len(batch), len(continuations))
                    nt = np.broadcast_to(np.asarray(sc.n_tokens, dtype=np.float64), lp.shape)
                    parts.append(np.stack([lp, nt]))
                    advance(len(batch))
            return np.concatenate(parts, axis=1)

        key = {"attribute": attr, "query": query, "continuations": list(continuations), "protocol": ctx.protocol,
               "view": view, "samples": _ids_hash([s.sample_id for s in samples]), "n": len(samples)}
        arr = np.asarray(ctx.cached("gmi_scores", key, compute))
        if arr.shape != (2, len(samples), len(continuations)):
            raise MchError(f"gmi scores for {attr!r} have shape {arr.shape}, expected "
                           f"{(2, len(samples), len(continuations))}; the store entry is stale")
        return arr[0], arr[1]

    def run(self, ctx) -> AnalysisOutput:
        p = {**DEFAULT_PARAMS, **ctx.params}
        check_params(self.name, p, DEFAULT_PARAMS)
        if p["normalize"] not in ("sum", "mean"):
            raise MchError(f"gmi parameter normalize must be sum or mean, not {p['normalize']!r}")
        out = AnalysisOutput(summary={"normalize": p["normalize"], "stage": "llm.final", "attributes": {}})
        probe = ctx.previous.get("probe")
        for attr, spec in ctx.attributes.items():
            classes = list(spec.classes)
            index = {c: i for i, c in enumerate(classes)}
            labels = np.asarray(ctx.labels[attr]).astype(str)
            rows = np.flatnonzero(np.isin(labels, classes))
            stray = int(np.sum((labels != "") & ~np.isin(labels, classes)))
            if stray:
                out.notes.append(f"{attr}: {stray} samples carry a label outside the declared classes; left out")
            if len(rows) < 2 or len(np.unique(labels[rows])) < 2:
                out.notes.append(f"{attr}: skipped (fewer than two labelled classes)")
                continue
            y = np.array([index[v] for v in labels[rows]], dtype=np.int64)
            continuations, spans = [], []
            for c in classes:  # every verbalizer of every class: the decoder may answer with any
                spans.append((len(continuations), len(continuations) + len(spec.verbalizers[c])))
                continuations += list(spec.verbalizers[c])
            info: dict[str, Any] = {"classes": classes, "verbalizers": {c: list(spec.verbalizers[c]) for c in classes},
                                    "query": spec.query}
            views = [("modal", rows)]
            if p["text_reference"] and spec.text_describable:
                has_text = np.array([bool(ctx.samples[i].text) for i in rows], dtype=bool)
                if has_text.sum() >= 2:
                    views.append(("text", rows[has_text]))
                else:
                    out.notes.append(f"{attr}: no text reference (fewer than two samples have paired text)")
            for view, vrows in views:
                logp, ntok = self.scores(ctx, attr, spec.query, continuations, vrows, view)
                logq = class_log_q(logp, ntok, spans, p["normalize"])
                vy = y if view == "modal" else y[np.isin(rows, vrows)]
                r = evaluate(logq, vy, len(classes), int(p["n_bootstrap"]), ctx.seed, float(p["s_max"]))
                prefix = "" if view == "modal" else "text_"
                out.metrics += [Metric(f"{prefix}gmi_bits", r["gmi_bits"], "llm.final", attr, *r["ci"], r["n"]),
                                Metric(f"{prefix}s_star", r["s_star"], "llm.final", attr, n=r["n"])]
                if r["s_capped"]:
                    out.notes.append(f"{attr} ({view}): GMI(s) still rising at s_max={p['s_max']:g}; s* is capped")
                info[view] = r
            if probe is not None:
                g = info["modal"]["gmi_bits"]
                for m in probe.metrics:
                    if m.metric == "i_probe_bits" and m.attribute == attr and m.stage is not None:
                        value = g / m.value if m.value is not None and m.value > 0 else None
                        out.metrics.append(Metric("accessibility", value, m.stage, attr, n=info["modal"]["n"]))
            out.summary["attributes"][attr] = info
        return out
