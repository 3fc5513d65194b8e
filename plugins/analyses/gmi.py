"""Information accessible to the decoder: GMI of its own scoring rule (science.md §2).

For attribute Y with classes y_1..y_K, query Q and verbalizers v(y):

    log q(y|x) = logsumexp_v  sum_t log p_LM(v_t | Q(x), v_<t)      ("sum"; "mean" = per token)
    GMI(s)     = E[ s log q(y|x) - log sum_y' P(y') q(y'|x)^s ]      (bits)
    GMI        = max_{s >= 0} GMI(s)                                  (concave in s)

Scores come from the model plugin's `score` (shared-prefix batching) through `ctx.cached`,
so a second run never loads the model. Accessibility = GMI / I_probe is reported at every
stage the probe covered when `probe` ran earlier in the same run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, Metric

LN2 = np.log(2.0)


def class_logq(logp: np.ndarray, n_tokens: np.ndarray, spans: list[tuple[int, int]], normalize: str) -> np.ndarray:
    """(N, K) log q(y|x) from (N, V) verbalizer log-probs; spans[k] = class k's verbalizer columns."""
    lp = np.asarray(logp, dtype=np.float64)
    if normalize == "mean":
        lp = lp / np.asarray(n_tokens, dtype=np.float64)
    from scipy.special import logsumexp

    return np.stack([logsumexp(lp[:, a:b], axis=1) for a, b in spans], axis=1)


def gmi_curve(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s: float) -> float:
    """GMI(s) in bits."""
    from scipy.special import logsumexp

    term = s * logq[np.arange(len(y)), y] - logsumexp(s * logq + np.log(prior)[None, :], axis=1)
    return float(term.mean() / LN2)


def gmi_max(logq: np.ndarray, y: np.ndarray, prior: np.ndarray, s_max: float = 100.0) -> tuple[float, float]:
    """(max_s GMI(s), s*) over s in [0, s_max]; GMI(0) = 0 so the max is never negative."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda s: -gmi_curve(logq, y, prior, s), bounds=(0.0, s_max), method="bounded",
                          options={"xatol": 1e-4})
    best, s_star = -float(res.fun), float(res.x)
    if best <= 0.0:
        return 0.0, 0.0
    return best, s_star


def gmi_with_ci(logq: np.ndarray, y: np.ndarray, k: int, n_boot: int, seed: int) -> dict[str, Any]:
    prior = np.bincount(y, minlength=k) / len(y)
    prior = np.clip(prior, 1e-12, None)
    g, s_star = gmi_max(logq, y, prior)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), size=len(y))
        pb = np.clip(np.bincount(y[idx], minlength=k) / len(y), 1e-12, None)
        boots.append(gmi_max(logq[idx], y[idx], pb)[0])
    lo, hi = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (None, None)
    conf = np.zeros((k, k), dtype=int)
    np.add.at(conf, (y, logq.argmax(1)), 1)
    return {"gmi_bits": g, "ci": (lo, hi), "s_star": s_star, "confusion": conf.tolist(),
            "argmax_accuracy": float((logq.argmax(1) == y).mean()), "prior": prior.tolist()}


class GMI(Analysis):
    name = "gmi"
    needs_model = True

    def default_params(self, protocol: str) -> dict[str, Any]:
        return {"normalize": "sum", "n_boot": 200, "batch_size": 16, "text_reference": True, "queries": {}}

    def _scores(self, ctx, attr, query, conts, view) -> tuple[np.ndarray, np.ndarray]:
        def compute() -> np.ndarray:
            model = ctx.model
            bs = int(ctx.params["batch_size"])
            parts, ntok = [], None
            with ctx.progress.task(f"gmi scores {attr} ({view})", len(ctx.samples)) as advance:
                for i in range(0, len(ctx.samples), bs):
                    batch = ctx.samples[i:i + bs]
                    sc = model.score(batch, query, conts, ctx.protocol, view=view)
                    lp = np.asarray(sc.logp, dtype=np.float64)
                    nt = np.broadcast_to(np.asarray(sc.n_tokens, dtype=np.float64), lp.shape)
                    parts.append(np.stack([lp, nt]))
                    advance(len(batch))
            return np.concatenate(parts, axis=1)

        key = {"attribute": attr, "query": query, "continuations": list(conts), "protocol": ctx.protocol,
               "view": view}
        arr = ctx.cached("gmi_scores", key, compute)
        return arr[0], arr[1]

    def run(self, ctx) -> AnalysisOutput:
        from .probe import encode

        p = ctx.params
        out = AnalysisOutput(summary={"normalize": p["normalize"], "attributes": {}})
        for attr, spec in ctx.attributes.items():
            rows, y, classes = encode(ctx.labels[attr])
            if len(rows) < 2 or len(classes) < 2:
                out.notes.append(f"{attr}: skipped (fewer than 2 labelled classes)")
                continue
            # verbalizers of every declared class (the decoder may answer with any of them)
            decl = list(spec.classes)
            conts, spans = [], []
            for c in decl:
                vs = spec.verbalizers[c]
                spans.append((len(conts), len(conts) + len(vs)))
                conts += list(vs)
            query = p.get("queries", {}).get(attr, spec.query)
            col = np.array([decl.index(c) for c in classes])
            views = ["modal"] + (["text"] if p["text_reference"] and spec.text_describable else [])
            info: dict[str, Any] = {"query": query, "verbalizers": spec.verbalizers, "classes": classes}
            for view in views:
                logp, ntok = self._scores(ctx, attr, query, conts, view)
                logq_all = class_logq(logp, ntok, spans, p["normalize"])
                logq = logq_all[rows][:, col]  # the evaluated classes, in `classes` order
                r = gmi_with_ci(logq, y, len(classes), int(p["n_boot"]), ctx.seed)
                lo, hi = r["ci"]
                if view == "modal":
                    out.metrics += [Metric("gmi_bits", r["gmi_bits"], "llm.final", attr, lo, hi, len(rows)),
                                    Metric("s_star", r["s_star"], "llm.final", attr),
                                    Metric("argmax_accuracy", r["argmax_accuracy"], "llm.final", attr, n=len(rows))]
                    info.update(r)
                    g_modal = r["gmi_bits"]
                else:
                    out.metrics.append(Metric("text_gmi_bits", r["gmi_bits"], "llm.final", attr, lo, hi, len(rows)))
                    info["text_reference"] = r
            probe = ctx.previous.get("probe")
            if probe is not None:
                for m in probe.metrics:
                    if m.metric == "i_probe_bits" and m.attribute == attr and m.stage and m.value and m.value > 0:
                        out.metrics.append(Metric("accessibility", g_modal / m.value, m.stage, attr))
            out.summary["attributes"][attr] = info
        return out
