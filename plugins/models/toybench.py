"""`mch toy-bench`: the toy organisms as a validation bench (science.md §7).

Runs `gmi`, `per_type`, `gradient` and `bound` on every organism of the family (the toy,
the dose-response family `toy_emotion_0/10/50` and `toy_emotion`, the geometric mismatches
`toy_scaled` and `toy_rotated`), each on the toy world with the captions its adapter was
trained on (dataset option `emotion_captions`, from the organism's recipe in toy.ORGANISMS), and
reports per organism: emotion's GMI, its TA share under the covariance split and its read
share under the functional split, and the bound's gap against L·W1. Across the family it
says whether emotion's GMI rises with the fraction of emotion-naming captions, and the rank
correlation of the gap with L·W1 (the paper's scaling claim, where the truth is known).

Registered as a plugin command (`mch_register_commands` of the built-in plugin); a record
per (organism, analysis) goes to the results directory as `mch bench` writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FAMILY = ("toy", "toy_emotion_0", "toy_emotion_10", "toy_emotion_50", "toy_emotion", "toy_scaled", "toy_rotated")
ANALYSES = ("gmi", "per_type", "gradient", "bound")
PARAMS: dict[str, dict[str, Any]] = {  # small but honest: every number keeps its CI
    "gmi": {"n_bootstrap": 500},
    "per_type": {"n_boot": 100, "n_perm": 100, "w1_reps": 3},
    "gradient": {"n_samples": 100, "n_boot": 500},
    "bound": {"n_samples": 100, "n_boot": 500, "w1_n_perm": 30},
}


def _metric(rec: dict[str, Any], name: str, attribute: str | None = None) -> dict[str, Any] | None:
    for m in rec["metrics"]:
        if m["metric"] == name and m.get("attribute") == attribute:
            return m
    return None


def _value(rec: dict[str, Any] | None, name: str, attribute: str | None = None) -> float | None:
    if rec is None:
        return None
    m = _metric(rec, name, attribute)
    return None if m is None else m["value"]


def organism_row(name: str, recipe: dict[str, Any], recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bench's numbers for one organism, from its records."""
    gmi, pt, gr, bd = (recs.get(a) for a in ANALYSES)
    row: dict[str, Any] = {"organism": name, **recipe}
    g = _metric(gmi, "gmi_bits", "emotion") if gmi else None
    row["emotion_gmi_bits"] = None if g is None else g["value"]
    row["emotion_gmi_ci"] = None if g is None else [g.get("ci_low"), g.get("ci_high")]
    row["content_gmi_bits"] = _value(gmi, "gmi_bits", "content")
    for a in ("emotion", "content", "speaker"):
        for key, rec, name in (("ta_share", pt, "var_frac_MS"), ("read_share", gr, "var_frac_unread")):
            m = _metric(rec, name, a) if rec else None  # the complement of an MS / unread share
            row[f"{a}_{key}"] = None if m is None or m["value"] is None else 1.0 - m["value"]
            ok = m is not None and m.get("ci_low") is not None and m.get("ci_high") is not None
            row[f"{a}_{key}_ci"] = [1.0 - m["ci_high"], 1.0 - m["ci_low"]] if ok else None
    row["emotion_ms_p"] = _value(pt, "var_frac_ms_p", "emotion")
    for k in ("logscore_gap", "L_max", "W1", "L_W1", "tightness", "w1_excess", "L_W1_excess"):
        row[k] = _value(bd, k)
    if pt is not None:
        row["known_truth_covariance"] = (pt["summary"].get("known_truth") or {}).get("recovered")
    if gr is not None:
        kt = gr["summary"].get("functional_split", {}).get("known_truth", {})
        row["known_truth_functional"] = (kt.get("functional") or {}).get("recovered")
    return row


def family_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dose-response of emotion's GMI and shares, and the gap against L·W1 across organisms."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    dose = sorted(
        (r for r in rows if r.get("emotion_captions") is not None and r["organism"] != "toy"),
        key=lambda r: r["emotion_captions"],
    )
    if len(dose) >= 2:
        f = [r["emotion_captions"] for r in dose]
        for key in ("emotion_gmi_bits", "emotion_ta_share", "emotion_read_share"):
            v = [r[key] for r in dose]
            if all(x is not None for x in v):
                out[f"{key}_by_fraction"] = dict(zip(map(str, f), v, strict=True))
                out[f"{key}_monotone"] = all(b >= a for a, b in zip(v, v[1:], strict=False))
    pts = [
        (r["L_W1"], abs(r["logscore_gap"]))
        for r in rows
        if r.get("L_W1") is not None and r.get("logscore_gap") is not None
    ]
    if len(pts) >= 3:
        rho, p = spearmanr(*zip(*pts, strict=True))
        out["gap_vs_L_W1_spearman"] = {"rho": float(rho), "p": float(p), "n": len(pts)}
    return out


def run_family(
    organisms: Sequence[str],
    limit: int,
    out_dir: Path,
    store: Path | None,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
    progress: bool = False,
    analyses: Sequence[str] = ANALYSES,
) -> dict[str, Any]:
    """Run the bench's analyses on each organism (through mch's Python API, as any plugin
    would); returns {"rows": [...], "family": {...}}."""
    import mch
    from mch.plugins.models.toy import ORGANISMS

    rows = []
    for name in organisms:
        f = ORGANISMS.get(name, {}).get("emotion_captions")
        recipe = {"emotion_captions": float(f) if f is not None else (0.0 if name == "toy" else None)}
        log(f"toy-bench: {name}")
        res = mch.bench(
            model=name,
            dataset="toy",
            analyses=list(analyses),
            limit=limit,
            seed=seed,
            out=out_dir,
            store=store,
            params={a: dict(p) for a, p in PARAMS.items() if a in analyses},
            data_options={"emotion_captions": float(f)} if f else {},
            progress=progress,
        )
        rows.append(organism_row(name, recipe, {a: res[a] for a in analyses}))
    return {
        "rows": rows,
        "family": family_summary(rows),
        "limit": limit,
        "seed": seed,
        "analyses": list(analyses),
        "params": {a: PARAMS[a] for a in analyses},
    }


def register(app: Any) -> None:
    import typer

    @app.command("toy-bench")
    def toy_bench(
        organism: list[str] = typer.Option(
            list(FAMILY), "--organism", "-m", help="organisms to run (repeatable or comma-separated)"
        ),
        limit: int = typer.Option(400, "--limit", help="toy test samples per organism"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(None, "--out", help="results directory (default $MCH_RESULTS or ./results)"),
        store: Path = typer.Option(None, "--store", help="representation store (default $MCH_STORE)"),
        json_out: Path = typer.Option(None, "--json", help="also write the bench table to this JSON file"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """The toy organisms as a validation bench: emotion's GMI, its TA (covariance) and read
        (functional) shares, and the bound's gap against L x W1, per organism."""
        import os

        from rich.console import Console
        from rich.table import Table

        from mch.api import MchError

        names = [x.strip() for v in organism for x in v.split(",") if x.strip()]
        if not names:
            raise MchError("toy-bench: --organism names no organism; use some of " + ", ".join(FAMILY))
        if limit < 40:
            raise MchError(
                f"toy-bench: --limit {limit} is too small for grouped splits and permutation nulls; use at least 40"
            )
        err = Console(stderr=True)
        log = (lambda s: None) if quiet else (lambda s: err.print(f"[dim]mch:[/] {s}"))
        out_dir = out or Path(os.environ.get("MCH_RESULTS", "results"))
        res = run_family(names, limit, out_dir, store, seed, log, progress=not quiet)
        from rich import box

        t = Table(
            title=f"toy validation bench ({limit} samples per organism)",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            caption="emotion: GMI (bits), TA share (covariance split), read share (functional split); "
            "bound: gap, L.W1, ratio = gap/(L.W1), W1 exc = W1 above its null; CIs: --json",
        )
        cols = (
            ("organism", "organism", None),
            ("capt.", "emotion_captions", "{:.0%}"),
            ("GMI", "emotion_gmi_bits", "{:.3f}"),
            ("TA", "emotion_ta_share", "{:.2f}"),
            ("read", "emotion_read_share", "{:.2f}"),
            ("gap", "logscore_gap", "{:.2f}"),
            ("L.W1", "L_W1", "{:.0f}"),
            ("ratio", "tightness", "{:.3f}"),
            ("W1 exc", "w1_excess", "{:.2f}"),
        )
        for head, _, _ in cols:
            t.add_column(head, justify="left" if head == "organism" else "right", no_wrap=True)
        for r in res["rows"]:
            t.add_row(*[("-" if r.get(k) is None else (fmt.format(r[k]) if fmt else str(r[k]))) for _, k, fmt in cols])
        Console().print(t)
        fam = res["family"]
        for key in ("emotion_gmi_bits", "emotion_ta_share", "emotion_read_share"):
            if f"{key}_monotone" in fam:
                Console().print(
                    f"{key} rises with the fraction of emotion-naming captions: "
                    f"{'yes' if fam[key + '_monotone'] else 'no'}"
                )
        if "gap_vs_L_W1_spearman" in fam:
            s = fam["gap_vs_L_W1_spearman"]
            Console().print(
                f"|gap| against L x W1 across {s['n']} organisms: Spearman rho {s['rho']:.2f} (p {s['p']:.2g})"
            )
        if json_out:
            Path(json_out).write_text(json.dumps(res, indent=1) + "\n")
            Console().print(f"wrote [bold]{json_out}[/]")
