"""`swap` (MS swap): give a sample another speaker's mean component inside the MS (or TA)
subspace and measure what the decoder notices (science.md §5; the reference's script 13,
analyses-causal-lora-tables.md §4).

Signatures Sig_S(s) = P_S μ_s (P_S = U_S U_Sᵀ, μ_s the uncentred mean of speaker s's pooled
adapter outputs). For sample i of speaker A a donor B ≠ A is drawn (`random_seed`, consumed in
sample order, as the reference did) and an `edit_adapter` edit sets every modality token to
z_t − m_i + Sig_S(B), m_i the mean of P_S z_t over i's modality tokens: only the sample's
offset inside the subspace changes. Per sample, for the MS and the TA swap: Δloss and
KL(p_base ‖ p_swap) over the positions the loss scores; the perturbation size is, under
default, ‖Sig_S(B) − P_S x̄_i‖ (what the edit moves), under paper ‖Sig_S(B) − Sig_S(A)‖.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Analysis, AnalysisOutput, MchError, Metric

from ._causal import (  # group bootstrap (science.md §8)
    PAPER_SEED,
    RANDOM_SEED,
    adapter_pool,
    batches,
    bootstrap,
    causal_defaults,
    causal_specs,
    digest,
    edit_adapter,
    finite,
    grouped,
    ids_digest,
    mean_ci,
    modes_for,
    random_seed,
    ratio_of_means_pct,
    sample_groups,
    select_samples,
)
from ._params import check_params

SUBSPACES = ("ms", "ta")


def swap_edit(P: Any, targets: Any, pool: Any, span: str, n: int) -> Any:
    """fn(z) for a batch: per sample, its modality-token mean inside span(P) becomes targets[i]."""
    from mch.capture import pool as pool_rows

    def fn(z: Any) -> Any:
        zf = z.float()
        rows = pool.for_output(zf) if pool is not None else None  # proportional pools: rows of z
        own = pool_rows(zf, rows, span, n) @ P  # (n, D): m_i
        shift = (targets - own)[rows.owner.to(zf.device)] if rows is not None else targets - own
        return (zf + (shift[:, None, :] if zf.dim() == 3 else shift)).to(z.dtype)

    return fn


def kl_per_sample(base: Any, other: Any) -> np.ndarray:
    """mean over scored positions of KL(p_base ‖ p_other), per row."""
    import torch

    lb = torch.log_softmax(base.logits.float(), -1)
    lo = torch.log_softmax(other.logits.float(), -1)
    kl = (lb.exp() * (lb - lo)).sum(-1) * base.valid
    return (kl.sum(1) / base.valid.sum(1).clamp(min=1)).cpu().numpy()


# Types and ranges beyond what each default says (`mch list params`; mch.api.Param).
from ._params import declare  # noqa: E402

PARAM_SPECS = declare("swap", **causal_specs(random_seed=RANDOM_SEED))


class Swap(Analysis):
    name = "swap"
    needs_model = True
    param_specs = PARAM_SPECS

    def default_params(self, protocol: str) -> dict[str, Any]:
        seed = PAPER_SEED if protocol == "paper" else None
        return {"attribute": "speaker", **causal_defaults(protocol), "random_seed": seed}

    def run(self, ctx: Any) -> AnalysisOutput:
        import torch

        p, protocol = ctx.params, ctx.protocol
        check_params(self.name, p, self.default_params(protocol))
        attr = str(p["attribute"])
        if attr not in ctx.labels:
            raise MchError(
                f"swap groups samples by attribute {attr!r}, which this run does not have "
                f"(it has {', '.join(ctx.labels) or 'none'}); pass --param swap.attribute=NAME"
            )
        labels = ctx.labels[attr]
        modes = modes_for(ctx, self.name)
        X = np.asarray(ctx.reps["adapter"], dtype=np.float64)
        speakers = sorted({str(x) for x in labels if x != ""})
        if len(speakers) < 2:
            raise MchError(f"swap needs at least two values of {attr!r} to swap between, got {len(speakers)}")
        mu = {s: X[labels == s].mean(0) for s in speakers}
        proj = {"ms": modes.vectors[:, modes.ms], "ta": modes.vectors[:, modes.ta]}
        P = {k: U @ U.T for k, U in proj.items()}
        sig = {k: {s: P[k] @ mu[s] for s in speakers} for k in SUBSPACES}
        rows = [
            int(i)
            for i in select_samples(ctx, p.get("n_samples"), protocol, need_text=protocol != "paper")
            if labels[int(i)] != ""
        ]
        rng = np.random.default_rng(random_seed(ctx))
        donors = []
        for i in rows:  # the generator is consumed sample by sample, as the reference did
            others = [s for s in speakers if s != labels[i]]
            donors.append(others[int(rng.integers(len(others)))])
        samples = [ctx.samples[i] for i in rows]
        key = {
            "protocol": protocol,
            "samples": ids_digest(samples),
            "donors": donors,
            "span": ctx.span,
            "P": [digest(P[k]) for k in SUBSPACES],
            "sig": digest(*[sig[k][s] for k in SUBSPACES for s in speakers]),
        }

        def compute() -> np.ndarray:
            model = ctx.model
            dev = next(model.module.parameters()).device
            Pt = {k: torch.tensor(P[k], dtype=torch.float32, device=dev) for k in SUBSPACES}
            out = np.zeros((len(samples), 5))  # loss base, loss ms, loss ta, kl ms, kl ta
            at = 0
            with ctx.progress.task("MS swap", len(samples)) as advance, torch.no_grad():
                for batch in batches(samples, int(p["batch_size"])):
                    n = len(batch)
                    pool = adapter_pool(model, batch, protocol)
                    base = model.loss_terms(batch, protocol)
                    out[at : at + n, 0] = base.mean_nll().cpu().numpy()
                    for j, k in enumerate(SUBSPACES):
                        tgt = torch.tensor(
                            np.stack([sig[k][donors[at + b]] for b in range(n)]), dtype=torch.float32, device=dev
                        )
                        with edit_adapter(model, swap_edit(Pt[k], tgt, pool, ctx.span, n)):
                            terms = model.loss_terms(batch, protocol)
                        out[at : at + n, 1 + j] = terms.mean_nll().cpu().numpy()
                        out[at : at + n, 3 + j] = kl_per_sample(base, terms)
                    at += n
                    advance(n)
            return out

        res = ctx.cached("swap_losses", key, compute)
        # perturbation sizes, from the stored pooled vectors
        norms = {}
        for k in SUBSPACES:
            if protocol == "paper":
                norms[k] = np.array([np.linalg.norm(sig[k][donors[j]] - sig[k][labels[i]]) for j, i in enumerate(rows)])
            else:
                norms[k] = np.array([np.linalg.norm(sig[k][donors[j]] - P[k] @ X[i]) for j, i in enumerate(rows)])
        return self._output(ctx, modes, samples, [labels[i] for i in rows], donors, res, norms, len(speakers))

    def _output(
        self,
        ctx: Any,
        modes: Any,
        samples: list[Any],
        own: list[str],
        donors: list[str],
        res: np.ndarray,
        norms: dict[str, np.ndarray],
        n_speakers: int,
    ) -> AnalysisOutput:
        n_boot, seed, n = int(ctx.params["n_boot"]), sample_groups(ctx, samples), len(samples)
        base = res[:, 0]
        m, lo, hi = mean_ci(base, seed, n_boot)
        metrics = [Metric("loss_baseline", m, "adapter", None, finite(lo), finite(hi), n)]
        stats: dict[str, Any] = {}
        for j, k in enumerate(SUBSPACES):
            delta, kl, nrm = res[:, 1 + j] - base, res[:, 3 + j], norms[k]
            kl_norm = kl / np.maximum(nrm**2, 1e-10)
            dm, dlo, dhi = mean_ci(delta, seed, n_boot)
            pc, plo, phi = ratio_of_means_pct(delta, base, seed, n_boot)
            km, klo, khi = mean_ci(kl, seed, n_boot)
            nm, nlo, nhi = mean_ci(kl_norm, seed, n_boot)
            metrics += [
                Metric(f"delta_loss_{k}_swap", dm, "adapter", None, finite(dlo), finite(dhi), n),
                Metric(f"pct_change_{k}_swap", pc, "adapter", None, finite(plo), finite(phi), n),
                Metric(f"kl_{k}_swap", km, "adapter", None, finite(klo), finite(khi), n),
                Metric(f"delta_norm_{k}", float(nrm.mean()), "adapter", None, None, None, n),
                Metric(f"kl_normalized_{k}", nm, "adapter", None, finite(nlo), finite(nhi), n),
            ]
            stats[k] = {"delta": delta, "kl": kl, "norm": nrm, "kl_norm": kl_norm}
        kms, kta = stats["ms"]["kl"], stats["ta"]["kl"]
        ratio = lambda a, b: lambda idx: a[idx].mean() / b[idx].mean() if b[idx].mean() > 0 else float("nan")  # noqa: E731
        r = ratio(kta, kms)(np.arange(n))
        rlo, rhi = bootstrap(ratio(kta, kms), n, seed, n_boot)
        metrics.append(Metric("kl_ratio_ta_over_ms", finite(r), "adapter", None, finite(rlo), finite(rhi), n))
        nk_ms, nk_ta = stats["ms"]["kl_norm"], stats["ta"]["kl_norm"]
        nr = ratio(nk_ta, nk_ms)(np.arange(n))
        nrlo, nrhi = bootstrap(ratio(nk_ta, nk_ms), n, seed, n_boot)
        metrics.append(
            Metric("normalized_kl_ratio_ta_over_ms", finite(nr), "adapter", None, finite(nrlo), finite(nrhi), n)
        )
        summary: dict[str, Any] = {
            "attribute": ctx.params["attribute"],
            **modes.split_summary(),
            "n_speakers": n_speakers,
            "n_samples": n,
            "span": ctx.span,
            "per_sample": [
                {
                    "sample_id": s.sample_id,
                    "speaker_a": a,
                    "speaker_b": b,
                    "loss_baseline": float(base[i]),
                    "loss_ms_swap": float(res[i, 1]),
                    "loss_ta_swap": float(res[i, 2]),
                    "kl_ms_swap": float(res[i, 3]),
                    "kl_ta_swap": float(res[i, 4]),
                    "delta_ms_norm": float(norms["ms"][i]),
                    "delta_ta_norm": float(norms["ta"][i]),
                }
                for i, (s, a, b) in enumerate(zip(samples, own, donors, strict=True))
            ],
        }
        notes = []
        for k in SUBSPACES:
            if not (modes.ms if k == "ms" else modes.ta).any():
                notes.append(f"no {k.upper()} mode: the {k.upper()} swap changes nothing")
        if ctx.protocol == "paper":
            d_ms, d_ta = stats["ms"]["delta"], stats["ta"]["delta"]
            mean_n = {k: float(stats[k]["norm"].mean()) for k in SUBSPACES}
            mkn = {k: float(stats[k]["kl_norm"].mean()) for k in SUBSPACES}
            summary.update(
                {
                    "model": getattr(ctx.run_config, "model", None),
                    "mean_loss_baseline": round(float(base.mean()), 4),
                    **{
                        f"{f}_kl_{k}_swap": round(float(g(stats[k]["kl"])), 6)
                        for k in SUBSPACES
                        for f, g in (("mean", np.mean), ("median", np.median), ("std", np.std))
                    },
                    "kl_ratio_ta_over_ms": round(float(r), 2) if np.isfinite(r) else None,
                    "mean_delta_loss_ms": round(float(d_ms.mean()), 4),
                    "mean_delta_loss_ta": round(float(d_ta.mean()), 4),
                    "pct_change_ms": round(100 * float(d_ms.mean()) / float(base.mean()), 2),
                    "pct_change_ta": round(100 * float(d_ta.mean()) / float(base.mean()), 2),
                    "mean_delta_ms_norm": mean_n["ms"],
                    "mean_delta_ta_norm": mean_n["ta"],
                    "norm_ratio_ms_over_ta": mean_n["ms"] / mean_n["ta"] if mean_n["ta"] > 0 else None,
                    "mean_kl_ms_normalized": mkn["ms"],
                    "mean_kl_ta_normalized": mkn["ta"],
                    "normalized_kl_ratio_ta_over_ms": mkn["ta"] / mkn["ms"] if mkn["ms"] > 0 else None,
                }
            )
        return grouped(AnalysisOutput(metrics=metrics, summary=summary, notes=notes), seed)
