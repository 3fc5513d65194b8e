"""What both probe protocols record beside the per-stage scores: the retention numbers
across stages with their CIs and the d/N note (science.md §1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mch.api import Metric

from ._stats import percentile_ci


def _retention(acc: Any, c: float) -> Any:
    return None if acc is None else (acc - c) / (1 - c)


def _ci(reps: np.ndarray | None, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile CI of replicates, or none when more of them are undefined (NaN: a ratio whose
    denominator a resample took to 0) than the interval's tails hold."""
    if reps is None or len(reps) == 0 or np.mean(~np.isfinite(reps)) > (1 - level) / 2:
        return None, None
    return percentile_ci(reps, level)


def attribute_level(
    attr: str,
    c: float,
    acc: dict[str, float],
    reps: dict[str, np.ndarray] | None = None,
    n: int | None = None,
    n_groups: int | None = None,
) -> list[Metric]:
    """The retention numbers across stages, each under its own name (science.md §1), and the
    chance level c they use (`chance_retention`), so that a reader sees the c of each number.
    With `reps` (stage -> accuracy replicates on the shared group resamples) each number gets
    its CI from the same draws at every stage (c held at the probed rows' value)."""
    out = [Metric("chance_retention", c, None, attr)]
    a_en, a_ad, a_fi = acc.get("encoder"), acc.get("adapter"), acc.get("llm.final")
    r = reps or {}
    r_en, r_ad, r_fi = r.get("encoder"), r.get("adapter"), r.get("llm.final")

    def metric(name: str, value: Any, rep: Any) -> Metric:
        lo, hi = _ci(rep) if rep is not None and value is not None else (None, None)
        return Metric(name, value, None, attr, lo, hi, n, n_groups if lo is not None else None)

    if a_ad is not None and a_fi is not None:
        # the reference returns NaN when the adapter is within 0.001 of chance
        rep = None
        if r_ad is not None and r_fi is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                rep = np.where(r_ad - c > 1e-3, 100 * (r_fi - c) / (r_ad - c), np.nan)
        out.append(metric("retained_pct", 100 * (a_fi - c) / (a_ad - c) if a_ad - c > 1e-3 else None, rep))
    if a_fi is not None:
        out.append(
            metric("final_over_chance", a_fi / c if c > 0 else None, r_fi / c if r_fi is not None and c > 0 else None)
        )
    if a_en is not None and a_fi is not None:
        rep = _retention(r_en, c) - _retention(r_fi, c) if r_en is not None and r_fi is not None else None
        out.append(metric("delta_tau", _retention(a_en, c) - _retention(a_fi, c), rep))
    return out


def d_over_n_note(attr: str, n: int, dims: dict[str, int]) -> str:
    """The note every default probe record carries (science.md §1)."""
    ds = sorted(set(dims.values()))
    d = str(ds[0]) if len(ds) == 1 else f"{ds[0]}-{ds[-1]} by stage"
    return (
        f"{attr}: I_probe is a lower bound on I(Y; h) whose looseness grows with d/N (d = {d}, N = {n} rows): "
        f"a linear probe fitted on N rows of d dimensions leaves information unfound as d/N grows"
    )
