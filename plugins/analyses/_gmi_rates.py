"""The rates behind `gmi` (science.md §2): GMI(s) of a decoder's class scores log q (n, K),
its maximum over s, the LM rate, their replicates under the shared group-resample weights
and the label-permutation null. Numbers only: no model, no run context.

GMI(s) is concave in s (a log-sum-exp of lines in s is convex), so s* is the root of its
decreasing slope: bracketed by doubling, then Brent's method (`maximise_gmi`) or, for many
problems at once (`gmi_max_batch`: the bootstrap and the permutations), a safeguarded Newton
step. A decoder that ranks the true class first on every sample has GMI rising to H(Y) as s
grows: s* is then where the curve is flat to float precision, or s_max if it is still rising
there. The LM rate, with a' = a + log P, is H(P) minus the least cross-entropy of
softmax(s log q + a'): convex in K parameters, solved by Newton's method; its replicates take
chord-Newton steps from the point fit and are refitted exactly where those do not converge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mch.api import MchError

from ._stats import LN2, permute_labels_by_group

# --------------------------------------------------------------------------- GMI


def class_log_q(
    logp: np.ndarray, n_tokens: np.ndarray, spans: Sequence[tuple[int, int]], normalize: str = "sum"
) -> np.ndarray:
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


FLOOR = -1e30  # stands in for log 0 (a verbalizer the decoder never emits): finite, so products stay defined


def _batch_parts(lqT: np.ndarray, ly: np.ndarray, W: np.ndarray, logP: np.ndarray, s: np.ndarray, value: bool = False):
    """For each b: pi_b = softmax(s_b lq + log P_b) per row; returns the weighted means of
    lq_y - E_pi lq (the slope of GMI_b in s) and of Var_pi lq (minus its curvature), each (B,);
    with `value`, the weighted mean of the GMI terms (nats) instead. `lqT` is log q class-major
    (K, n) and `ly` (B, n) each row's log q of its label: class-major arrays make the
    reductions over classes elementwise (fast for small K)."""
    Z = s[None, :, None] * lqT[:, None, :] + logP.T[:, :, None]  # (K, B, n)
    mx = Z.max(0)
    mx[~np.isfinite(mx)] = 0.0
    np.subtract(Z, mx[None], out=Z)
    np.exp(Z, out=Z)  # unnormalised pi
    S = Z.sum(0)
    tot = W.sum(1)
    if value:
        return (W * (s[:, None] * ly - (mx + np.log(S)))).sum(1) / tot
    Z /= S[None]
    Z *= lqT[:, None, :]
    m = Z.sum(0)
    Z *= lqT[:, None, :]
    v = Z.sum(0) - m * m
    return (W * (ly - m)).sum(1) / tot, (W * np.maximum(v, 0)).sum(1) / tot


def gmi_max_batch(
    logq: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray | None,
    logP: np.ndarray,
    s_max: float = 1e4,
    chunk_elems: int = 1 << 21,
) -> tuple[np.ndarray, np.ndarray]:
    """max over s in [0, s_max] of GMI_b(s) (bits) and s*_b for B problems at once: labels Y
    (B, n) (or (n,) shared), row weights W (B, n) (None: all 1), log priors logP (B, K).
    GMI_b is concave in s: its slope is bracketed by doubling, then a safeguarded Newton step
    (bisection when it leaves the bracket) finds its root. Used alike for the permutation test
    and the bootstrap, so observed and resampled numbers come from one procedure."""
    lq = np.where(np.isfinite(logq), np.asarray(logq, dtype=np.float64), FLOOR)
    n, k = lq.shape
    logP = np.atleast_2d(np.asarray(logP, dtype=np.float64))
    B = logP.shape[0]
    Y = np.broadcast_to(np.asarray(Y), (B, n))
    W = np.ones((B, n)) if W is None else np.broadcast_to(np.asarray(W, dtype=np.float64), (B, n))
    g, s_out = np.zeros(B), np.zeros(B)
    step = max(1, chunk_elems // max(n * k, 1))
    lqT = np.ascontiguousarray(lq.T)
    for c0 in range(0, B, step):
        sl = slice(c0, min(B, c0 + step))
        ly = np.take_along_axis(lq[None], np.asarray(Y[sl])[:, :, None], 2)[:, :, 0] if Y.ndim == 2 else None
        g[sl], s_out[sl] = _max_chunk(lqT, ly, W[sl], logP[sl], float(s_max))
    return g, s_out


def _max_chunk(lqT, ly, W, logP, s_max):
    B = len(ly)
    parts = lambda s, idx, value=False: _batch_parts(lqT, ly[idx], W[idx], logP[idx], s, value)  # noqa: E731
    every = np.arange(B)
    slope0, curv0 = parts(np.zeros(B), every)
    live = np.flatnonzero(slope0 > 0)  # slope <= 0 at 0: the maximum is GMI(0) = 0
    s = np.zeros(B)
    if len(live):
        n = len(live)
        lo, hi = np.zeros(n), np.full(n, min(1.0, s_max))
        # slope f and -f' at both ends of the bracket
        f_lo, c_lo, f_hi, c_hi = slope0[live], curv0[live], np.zeros(n), np.zeros(n)
        grow = np.ones(n, bool)
        while grow.any():  # double hi until the slope turns (or s_max)
            idx = np.flatnonzero(grow)
            sl, cv = parts(hi[idx], live[idx])
            up = sl > 0
            lo[idx[up]], f_lo[idx[up]], c_lo[idx[up]] = hi[idx[up]], sl[up], cv[up]
            f_hi[idx[~up]], c_hi[idx[~up]] = sl[~up], cv[~up]
            capped = up & (hi[idx] >= s_max)
            hi[idx[up & ~capped]] = np.minimum(2 * hi[idx[up & ~capped]], s_max)
            grow[idx[~up | capped]] = False
            lo[idx[capped]] = hi[idx[capped]] = s_max
        x = lo.copy()
        todo = np.flatnonzero(hi > lo)
        for _ in range(100):
            if not len(todo):
                break
            # the next point: a Newton step from lo, else from hi (f is monotone; from the side where
            # f is convex, or concave, Newton stays inside the bracket and converges quadratically),
            # else the secant of the bracket, else its midpoint
            a, b = lo[todo], hi[todo]
            with np.errstate(divide="ignore", invalid="ignore"):
                cands = [
                    a + f_lo[todo] / c_lo[todo],
                    b + f_hi[todo] / c_hi[todo],
                    a - f_lo[todo] * (b - a) / (f_hi[todo] - f_lo[todo]),
                ]
            nxt = 0.5 * (a + b)
            for c in cands[::-1]:
                nxt = np.where(np.isfinite(c) & (c > a) & (c < b), c, nxt)
            sl, cv = parts(nxt, live[todo])
            pos = sl > 0
            lo[todo[pos]], f_lo[todo[pos]], c_lo[todo[pos]] = nxt[pos], sl[pos], cv[pos]
            hi[todo[~pos]], f_hi[todo[~pos]], c_hi[todo[~pos]] = nxt[~pos], sl[~pos], cv[~pos]
            x[todo] = nxt
            step = np.abs(np.where(pos, sl / cv, sl / cv))
            done = (step <= 1e-10 * (1 + nxt)) | (hi[todo] - lo[todo] <= 1e-12 * (1 + hi[todo])) | (sl == 0)
            todo = todo[~done]
        s[live] = x
    value = parts(s, every, True)
    return np.maximum(value, 0.0) / LN2, s


def bootstrap_gmi(logq: np.ndarray, y: np.ndarray, k: int, w: np.ndarray, s_max: float) -> np.ndarray:
    """Replicates of max_s GMI(s) (bits) under the row weights `w` (B, n) (the shared group
    resamples, science.md §8); each replicate's prior P is its own weighted label prior, as
    the point estimate's is the evaluated rows' prior."""
    if w.shape[0] == 0 or len(y) == 0:
        return np.zeros(0)
    return gmi_max_batch(logq, y, w, _weighted_log_prior(y, k, w), s_max)[0]


def _weighted_log_prior(y: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1.0
    P = w @ Y
    with np.errstate(divide="ignore"):
        return np.log(P / P.sum(1, keepdims=True))


def permutation_p(
    logq: np.ndarray, y: np.ndarray, k: int, codes: np.ndarray, n_perm: int, seed: int, s_max: float
) -> tuple[float | None, float]:
    """Label-permutation p-value of GMI (science.md §2: "is anything accessible?"): the labels
    are permuted across groups with the group structure kept (`_stats.permute_labels_by_group`),
    the cached scores reused, and GMI recomputed with each permutation's own prior;
    p = (1 + #{GMI_perm >= GMI_obs}) / (1 + n_perm). Also returns the observed GMI."""
    obs = float(gmi_max_batch(logq, y, None, _weighted_log_prior(y, k, np.ones((1, len(y)))), s_max)[0][0])
    if n_perm <= 0:
        return None, obs
    rng = np.random.default_rng(seed)
    Yp = np.stack([permute_labels_by_group(y, codes, rng) for _ in range(n_perm)])
    Y1 = np.zeros((n_perm, len(y), k))
    Y1[np.arange(n_perm)[:, None], np.arange(len(y))[None, :], Yp] = 1.0
    P = Y1.sum(1)
    del Y1
    with np.errstate(divide="ignore"):
        logP = np.log(P / P.sum(1, keepdims=True))
    null = gmi_max_batch(logq, Yp, None, logP, s_max)[0]
    return float((1 + np.sum(null >= obs - 1e-12 * max(1.0, obs))) / (1 + n_perm)), obs


# --------------------------------------------------------------------------- the LM rate


def _lm_terms(lq: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray, present: np.ndarray):
    """Weighted cross-entropy of softmax(s lq + a), its gradient and Hessian in (s, the offsets
    of the present classes but the first); theta = (s, a over all K classes). Row i, class c
    has the feature vector phi = (lq_ic, one-hot of c over those offsets): the gradient is
    E_w[E_pi phi - phi_y], the Hessian E_w[Cov_pi phi]."""
    from scipy.special import logsumexp

    n, k = lq.shape
    a = np.where(present, theta[1:], -np.inf)
    Z = theta[0] * lq + a[None, :]
    L = logsumexp(Z, axis=1)
    pi = np.exp(Z - L[:, None])
    wn = w / w.sum()
    ce = float(wn @ (L - Z[np.arange(n), y]))
    free = np.flatnonzero(present)[1:]
    F = np.concatenate([lq[:, None, :], np.broadcast_to(np.eye(k)[free][None], (n, len(free), k))], 1)
    mean = np.einsum("nk,ndk->nd", pi, F)
    g = wn @ (mean - F[np.arange(n), :, y])
    Fc = F - mean[:, :, None]
    H = np.einsum("n,nk,ndk,nek->de", wn, pi, Fc, Fc)
    return ce, g, H


def lm_rate(
    logq: np.ndarray,
    y: np.ndarray,
    k: int,
    w: np.ndarray | None = None,
    tol: float = 1e-11,
    max_iter: int = 200,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The LM rate (science.md §2), in bits:
        max over s >= 0 and a of E[s log q(y|x) + a(y) - log sum_y' P(y') e^{s log q(y'|x) + a(y')}]
    With a' = a + log P this is H(P) - min over (s, a') of the cross-entropy of
    softmax(s log q + a'): a convex problem in K parameters (a' fixed up to a constant: the
    first present class's offset is 0), solved by Newton's method with backtracking, s kept
    >= 0. `w`: row weights (default 1); P is the weighted label prior. `start`: another fit
    of these scores (under other weights) to start from, its offsets moved to this prior."""
    lq = np.where(np.isfinite(logq), np.asarray(logq, dtype=np.float64), FLOOR)
    lq = lq - lq.max(1, keepdims=True)  # a per-row shift cancels in the softmax; keeps exp() in range
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    if (w <= 0).any():  # a row of weight 0 (a class a resample did not draw) would give 0 * inf
        keep = w > 0
        lq, y, w = lq[keep], np.asarray(y)[keep], w[keep]
    P = np.bincount(y, weights=w, minlength=k) / w.sum()
    present = P > 0
    h = float(-(P[present] * np.log(P[present])).sum())
    logP = np.where(present, np.log(np.where(present, P, 1.0)), 0.0)
    theta = np.concatenate([[0.0], logP])
    if start is not None:  # the same offsets a (a' = a + log P) under this prior, the same s
        a = np.where(present, start["offsets"], 0.0)
        theta = np.concatenate([[start["s"]], logP + a - a[present][0]])
    ce, g, H = _lm_terms(lq, y, w, theta, present)
    free = np.flatnonzero(present)[1:]
    if g[0] >= 0 and theta[0] == 0.0:  # the profile slope in s at 0 (a at its optimum there): the maximum is at s = 0
        return {"bits": 0.0, "s": 0.0, "offsets": np.zeros(k), "theta": theta, "present": present, "hessian": H}
    for _ in range(max_iter):
        try:
            d = -np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            d = -np.linalg.pinv(H) @ g
        dec = -float(g @ d)  # Newton decrement squared: the model's predicted decrease x 2
        if dec / 2 <= tol:
            break
        t = 1.0
        if theta[0] + d[0] < 0:
            t = theta[0] / -d[0]  # stop at s = 0
            if t <= 0:
                break
        while True:
            trial = theta.copy()
            trial[0] = max(theta[0] + t * d[0], 0.0)
            trial[1 + free] += t * d[1:]
            ce_t, g_t, H_t = _lm_terms(lq, y, w, trial, present)
            if ce_t <= ce - 1e-4 * t * dec or t < 1e-10:
                break
            t *= 0.5
        if t < 1e-10 and not ce_t <= ce:  # no decrease (or not a number): stop here
            break
        theta, ce, g, H = trial, ce_t, g_t, H_t
    offsets = np.where(present, theta[1:] - np.log(np.where(present, P, 1.0)), 0.0)
    return {
        "bits": max(h - ce, 0.0) / LN2,
        "s": float(theta[0]),
        "offsets": offsets - offsets[present][0],
        "theta": theta,
        "present": present,
        "hessian": H,
    }


def lm_rate_replicates(
    logq: np.ndarray,
    y: np.ndarray,
    k: int,
    w: np.ndarray,
    fit: dict[str, Any],
    n_steps: int = 5,
    chunk_elems: int = 1 << 21,
    tol: float = 1e-8,
) -> np.ndarray:
    """The LM rate (bits) under each row weighting of `w` (B, n), from the point fit `fit` by
    `n_steps` chord-Newton steps (the point fit's Hessian held fixed, each replicate's own
    gradient): a replicate's optimum is usually near the point's. The chord steps can diverge
    where the Hessian changes fast (small n, confident scores: up to half the replicates went
    to 0 bits on the toy at n = 100), so a replicate whose final Newton decrement (under the
    point's Hessian) is above `tol`, or whose value is not finite, is refitted exactly
    (`lm_rate` on its weights). A class a replicate did not draw drops out of it."""
    lq = np.where(np.isfinite(logq), np.asarray(logq, dtype=np.float64), FLOOR)
    lq = lq - lq.max(1, keepdims=True)
    lqT = np.ascontiguousarray(lq.T)  # class-major: reductions over classes are elementwise
    n = len(y)
    free = np.flatnonzero(fit["present"])[1:]
    Hinv = np.linalg.pinv(fit["hessian"])
    B = w.shape[0]
    out = np.zeros(B)
    Y = np.zeros((n, k))
    Y[np.arange(n), y] = 1.0
    lq_y = lq[np.arange(n), y]
    step = max(1, chunk_elems // max(n * k, 1))
    for c0 in range(0, B, step):
        W = w[c0 : c0 + step]
        b = len(W)
        tot = W.sum(1)
        P = (W @ Y) / tot[:, None]
        present = P > 0
        th = np.tile(fit["theta"], (b, 1))
        for it in range(n_steps + 1):
            th[:, 0] = np.maximum(th[:, 0], 0.0)
            s = th[:, 0]
            A = np.where(present, th[:, 1:], -np.inf)  # (b, K)
            Z = s[None, :, None] * lqT[:, None, :] + A.T[:, :, None]  # (K, b, n)
            mx = Z.max(0)
            np.subtract(Z, mx[None], out=Z)
            np.exp(Z, out=Z)
            S = Z.sum(0)
            if it == n_steps:
                with np.errstate(invalid="ignore"):  # 0 * inf of an undrawn class's rows: weighed 0 below
                    term = mx + np.log(S) - (s[:, None] * lq_y[None] + A[:, y])
                    ce = np.where(W > 0, W * term, 0.0).sum(1) / tot  # a row of an undrawn class weighs 0
                with np.errstate(divide="ignore", invalid="ignore"):
                    h = -np.where(present, P * np.log(np.where(present, P, 1.0)), 0.0).sum(1)
                out[c0 : c0 + b] = np.maximum(h - ce, 0.0) / LN2
            Z /= S[None]  # pi
            ga = np.einsum("bn,kbn->bk", W, Z) / tot[:, None] - P
            m = (Z * lqT[:, None, :]).sum(0)
            gs = (W * (m - lq_y[None])).sum(1) / tot
            g = np.concatenate([gs[:, None], np.where(present, ga, 0.0)[:, free]], 1)
            d = -g @ Hinv.T
            if it == n_steps:
                # s at its bound 0 with the slope pushing below it is converged in s
                g[:, 0] = np.where((s <= 0) & (gs > 0), 0.0, g[:, 0])
                dec = -np.einsum("bd,bd->b", g, -g @ Hinv.T)
                for j in np.flatnonzero(~np.isfinite(out[c0 : c0 + b]) | ~(dec / 2 <= tol)):
                    out[c0 + j] = lm_rate(logq, y, k, w=W[j], start=fit)["bits"]
                break
            th[:, 0] += d[:, 0]
            th[:, 1 + free] += d[:, 1:]
    return out
