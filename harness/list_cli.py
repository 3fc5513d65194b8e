"""`mch list models|datasets|analyses|params|options`: what is registered, from the registry's
plain-data specs (no heavy imports; `params` and `options` import the plugin classes they
describe).
"""

from __future__ import annotations

import typer
from rich.console import Console

from .api import MchError
from .cli_options import split_csv

app = typer.Typer(help="List registered models, datasets or analyses (no heavy imports).")
console = Console(stderr=False)


def _reg():
    from .manager import get_registry

    return get_registry()


LONG = typer.Option(False, "--long", "-l", help="also show descriptions")


def _table(title: str, cols: list, rows: list, long: bool) -> None:
    """A listing: the name column never wraps (`mch list models | grep NAME` finds the whole
    line); a table when it fits the terminal, else one block per entry (mch.tables)."""
    from .tables import Col, Grid, emit, stdout_console

    g = Grid([Col(c, no_wrap=(i == 0)) for i, c in enumerate(cols + (["description"] if long else []))], title=title)
    for r in rows:
        g.add(r if long else r[:-1])
    emit(stdout_console(), g)


@app.command("models")
def list_models(long: bool = LONG):
    """Model plugins with their modality and checkpoint."""
    _table(
        "models",
        ["name", "modality", "checkpoint", "revision", "aliases", "plugin"],
        [
            [s.name, s.modality, s.checkpoint, s.revision or "-", ", ".join(s.aliases), s.source, s.description]
            for s in _reg().models.values()
        ],
        long,
    )


@app.command("datasets")
def list_datasets(long: bool = LONG):
    """Attribute datasets with their attributes and where they come from."""
    _table(
        "datasets",
        ["name", "modality", "attributes", "source", "plugin"],
        [
            [s.name, s.modality, ", ".join(s.attributes), s.source_hint, s.source, s.description]
            for s in _reg().datasets.values()
        ],
        long,
    )


@app.command("analyses")
def list_analyses(long: bool = LONG):
    """Analyses and whether they need the live model."""
    _table(
        "analyses",
        ["name", "needs live model", "under torchrun", "plugin"],
        [
            [s.name, "yes" if s.needs_model else "no", "rank 0", s.source, s.description]
            for s in _reg().analyses.values()
        ],
        long,
    )
    console.print(
        "An analysis that compares with the text baseline reads its representations from the "
        "store; when they are not there, the run extracts them with the model first."
    )
    console.print(
        "Under torchrun or accelerate launch, every rank extracts its share of the store's chunks; then "
        "rank 0 runs every analysis alone (no analysis shards its sample loop: GMI scoring, the slow part, "
        "runs on rank 0's device and is cached in the store) and the other ranks exit. A text baseline an "
        "analysis asks for is extracted by rank 0 alone: `mch extract --text` under the launcher first "
        "shares it too."
    )


@app.command("params")
def list_params(
    analysis: list[str] | None = typer.Argument(None, help="analyses (default: all)"),
    protocol: str = typer.Option("default", "--protocol", help="default or paper"),
):
    """The parameters each analysis takes under a protocol, with their defaults and the type and
    range a value must have (set them with --param ANALYSIS.KEY=VALUE; the analysis's module
    docstring says what each means)."""
    import json

    from .api import PROTOCOLS, load_entry, param_table

    if protocol not in PROTOCOLS:
        raise MchError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    from .tables import Col, Grid, emit, stdout_console

    reg = _reg()
    specs = [reg.get("analysis", a) for a in (split_csv(analysis) or list(reg.analyses))]
    # every line names its analysis, so a line read alone (grep) or a stacked block says whose it is
    g = Grid(
        [Col("analysis", no_wrap=True), Col("parameter", no_wrap=True), Col("default"), Col("type and range")],
        title=f"analysis parameters ({protocol} protocol)",
        key_cols=2,
    )
    for spec in specs:
        obj = load_entry(spec.entry)(spec)
        params = {**obj.default_params(protocol), **spec.options.get("params", {})}
        types = param_table(params, getattr(obj, "param_specs", None))
        for k, v in sorted(params.items()):
            g.add([spec.name, k, json.dumps(v), types[k].describe()])
        if not params:
            g.add([spec.name, "-", "(no parameters)", ""])
    emit(stdout_console(), g)


@app.command("options")
def list_options(name: list[str] | None = typer.Argument(None, help="models or datasets (default: all)")):
    """The options each model and dataset plugin takes (set them with --model-option or
    --data-option KEY=VALUE, or in the registry entry's `options:`), with their types. Imports
    the plugin modules (torch for the models)."""
    from .api import MODEL_OPTIONS, load_entry
    from .tables import Col, Grid, emit, stdout_console

    reg = _reg()
    wanted = split_csv(name)
    for n in wanted or []:  # an unknown name: one sentence with a suggestion
        if n not in reg.datasets:
            reg.get("model", n)
    wanted = [reg.aliases.get(n, n) for n in wanted or []]
    g = Grid(
        [
            Col("kind", no_wrap=True),
            Col("name", no_wrap=True),
            Col("option", no_wrap=True),
            Col("type"),
            Col("meaning", max_width=40),
        ],
        title="model and dataset options",
        key_cols=3,
    )
    for kind, table in (("model", reg.models), ("dataset", reg.datasets)):
        for spec in table.values():
            if wanted and spec.name not in wanted:
                continue
            declared = getattr(load_entry(spec.entry), "option_specs", None)
            if declared is None:
                g.add([kind, spec.name, "-", "(not declared: passed unchecked)", ""])
                continue
            declared = {**MODEL_OPTIONS, **declared} if kind == "model" else declared
            if not declared:
                g.add([kind, spec.name, "-", "(no options)", ""])
            for k, p in sorted(declared.items()):
                g.add([kind, spec.name, k, p.resolved().describe(), p.help])
    emit(stdout_console(), g)
