"""The functional split (science.md §7, gradient): the top eigenvectors of E[ḡ ḡᵀ], ḡ the
gradient of the decoder log-likelihood with respect to the pooled adapter output, and an
attribute's class scatter inside and outside the subspace they span."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mch.api import MchError

from ._split_basis import _basis_vectors, _fit_basis, _means, _round
from ._split_scatter import corrected, scatter_terms


@dataclass
class FunctionalSplit:
    """The directions the decoder reads (science.md §7): the top eigenvectors of
    F = E[ḡ ḡᵀ], ḡ the gradient of the decoder log-likelihood of the content with respect to
    the pooled adapter output, taken in the modal law's whitened coordinates (ḡ_w = Λ^{1/2}Uᵀḡ,
    so a direction weighs its sensitivity times the data's variation along it) and mapped
    back to the adapter space; `read` spans the top ones holding `mass` of tr F."""

    read: np.ndarray  # (d, n_read) orthonormal basis of the read directions
    eigenvalues: np.ndarray  # eigenvalues of the whitened F, descending
    n_read: int
    mass: float
    n_samples: int

    def record(self) -> dict[str, Any]:
        ev = self.eigenvalues
        share = ev / ev.sum() if ev.size and ev.sum() > 0 else ev
        return {
            "name": "functional",
            "definition": "top eigenvectors of E[grad log q grad log q^T] in the modal "
            f"law's whitened coordinates, holding {self.mass:g} of its trace (science.md §7)",
            "mass": self.mass,
            "n_read": self.n_read,
            "n_samples": self.n_samples,
            "dim": int(self.read.shape[0]),
            "eigenvalue_share_top10": [_round(x) for x in share[:10]],
        }


def whitening_basis(X: Any, rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(U (d, m), λ (m,)): the kept eigenmodes of the covariance of all rows of X."""
    rows = np.arange(X.shape[0])
    (mu,) = _means(X, [rows])
    basis, lam, _ = _fit_basis(X, rows, mu, rel_tol)
    return _basis_vectors(X, rows, basis), lam


def functional_split(G: np.ndarray, U: np.ndarray, lam: np.ndarray, mass: float = 0.9) -> FunctionalSplit:
    """From per-sample pooled gradients G (n, d) and the modal eigenmodes (U, λ)."""
    G = np.asarray(G, dtype=np.float64)
    if G.shape[0] < 2:
        raise MchError("the functional split needs the gradients of at least 2 samples")
    if not 0 < mass <= 1:
        raise MchError(f"functional_mass must lie in (0, 1], not {mass}")
    sq = np.sqrt(np.maximum(lam, 0))
    Gw = (G @ U) * sq  # gradients in whitened coordinates
    _, s, Vt = np.linalg.svd(Gw, full_matrices=False)
    ev = s * s / G.shape[0]
    keep = ev > ev[0] * 1e-12 if ev.size and ev[0] > 0 else np.zeros(ev.shape, bool)
    ev, V = ev[keep], Vt[keep].T
    cum = np.cumsum(ev) / ev.sum() if ev.size else ev
    k = min(int(np.searchsorted(cum, mass - 1e-12) + 1), len(ev)) if ev.size else 0
    B = U @ (sq[:, None] * V[:, :k])  # back in the adapter space (not orthogonal)
    Q = np.linalg.qr(B)[0] if k else np.zeros((U.shape[0], 0))
    return FunctionalSplit(read=Q, eigenvalues=ev, n_read=k, mass=float(mass), n_samples=int(G.shape[0]))


def functional_shares(
    fs: FunctionalSplit,
    X: Any,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 0,
    seed: int = 0,
    names: Sequence[str] = (),
    boot_groups: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """The attribute's noise-corrected class scatter (all labelled rows, full space) inside the
    read subspace (`var_frac_read`) and outside it (`var_frac_unread`: the functional
    counterpart of MS), with group-bootstrap replicates of the rows (the read subspace held
    fixed, as the covariance split's CIs hold its modes); the bootstrap resamples `boot_groups`
    (the attribute's bootstrap key, its declared cluster key where there is one; default
    `groups`), `n_groups` says how many of them the labelled rows hold."""
    from ._stats import group_codes, group_resamples, resample_seed

    labels = np.asarray(labels).astype(str)
    rows = np.flatnonzero(labels != "")
    classes = np.unique(labels[rows])
    C = len(classes)
    if C < 2:
        return None
    y = np.searchsorted(classes, labels[rows])
    Xr = np.asarray(X)[rows].astype(np.float64)
    Xr -= Xr.mean(0)
    R = Xr @ fs.read
    W = None
    if n_boot:
        bg = groups if boot_groups is None else boot_groups
        codes, G = group_codes(None if bg is None else np.asarray(bg)[rows], len(rows))
        if G >= 2:
            W = np.vstack(
                [
                    np.ones((1, len(rows))),
                    group_resamples(G, n_boot, resample_seed(seed, *names)).counts[:, codes].astype(float),
                ]
            )
    sb_f, sw_f, n = scatter_terms(Xr, y, C, W)
    full = corrected(sb_f, sw_f, n, C).sum(1)
    sb, sw, n = scatter_terms(R, y, C, W)
    read = corrected(sb, sw, n, C).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(full > 0, read / full, np.nan)
    out: dict[str, Any] = {
        "var_frac_read": float(share[0]),
        "var_frac_unread": float(1 - share[0]),
        "scatter_signal": float(full[0]),
    }
    if W is not None:
        out["boot_unread"] = 1 - share[1:]
        out["n_groups"] = G
    return out
