"""`mch leaderboard`: the table in the terminal, the static site, submissions.

The commands of `mch.leaderboard` (rows), `mch.leaderboard_table` and `mch.site`
(renderers) and `mch.entries` (submissions). A user error is an MchError, which the CLI's
one error exit (`mch.cli.main`) prints as one sentence with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .api import PROTOCOLS, MchError
from .entries import default_entries_dir, default_results_dirs, load_records, relpath, submit
from .leaderboard import COLUMN_BY_KEY, aggregate, filter_rows, rows_to_json, sort_rows


def collect(
    results: list[Path] | None, entries: Path | None, no_entries: bool, all_runs: bool, smoke: bool = True
) -> list[dict]:
    """The rows of the records found; without `smoke`, smoke-run rows are left out and a line
    on stderr says how many."""
    rows = _collect(results, entries, no_entries, all_runs)
    if smoke:
        return rows
    n = sum(bool(r.get("smoke")) for r in rows)
    if n:
        typer.echo(
            f"note: {n} row{'s' if n != 1 else ''} of smoke runs (random-weight checkpoints) left out; "
            f"--smoke shows them",
            err=True,
        )
    return [r for r in rows if not r.get("smoke")]


def _collect(results: list[Path] | None, entries: Path | None, no_entries: bool, all_runs: bool) -> list[dict]:
    dirs = list(results) if results else default_results_dirs()
    for d in results or []:
        if not Path(d).exists():
            raise MchError(f"results directory {d} does not exist")
    if not no_entries:
        if entries is not None and not Path(entries).is_dir():
            raise MchError(f"entries directory {entries} does not exist")
        dirs.append(entries or default_entries_dir())
    loaded, warnings = load_records(dirs)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    return aggregate(loaded, all_runs=all_runs)


app = typer.Typer(
    name="leaderboard",
    add_completion=False,
    no_args_is_help=False,
    help="The per-model accessibility leaderboard: terminal table, static site, submissions.",
)

SMOKE = typer.Option(False, "--smoke", help="also show smoke runs (random-weight checkpoints), labelled 'smoke'")
RESULTS = typer.Option(None, "--results", help="results directory (repeatable; default ./results or $MCH_RESULTS)")
ENTRIES = typer.Option(None, "--entries", help="committed entries (default leaderboard/entries/)")
NO_ENTRIES = typer.Option(False, "--no-entries", help="leave out the committed entries")


@app.callback(invoke_without_command=True)
def table(
    ctx: typer.Context,
    results: list[Path] | None = RESULTS,
    entries: Path | None = ENTRIES,
    no_entries: bool = NO_ENTRIES,
    attribute: str | None = typer.Option(
        None, "--attribute", help="only this attribute (comma-separated: any of them)"
    ),
    modality: str | None = typer.Option(None, "--modality", help="speech or vision"),
    dataset: str | None = typer.Option(None, "--dataset"),
    protocol: str | None = typer.Option(None, "--protocol", help="default or paper"),
    kind: str | None = typer.Option(None, "--kind", help="measured or reported"),
    sort: str | None = typer.Option(
        None,
        "--sort",
        help="column key, optionally :asc or :desc (e.g. acc_final:desc); keys: " + ", ".join(COLUMN_BY_KEY),
    ),
    all_runs: bool = typer.Option(
        False,
        "--all-runs",
        help="every run, not only the latest per model/checkpoint/dataset/attribute/analysis/protocol",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON instead of a table"),
    smoke: bool = SMOKE,
) -> None:
    """Print the leaderboard table from the results directory and leaderboard/entries/."""
    if ctx.invoked_subcommand is not None:
        return
    if protocol and any(p.strip() not in PROTOCOLS for p in protocol.split(",")):
        raise MchError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    rows = collect(results, entries, no_entries, all_runs, smoke)
    rows = filter_rows(rows, attribute=attribute, modality=modality, dataset=dataset, protocol=protocol, kind=kind)
    rows = sort_rows(rows, sort)
    if as_json:
        typer.echo(rows_to_json(rows))
        return
    if not rows:
        typer.echo("no leaderboard entries found; run `mch bench` (results go to ./results) or pass --results DIR")
        return
    from .leaderboard_table import render_table
    from .tables import stdout_console

    render_table(rows, stdout_console())


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="output directory; index.html is written there"),
    results: list[Path] | None = RESULTS,
    entries: Path | None = ENTRIES,
    no_entries: bool = NO_ENTRIES,
    all_runs: bool = typer.Option(False, "--all-runs", help="every run, not only the latest"),
    smoke: bool = SMOKE,
) -> None:
    """Build the static leaderboard site: one offline index.html (data, JS and CSS inline)."""
    from .site import build_site

    rows = collect(results, entries, no_entries, all_runs, smoke)
    path = build_site(rows, Path(out))
    n_m = sum(r["kind"] == "measured" for r in rows)
    typer.echo(f"wrote {path} ({len(rows)} rows: {n_m} measured, {len(rows) - n_m} reported)")


@app.command("submit")
def submit_cmd(
    result: Path = typer.Argument(..., help="a result record (JSON) written by mch, or a reported entry"),
    entries: Path | None = typer.Option(None, "--entries", help="where entries live (default leaderboard/entries/)"),
    replace: bool = typer.Option(False, "--replace", help="replace an existing entry with the same identity"),
) -> None:
    """Validate a result record and copy it into leaderboard/entries/ under its canonical name."""
    target, replaced = submit(result, entries or default_entries_dir(), replace=replace)
    typer.echo(f"added {relpath(target)}" + (f" (replaced {relpath(replaced)})" if replaced else ""))
