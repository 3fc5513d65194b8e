"""mch from Python: run, read and tabulate measurements (docs/python-api.md).

    import mch
    res = mch.bench(model="toy", analyses=["probe", "gmi"])   # -> Results
    df = res.to_frame()                                       # one row per metric
    res.plot_layers(metric="accuracy")                        # per-layer curves
    res = mch.load_results("results/")                        # records written earlier
    vecs = mch.store.load(KEY)                                # stored vectors, memory-mapped

Every run option is a keyword named like its command-line flag (`protocol="paper"`,
`params={"probe": {"n_splits": 10}}`, `data_options={...}`, `out=`, `store=`), or comes from
a run config (`config="run.yaml"`, keywords on top). Messages go to the stdlib logger
`mch` (plain text, no markup); nothing is printed. Records go where the CLI writes them
($MCH_RESULTS, else ./results) unless `out=` says otherwise.

Light: importing this module imports neither torch nor numpy; pandas (`mch[frames]`) and
matplotlib (`mch[plot]`) only when a table or a plot is asked for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .api import MchError, stage_sort_key
from .extras import need

logger = logging.getLogger("mch")

# One row per (model, checkpoint, dataset, analysis, protocol, stage, attribute, metric).
KEY_COLUMNS = ["model", "checkpoint", "dataset", "analysis", "protocol", "stage", "attribute", "metric"]
VALUE_COLUMNS = ["value", "ci_low", "ci_high", "n"]
EXTRA_COLUMNS = ["smoke", "created_at", "record"]
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS + EXTRA_COLUMNS


def plain(message: str) -> str:
    """A runner message (rich markup such as [bold]...[/]) as plain text for a library log."""
    try:
        from rich.text import Text

        return Text.from_markup(message).plain
    except Exception:  # noqa: BLE001 - a message that is not valid markup is shown as it is
        return message


def _log(message: str) -> None:
    logger.info(plain(message))


def _progress(show: bool) -> Any:
    if not show:
        from .context import Progress

        return Progress()
    from rich.console import Console

    from .terminal import RichProgress

    return RichProgress(Console(stderr=True))


def _run_config(model: str | None, dataset: str | None, analyses: Any, config: Any, options: dict[str, Any]) -> Any:
    from .configs import load_config, make_run_config

    base: dict[str, Any] = {}
    if config is not None:
        base = load_config(Path(config)) if isinstance(config, (str, os.PathLike)) else dict(config)
    top = dict(options)
    if model is not None:
        top["model"] = model
    if dataset is not None:
        top["dataset"] = dataset
    if analyses is not None:
        top["analyses"] = [analyses] if isinstance(analyses, str) else list(analyses)
    if "out" not in top and "out_dir" not in top and "out" not in base:
        top["out_dir"] = Path(os.environ.get("MCH_RESULTS", "results"))
    return make_run_config(base, **top)


# --------------------------------------------------------------------------- running


def bench(
    model: str | None = None,
    dataset: str | None = None,
    analyses: Sequence[str] | str | None = None,
    *,
    config: str | os.PathLike | dict | None = None,
    progress: bool = False,
    **options: Any,
) -> Results:
    """Extract (or reuse the store), run the analyses, write one record per analysis: what
    `mch bench` does. Defaults as the CLI's: the toy organism, probe + gmi.

    `options` are the run options by their flag names: attributes, checkpoint, revision,
    adapter, data_path, split, limit, seed, device, dtype, protocol, span, stages, batch_size,
    out, store, on_error, params, model_options, data_options, text_checkpoint, text_revision,
    trust_remote_code, device_map, max_memory (a string as the flag takes it, or a dict such
    as {0: "70GiB", "cpu": "200GiB"}). `progress=True` draws progress bars on stderr. Under
    torchrun / accelerate launch every rank extracts its share and rank 0 alone runs the
    analyses: the other ranks get empty Results."""
    from .runner import run_bench

    cfg = _run_config(model, dataset, analyses if analyses is not None else None, config, options)
    p, written = _keeping(run_bench, cfg, progress)
    return Results(written, model_loaded=p.loaded)


def analyze(
    model: str | None = None,
    dataset: str | None = None,
    analyses: Sequence[str] | str | None = None,
    *,
    config: str | os.PathLike | dict | None = None,
    progress: bool = False,
    **options: Any,
) -> Results:
    """Run analyses on representations already in the store (never extracts): what `mch
    analyze` does, including on vectors brought in by `mch import-reference`."""
    from .runner import run_analyze

    cfg = _run_config(model, dataset, analyses if analyses is not None else ["probe"], config, options)
    p, written = _keeping(run_analyze, cfg, progress)
    return Results(written, model_loaded=p.loaded)


def _keeping(run: Any, cfg: Any, progress: bool) -> Any:
    """`run` (run_bench or run_analyze); when it stops early, the records written before the
    stop are named in the log (they are on disk: `mch.load_results` reads them)."""
    from . import dist

    written: list[Path] = []
    try:
        return run(cfg, _log, _progress(progress), on_record=lambda path, rec: written.append(path))
    except BaseException:
        dist.shutdown()  # as cli.main: a group left open outlives the interpreter and can abort the rank
        if written:
            logger.warning("records written before the stop: %s", ", ".join(map(str, written)))
        raise


def extract(
    model: str | None = None,
    dataset: str | None = None,
    *,
    text: bool = False,
    config: str | os.PathLike | dict | None = None,
    progress: bool = False,
    **options: Any,
) -> Any:
    """Extract pooled representations into the store (resumable) and return them as
    `mch.store.StoredVectors` (memory-mapped numpy, sample ids, labels); with `text=True`
    also the text baseline's, returned as a pair (modal, text)."""
    from . import dist
    from .runner import extract as do_extract, plan, text_plan
    from .store import StoredVectors

    cfg = _run_config(model, dataset, [], config, options)
    try:
        p = plan(cfg, _log, _progress(progress))
        modal = do_extract(p, "modal")
        texts = do_extract(text_plan(p), "text") if text else None
    except BaseException:
        dist.shutdown()  # as in _keeping
        raise
    dist.finish()  # under a launcher: every rank returns the complete entries
    stages = p.cfg.stages  # an entry read for a stage subset holds more: return those asked
    if texts is None:
        return StoredVectors(modal, stages)
    return StoredVectors(modal, stages), StoredVectors(texts, stages)


def load_results(*paths: str | os.PathLike) -> Results:
    """Every valid result record under the given files or directories (default: $MCH_RESULTS,
    else ./results). A path that does not exist is one sentence."""
    from .results import read_records

    if not paths:
        paths = (os.environ.get("MCH_RESULTS", "results"),)
    for p in paths:
        if not Path(p).expanduser().exists():
            raise MchError(
                f"no results at {p}: pass a results directory or record file (mch writes them to "
                f"./results or $MCH_RESULTS)"
            )
    return Results(read_records([Path(p).expanduser() for p in paths]))


# --------------------------------------------------------------------------- the table


def metric_rows(items: Iterable[tuple[Any, dict]], latest: bool = True) -> list[dict[str, Any]]:
    """The records' metrics as table rows (COLUMNS). With `latest`, only the newest record of
    each measurement is kept, so repeated runs appear once: a measurement is (model, the
    weights measured, dataset, the samples, analysis, protocol), the leaderboard's identity,
    so a run of other samples (--limit, a split) or of another adapter never hides one."""
    from .entries import measurement_key
    from .results import recency

    items = list(items)
    if latest:
        newest: dict[tuple, tuple[Any, dict]] = {}
        for path, rec in items:
            k = (*measurement_key(rec), rec["analysis"]["name"])
            old = newest.get(k)
            if old is None or recency(rec, path or "") >= recency(old[1], old[0] or ""):
                newest[k] = (path, rec)
        keep = {id(r) for _, r in newest.values()}
        items = [(p, r) for p, r in items if id(r) in keep]
    rows = []
    for path, rec in items:
        for m in rec["metrics"]:
            rows.append(
                {
                    "model": rec["model"]["name"],
                    "checkpoint": rec["model"].get("checkpoint"),
                    "dataset": rec["dataset"]["name"],
                    "analysis": rec["analysis"]["name"],
                    "protocol": rec["protocol"],
                    "stage": m.get("stage"),
                    "attribute": m.get("attribute"),
                    "metric": m["metric"],
                    "value": m.get("value"),
                    "ci_low": m.get("ci_low"),
                    "ci_high": m.get("ci_high"),
                    "n": m.get("n"),
                    "smoke": bool(rec["model"].get("smoke")),
                    "created_at": rec.get("created_at"),
                    "record": None if path is None else str(path),
                }
            )
    return rows


def write_table(rows: list[dict[str, Any]], fmt: str, out: str | os.PathLike) -> Path:
    """Write table rows as csv, jsonl or parquet (`mch export`); returns the path."""
    from .fsio import atomic_write

    out = Path(out).expanduser()
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
        data = buf.getvalue().encode()
        atomic_write(out, lambda f: f.write(data))
    elif fmt == "jsonl":
        data = "".join(json.dumps({k: r.get(k) for k in COLUMNS}) + "\n" for r in rows).encode()
        atomic_write(out, lambda f: f.write(data))
    elif fmt == "parquet":
        pa = need("pyarrow", "parquet export")
        pq = need("pyarrow.parquet", "parquet export")
        schema = pa.schema(
            [
                (
                    c,
                    pa.float64()
                    if c in ("value", "ci_low", "ci_high")
                    else pa.int64()
                    if c == "n"
                    else pa.bool_()
                    if c == "smoke"
                    else pa.string(),
                )
                for c in COLUMNS
            ]
        )
        table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows], schema=schema)
        atomic_write(out, lambda f: pq.write_table(table, f))
    else:
        raise MchError(f"unknown export format {fmt!r}; use csv, parquet or jsonl")
    return out


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows written by `write_table` (csv, jsonl or parquet, by the file's extension), with
    values in their types: for round-trip checks and for tools without pandas."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if p.suffix == ".parquet":
        pq = need("pyarrow.parquet", "reading parquet")
        return pq.read_table(p).to_pylist()
    rows = []
    with p.open(newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {k: (None if v == "" else v) for k, v in r.items()}
            for k in ("value", "ci_low", "ci_high"):
                row[k] = None if row[k] is None else float(row[k])
            row["n"] = None if row["n"] is None else int(row["n"])
            row["smoke"] = row["smoke"] == "True"
            rows.append(row)
    return rows


class Results:
    """Result records of one run (or read back with `mch.load_results`).

    `records` are the records as written (`schemas/result.schema.json`), `paths` their files;
    `to_frame()` is the table, `plot_layers()` the per-layer curves."""

    def __init__(self, items: Iterable[tuple[Any, dict]], model_loaded: bool | None = None) -> None:
        self._items = [(None if p is None else Path(p), r) for p, r in items]
        self.model_loaded = model_loaded

    @property
    def records(self) -> list[dict]:
        return [r for _, r in self._items]

    @property
    def paths(self) -> list[Path | None]:
        return [p for p, _ in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __getitem__(self, analysis: str) -> dict:
        """The newest record of `analysis` ('probe', 'gmi', ...)."""
        from .results import recency

        hits = [(p, r) for p, r in self._items if r["analysis"]["name"] == analysis]
        if not hits:
            have = sorted({r["analysis"]["name"] for r in self.records})
            raise KeyError(f"no {analysis!r} record; these results hold {', '.join(have) or 'none'}")
        return max(hits, key=lambda pr: recency(pr[1], pr[0] or ""))[1]  # rows()'s order: name-2 after name-1

    def __repr__(self) -> str:
        runs = sorted({f"{r['model']['name']} on {r['dataset']['name']} ({r['protocol']})" for r in self.records})
        names = sorted({r["analysis"]["name"] for r in self.records})
        return f"<Results: {len(self)} records ({', '.join(names)}) of {'; '.join(runs) or 'nothing'}>"

    def rows(self, latest: bool = True) -> list[dict[str, Any]]:
        """The table as a list of dicts (no pandas needed); see `to_frame`."""
        return metric_rows(self._items, latest=latest)

    def to_frame(self, latest: bool = True) -> Any:
        """A pandas DataFrame, one row per (model, checkpoint, dataset, analysis, protocol,
        stage, attribute, metric) with value, ci_low, ci_high and n (then smoke, created_at,
        record). `latest=False` keeps every record's rows when a directory holds repeated runs
        of one key. Needs pandas (pip install 'mch[frames]')."""
        pd = need("pandas", "Results.to_frame()")
        frame = pd.DataFrame(self.rows(latest), columns=COLUMNS)
        return frame.astype({"value": "float64", "ci_low": "float64", "ci_high": "float64", "n": "Int64"})

    def to_file(self, out: str | os.PathLike, fmt: str | None = None, latest: bool = True) -> Path:
        """The table written as csv, jsonl or parquet (format from `fmt` or the extension)."""
        fmt = fmt or Path(out).suffix.lstrip(".")
        return write_table(self.rows(latest), fmt, out)

    def plot_layers(
        self,
        metric: str = "accuracy",
        *,
        attribute: str | Sequence[str] | None = None,
        analysis: str | None = None,
        ax: Any = None,
        ci: bool = True,
        latest: bool = True,
    ) -> Any:
        """Per-layer curves of `metric`: stages in forward order (encoder, adapter, llm.0 ...
        llm.final) on x, one line per (model, dataset, protocol, attribute), its 95% CI as a
        band. Returns the matplotlib Axes (drawn on `ax` if given). Needs matplotlib
        (pip install 'mch[plot]')."""
        need("matplotlib", "Results.plot_layers()")
        import matplotlib.pyplot as plt

        attrs = [attribute] if isinstance(attribute, str) else attribute
        rows = [
            r
            for r in self.rows(latest)
            if r["metric"] == metric
            and r["stage"]
            and r["value"] is not None
            and (analysis is None or r["analysis"] == analysis)
            and (attrs is None or r["attribute"] in attrs)
        ]
        if not rows:
            have = sorted({r["metric"] for r in self.rows(latest) if r["stage"]})
            raise MchError(
                f"no per-stage values of metric {metric!r}"
                + (f" for attribute {attribute!r}" if attribute else "")
                + f"; per-stage metrics here: {', '.join(have) or 'none'}"
            )
        stages = sorted({r["stage"] for r in rows}, key=stage_sort_key)
        x = {s: i for i, s in enumerate(stages)}
        lines: dict[tuple, list[dict]] = {}
        for r in rows:
            lines.setdefault((r["model"], r["dataset"], r["protocol"], r["attribute"]), []).append(r)
        varies = [len({k[i] for k in lines}) > 1 for i in range(4)]
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(stages) + 2), 3.6))
        for key, pts in lines.items():
            pts = sorted(pts, key=lambda r: x[r["stage"]])
            xs = [x[r["stage"]] for r in pts]
            label = " · ".join(str(k) for k, v in zip(key, varies, strict=True) if v) or str(key[3] or metric)
            (line,) = ax.plot(xs, [r["value"] for r in pts], marker="o", label=label)
            band = [r for r in pts if r["ci_low"] is not None and r["ci_high"] is not None]
            if ci and band:
                ax.fill_between(
                    [x[r["stage"]] for r in band],
                    [r["ci_low"] for r in band],
                    [r["ci_high"] for r in band],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages, rotation=45 if len(stages) > 6 else 0, ha="right" if len(stages) > 6 else "center")
        ax.set_xlabel("stage")
        ax.set_ylabel(metric)
        first = rows[0]
        ax.set_title(f"{first['model']} on {first['dataset']}" if not (varies[0] or varies[1]) else metric)
        if len(lines) > 1:
            ax.legend(fontsize="small")
        return ax
