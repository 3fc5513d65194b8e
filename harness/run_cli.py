"""`mch bench`, `mch extract` and `mch analyze`: the commands that run (mch.runner), with the
parsing of their option values and the printing of what they wrote.

Light: typer and rich at import; the runner (and what a run needs) when a command runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from .api import MchError
from .cli_options import RUN_ORDER, split_csv, with_options
from .io_cli import apply_config
from .terminal import err_console

console = Console(stderr=False)


def _results_dir(out: Path | None) -> Path:
    return out or Path(os.environ.get("MCH_RESULTS", "results"))


def _json_value(val: str) -> Any:
    """A command-line VALUE as JSON (10, 0.5, true, [1, 2], {"a": 1}, "x"); anything that is
    not JSON is the string itself. The plugin's declared type then checks it."""
    import json

    try:
        return json.loads(val)
    except ValueError:
        return val


def _params(raw: list[str]) -> dict:
    """`--param probe.n_splits=10` -> {"probe": {"n_splits": 10}}."""
    out: dict = {}
    for item in raw:
        key, sep, val = item.partition("=")
        name, dot, pkey = key.partition(".")
        if not sep or not dot or not pkey:
            raise MchError(f"--param {item!r} must look like ANALYSIS.KEY=VALUE, e.g. probe.n_splits=10")
        out.setdefault(name, {})[pkey] = _json_value(val)
    return out


def _options(raw: list[str], flag: str = "--model-option", example: str = "llm=/models/vicuna-7b") -> dict:
    """`--model-option KEY=VALUE` / `--data-option KEY=VALUE`, VALUE parsed as `--param`'s is
    (so `--data-option 'synth={"actors": 8}'` gives a dict)."""
    out = {}
    for item in raw:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise MchError(f"{flag} {item!r} must look like KEY=VALUE, e.g. {example}")
        out[key] = _json_value(val)
    return out


def run_config(run: dict[str, Any]) -> Any:
    """The RunConfig of a run command's options (by parameter name); an option the command
    does not take has the value it always has there (no analyses, --on-error stop, ...)."""
    from .runner import RunConfig

    return RunConfig(
        model=run["model"],
        dataset=run["dataset"],
        analyses=split_csv(run.get("analysis")) or [],
        attributes=split_csv(run.get("attribute")),
        checkpoint=run["checkpoint"],
        revision=run["revision"],
        adapter=run["adapter"],
        data_path=run["data_path"],
        split=run["split"],
        limit=run["limit"],
        seed=run["seed"],
        device=run["device"],
        dtype=run["dtype"],
        protocol=run["protocol"],
        span=run["span"],
        stages=split_csv(run["stage"]),
        batch_size=run["batch_size"],
        out_dir=_results_dir(run.get("out")),
        store=run["store"],
        on_error=run.get("on_error", "stop"),
        params=_params(run.get("param") or []),
        trust_remote_code=run.get("trust_remote_code", False),
        model_options=_options(run["model_option"] or []),
        dataset_options=_options(run["data_option"] or [], "--data-option", "sample_rate=16000"),
        text_checkpoint=run["text_checkpoint"],
        text_revision=run["text_revision"],
        device_map=run["device_map"],
        max_memory=run["max_memory"],
    )


def _runner_io(quiet: bool):
    """The run's log (stdlib logging, shown on stderr unless quiet) and its progress bars."""
    import logging

    from . import dist
    from .terminal import RichProgress, show_log

    quiet = quiet or not dist.is_main()  # one rank speaks for a data-parallel job (errors still print)
    show_log(err_console, quiet)
    return logging.getLogger("mch.cli").info, RichProgress(err_console, quiet)


@with_options(RUN_ORDER)
def bench(ctx: typer.Context, *, quiet: bool, as_json: bool, as_csv: bool, config: Path | None, **run: Any) -> None:
    """Extract (or reuse) representations, run analyses, write one result record per analysis.

    With no arguments: the built-in toy model organism on the toy world, probe + gmi. Under
    torchrun / accelerate launch every rank extracts its share; rank 0 runs the analyses."""
    from . import dist
    from .runner import run_bench

    if as_json and as_csv:
        raise MchError("--json and --csv print the same numbers two ways; pass one of them")
    cfg = apply_config(ctx, config, run_config(run))
    log, progress = _runner_io(quiet)
    p, written = _keeping_records(run_bench, cfg, log, progress)
    if not dist.is_main():
        return
    machine = _machine_output(written, as_json, as_csv, p.loaded)
    if not machine:
        show_records([r for _, r in written])
    # with --json/--csv stdout holds only the numbers: the rest goes to stderr
    say = err_console if machine else console
    for path, _ in written:
        say.print(Text.assemble("wrote ", (str(path), "bold")), soft_wrap=True)
    if not p.loaded:
        say.print("model not loaded: every representation and score came from the store")


@with_options(RUN_ORDER, omit=("analysis", "attribute", "out", "param", "as_json", "as_csv"))
def extract(
    ctx: typer.Context,
    *,
    text: bool = typer.Option(False, "--text", help="also extract the text baseline"),
    quiet: bool,
    config: Path | None,
    **run: Any,
) -> None:
    """Extract pooled representations into the store (resumable; no analysis). Under torchrun /
    accelerate launch each rank extracts its share of the chunks; rank 0 finalizes."""
    from . import dist
    from .runner import extract as do_extract, plan, text_plan

    cfg = apply_config(ctx, config, run_config(run), skip=("analyses", "attributes", "params", "out_dir"))
    log, progress = _runner_io(quiet)
    p = plan(cfg, log, progress)
    entry = do_extract(p, "modal")
    tentry = do_extract(text_plan(p), "text") if text else None
    dist.finish()
    if not dist.is_main():
        return
    console.print(f"store entry: {entry.dir}", soft_wrap=True)
    from .report import skipped_sample_lines

    for line in skipped_sample_lines(entry.manifest().get("skipped", [])):
        console.print(line, style="yellow", markup=False)
    if tentry is not None:
        console.print(f"text baseline: {tentry.dir}")


@with_options(RUN_ORDER, omit=("on_error", "trust_remote_code"), defaults={"analysis": ["probe"]})
def analyze(ctx: typer.Context, *, quiet: bool, as_json: bool, as_csv: bool, config: Path | None, **run: Any) -> None:
    """Run analyses on representations already in the store.

    `mch extract` puts them there, or `mch import-reference` for the reference
    implementation's HDF5 files. Under a launcher, rank 0 runs them and the other ranks exit
    at once."""
    from . import dist
    from .runner import run_analyze

    if not dist.is_main():
        return
    cfg = apply_config(ctx, config, run_config(run))
    log, progress = _runner_io(quiet)
    if as_json and as_csv:
        raise MchError("--json and --csv print the same numbers two ways; pass one of them")
    p, written = _keeping_records(run_analyze, cfg, log, progress)
    say = err_console if (as_json or as_csv) else console
    for path, _ in written:
        say.print(Text.assemble("wrote ", (str(path), "bold")), soft_wrap=True)
    if not _machine_output(written, as_json, as_csv, p.loaded):
        show_records([r for _, r in written])


def mount(app: typer.Typer) -> None:
    app.command()(bench)
    app.command()(extract)
    app.command()(analyze)


def _keeping_records(run, cfg, log, progress):
    """`run` (run_bench or run_analyze) writes each record as its analysis ends; when it stops
    early (an error, Ctrl-C), say which records were written and which analyses were not,
    then let the error through."""
    written = []

    def on_record(path, rec):
        written.append((path, rec))
        log(f"{rec['analysis']['name']}: record written to {path}")

    try:
        return run(cfg, log, progress, on_record=on_record)
    except BaseException:
        if written:
            done = [rec["analysis"]["name"] for _, rec in written]
            err_console.print(
                "records written before the stop: "
                + ", ".join(f"{n} ({p})" for n, (p, _) in zip(done, written, strict=True)),
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            left = [a for a in (cfg.analyses or []) if a not in done]
            if left:
                err_console.print(f"not written: {', '.join(left)}", markup=False, highlight=False)
        raise


def show_records(records: list) -> None:
    """The run's tables (mch.report): probe, GMI, each other analysis's headline metrics,
    skipped attributes and samples with their reason."""
    from .manager import get_registry
    from .report import show_records as show
    from .tables import stdout_console

    heads: dict[str, Any] = {}
    try:
        reg = get_registry()
        heads = {n: s.options.get("headline") for n, s in reg.analyses.items() if s.options.get("headline")}
    except MchError:
        pass
    show(records, stdout_console(), heads)


def _machine_output(written: list, as_json: bool, as_csv: bool, loaded: bool | None) -> bool:
    """--json / --csv: the numbers on stdout for machines (mch.report); True if printed."""
    from .report import to_csv, to_json

    if as_json and as_csv:
        raise MchError("--json and --csv print the same numbers two ways; pass one of them")
    if as_json:
        sys.stdout.write(to_json(written, loaded) + "\n")
    elif as_csv:
        sys.stdout.write(to_csv(written))
    return as_json or as_csv
