"""`gmi`: information accessible to the decoder, the GMI of its own scoring rule and the LM
rate (science.md §2, where both are defined with their CIs, `gmi_p` and accessibility).

Scores come from the model plugin's `score` (media + query, every verbalizer of every class
as a continuation), batched by `batch_size` and kept in the store through `ctx.cached`, so a
second run never loads the model; the rates are `_gmi_rates`'. Metrics at `llm.final`:
`gmi_bits` and `gmi_lm_bits` with CIs from the attribute's shared group resamples, `s_star`,
`gmi_p`; `accessibility`(`_lm`) = GMI / I_probe at `adapter` and `llm.final` when `probe` ran
earlier in the run (CIs replicate by replicate); `text_*` the same on the paired text, over
the samples that have one. An attribute whose classes are not verbalizable is left out, with
the reason. The summary holds the confusion of argmax q, the prior, s*, the LM rate's s and
offsets, and the normalisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._gmi_rates import (  # the names a caller (and the tests) read through gmi, re-exported
    bootstrap_gmi,
    class_log_q,
    gmi_bits as gmi_bits,
    lm_rate,
    lm_rate_replicates,
    maximise_gmi,
    permutation_p,
)
from ._params import check_params
from ._stats import (
    RowGroups,
    attribute_groups,
    bias_corrected_ci,
    confusion,
    entropy_bits,
    group_codes,
    groups_identity,
    percentile_ci,
)

DEFAULT_PARAMS = {
    "batch_size": 16,  # samples per score() call
    "normalize": "sum",  # sum or mean (per token) of a verbalizer's log-probs
    "text_reference": True,  # also score the paired text, for attributes the text describes
    "n_bootstrap": 1000,  # group resamples for the CIs (shared with the run's other analyses, science.md §8)
    "n_permutations": 200,  # label permutations across groups for gmi_p (0: no test)
    "s_max": 1e4,  # upper end of the search over s
}
ACCESSIBILITY_STAGES = ("adapter", "llm.final")  # I_probe's two contexts (science.md §2)

# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import Param, declare  # noqa: E402

PARAM_SPECS = declare(
    "gmi",
    batch_size=Param(int, ge=1),
    normalize=Param(str, choices=("sum", "mean")),
    n_bootstrap=Param(int, ge=1),
    s_max=Param(float, gt=0),
    n_permutations=Param(int, ge=0, help="label permutations for gmi_p (0: no test)"),
)


# --------------------------------------------------------------------------- one attribute, one view


def evaluate(
    logq: np.ndarray,
    y: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
    s_max: float,
    groups: Any = None,
    n_perm: int = 0,
    perm_codes: np.ndarray | None = None,
) -> dict[str, Any]:
    """GMI and the LM rate with CIs from the group resamples `groups` (a `_stats.RowGroups` of
    these rows; None: every row its own group, seeded by `seed`), s*, the permutation p-value
    (`n_perm` label permutations across the groups `perm_codes`, default those of `groups`),
    the confusion of argmax q and the prior, for codes y in 0..k-1. `reps`/`lm_reps` hold the
    replicates (not for the record)."""
    if groups is None:
        groups = RowGroups(np.arange(len(y)), len(y), int(seed), "sample")
    prior = np.bincount(y, minlength=k) / len(y)
    g, s_star, capped = maximise_gmi(logq, y, prior, s_max)
    # one group cannot be resampled: no CI rather than a zero-width one
    w = groups.weights(n_boot) if n_boot > 0 and groups.n_groups >= 2 else np.zeros((0, len(y)))
    reps = bootstrap_gmi(logq, y, k, w, s_max)
    lm = lm_rate(logq, y, k)
    lm_reps = lm_rate_replicates(logq, y, k, w, lm) if len(w) else np.zeros(0)
    codes = groups.codes if perm_codes is None else perm_codes
    p, _ = permutation_p(logq, y, k, np.unique(codes, return_inverse=True)[1], n_perm, groups.seed + 1, s_max)
    pred = logq.argmax(1)
    return {
        "gmi_bits": g,
        "ci": bias_corrected_ci(reps, g, bounds=(0.0, float(np.log2(k)))),  # 0 <= GMI <= H(Y) <= log2 K
        "s_star": s_star,
        "s_capped": capped,
        "n": int(len(y)),
        "gmi_lm_bits": lm["bits"],
        "lm_ci": bias_corrected_ci(lm_reps, lm["bits"], bounds=(0.0, float(np.log2(k)))),
        "lm_s": lm["s"],
        "lm_offsets_nats": lm["offsets"].tolist(),
        "gmi_p": p,
        "n_permutations": int(n_perm),
        "n_groups": groups.n_groups,
        "bootstrap_key": groups.key,
        "prior": prior.tolist(),
        "label_entropy_bits": entropy_bits(prior),
        "confusion": confusion(y, pred, k).tolist(),
        "argmax_accuracy": float(np.mean(pred == y)),
        "reps": reps,
        "lm_reps": lm_reps,
    }


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

    def scores(
        self, ctx, attr: str, query: str, continuations: list[str], rows: np.ndarray, view: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, M) log-probs and token counts of every continuation for the samples `rows`,
        computed once and kept in the store."""
        samples = [ctx.samples[i] for i in rows]
        bs = max(1, int(ctx.params.get("batch_size", DEFAULT_PARAMS["batch_size"])))

        def compute() -> np.ndarray:
            model = ctx.model  # loaded only here: a cached run never touches it
            parts = []
            with ctx.progress.task(f"gmi scores: {attr} ({view})", len(samples)) as advance:
                for i in range(0, len(samples), bs):
                    batch = samples[i : i + bs]
                    sc = model.score(batch, query, continuations, ctx.protocol, view=view)
                    lp = np.asarray(sc.logp, dtype=np.float64).reshape(len(batch), len(continuations))
                    nt = np.broadcast_to(np.asarray(sc.n_tokens, dtype=np.float64), lp.shape)
                    parts.append(np.stack([lp, nt]))
                    advance(len(batch))
            return np.concatenate(parts, axis=1)

        key = {
            "attribute": attr,
            "query": query,
            "continuations": list(continuations),
            "protocol": ctx.protocol,
            "view": view,
            "samples": _ids_hash([s.sample_id for s in samples]),
            "n": len(samples),
        }
        arr = np.asarray(ctx.cached("gmi_scores", key, compute))
        if arr.shape != (2, len(samples), len(continuations)):
            raise MchError(
                f"gmi scores for {attr!r} have shape {arr.shape}, expected "
                f"{(2, len(samples), len(continuations))}; the store entry is stale"
            )
        return arr[0], arr[1]

    def run(self, ctx) -> AnalysisOutput:
        p = {**DEFAULT_PARAMS, **ctx.params}
        check_params(self.name, p, DEFAULT_PARAMS)
        if p["normalize"] not in ("sum", "mean"):
            raise MchError(f"gmi parameter normalize must be sum or mean, not {p['normalize']!r}")
        for key in ("n_bootstrap", "n_permutations"):
            if isinstance(p[key], bool) or not str(p[key]).isdigit():
                raise MchError(f"gmi parameter {key} must be a whole number (0 or more), not {p[key]!r}")
        n_boot, n_perm = int(p["n_bootstrap"]), int(p["n_permutations"])
        out = AnalysisOutput(
            summary={
                "normalize": p["normalize"],
                "stage": "llm.final",
                "ci": f"bias-corrected percentile, {n_boot} group-bootstrap resamples shared with the run's "
                f"other analyses (science.md §8)",
                "gmi_p": f"{n_perm} label permutations across groups (group structure kept), cached scores reused",
                "attributes": {},
            }
        )
        probe = ctx.previous.get("probe")
        for attr, spec in ctx.attributes.items():
            if not getattr(spec, "verbalizable", True):
                why = (
                    f"its classes are not verbalizable (e.g. {spec.verbalizers[spec.classes[0]][0]!r}): no text "
                    f"decoder can name them from the input, so GMI would be ~0 by construction"
                )
                out.summary["attributes"][attr] = {"skipped": why}
                out.notes.append(f"{attr}: left out of GMI ({why})")
                continue
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
            info: dict[str, Any] = {
                "classes": classes,
                "verbalizers": {c: list(spec.verbalizers[c]) for c in classes},
                "query": spec.query,
            }
            groups = attribute_groups(ctx, attr)
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
                vg = groups.subset(vrows)
                # the permutation keeps the attribute's group structure (its group key, science.md §2)
                split_groups = ctx.groups.get(attr)
                pc = None if split_groups is None else group_codes(np.asarray(split_groups)[vrows])[0]
                r = evaluate(
                    logq,
                    vy,
                    len(classes),
                    n_boot,
                    ctx.seed,
                    float(p["s_max"]),
                    vg,
                    n_perm if view == "modal" else 0,
                    pc,
                )
                reps, lm_reps = r.pop("reps"), r.pop("lm_reps")
                prefix = "" if view == "modal" else "text_"
                ng = r["n_groups"]
                cg = ng if r["ci"][0] is not None else None
                out.metrics += [
                    Metric(f"{prefix}gmi_bits", r["gmi_bits"], "llm.final", attr, *r["ci"], r["n"], cg),
                    Metric(f"{prefix}gmi_lm_bits", r["gmi_lm_bits"], "llm.final", attr, *r["lm_ci"], r["n"], cg),
                    Metric(f"{prefix}s_star", r["s_star"], "llm.final", attr, n=r["n"]),
                ]
                if view == "modal" and ng < 10:
                    out.notes.append(
                        f"{attr}: its CIs rest on {ng} groups of {vg.key!r}"
                        + (" (none: one group cannot be resampled)" if ng < 2 else "")
                    )
                if view == "modal" and r["gmi_p"] is not None:
                    out.metrics.append(Metric("gmi_p", r["gmi_p"], "llm.final", attr, n=r["n"], n_groups=ng))
                if r["s_capped"]:
                    out.notes.append(f"{attr} ({view}): GMI(s) still rising at s_max={p['s_max']:g}; s* is capped")
                info[view] = r
                if view == "modal":
                    out.replicates[("gmi_bits", "llm.final", attr)] = reps
                    out.replicates[("gmi_lm_bits", "llm.final", attr)] = lm_reps
            if probe is not None:
                out.metrics += self._accessibility(probe, attr, info["modal"], out.replicates, groups, ctx, out.notes)
            out.replicates[("_groups", None, attr)] = groups_identity(ctx, groups)
            out.summary["attributes"][attr] = info
        return out

    @staticmethod
    def _accessibility(
        probe: AnalysisOutput, attr: str, r: dict[str, Any], reps: dict, groups: Any, ctx: Any, notes: list[str]
    ) -> list[Metric]:
        """accessibility = GMI / I_probe and accessibility_lm = gmi_lm / I_probe at `adapter` and
        `llm.final` (science.md §2), each CI from the shared resamples: replicate b of the ratio
        is replicate b of GMI over replicate b of I_probe (the same group draws)."""
        same = probe.replicates.get(("_groups", None, attr)) == groups_identity(ctx, groups)
        out = []
        for stage in ACCESSIBILITY_STAGES:
            ip = next(
                (m for m in probe.metrics if m.metric == "i_probe_bits" and m.attribute == attr and m.stage == stage),
                None,
            )
            if ip is None:
                continue
            ip_reps = probe.replicates.get(("i_probe_bits", stage, attr)) if same else None
            for name, key, num in (
                ("accessibility", "gmi_bits", r["gmi_bits"]),
                ("accessibility_lm", "gmi_lm_bits", r["gmi_lm_bits"]),
            ):
                value = num / ip.value if ip.value is not None and ip.value > 0 else None
                lo = hi = None
                g_reps = reps.get((key, "llm.final", attr))
                if value is not None and ip_reps is not None and g_reps is not None:
                    b = min(len(ip_reps), len(g_reps))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = np.where(ip_reps[:b] > 0, g_reps[:b] / ip_reps[:b], np.nan)
                    if b and np.mean(~np.isfinite(ratio)) <= 0.025:
                        lo, hi = percentile_ci(
                            ratio
                        )  # a ratio's replicate mean is no bias estimate: heavy tail at weak I_probe
                    else:
                        notes.append(f"{attr}: no CI for {name} at {stage} (I_probe's resamples reach 0 bits)")
                out.append(
                    Metric(name, value, stage, attr, lo, hi, r["n"], groups.n_groups if lo is not None else None)
                )
            if not same:
                why = (
                    "the probe keeps no replicates under the paper protocol"
                    if ("_groups", None, attr) not in probe.replicates
                    else "the probe's resamples are not this run's"
                )
                notes.append(f"{attr}: {why} (no accessibility CI at {stage})")
        return out
