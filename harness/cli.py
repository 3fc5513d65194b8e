"""The `mch` command line (typer + rich).

Light commands (`--help`, `list`, `plugins`, `leaderboard`) never import torch: plugin
specs are plain data, and model/analysis code is imported only by `bench`, `extract` and
`analyze`. A user error ends in one sentence and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from .api import MchError
from .io_cli import CONFIG, apply_config
from .terminal import err_console, exit_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    rich_markup_mode="rich",
    help="mch, the modality-collapse harness: how much non-text information multimodal LLMs "
    "keep accessible to their text decoder, layer by layer.",
)
console = Console(stderr=False)


def _version(value: bool) -> None:
    if value:
        from .results import mch_version

        typer.echo(f"mch {mch_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print mch's version and exit"
    ),
) -> None:
    """mch, the modality-collapse harness: how much non-text information multimodal LLMs keep
    accessible to their text decoder, layer by layer."""


def _results_dir(out: Path | None) -> Path:
    return out or Path(os.environ.get("MCH_RESULTS", "results"))


def _json_value(val: str):
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


def _split_csv(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def _config(
    model,
    dataset,
    analysis,
    attribute,
    checkpoint,
    revision,
    adapter,
    data_path,
    split,
    limit,
    seed,
    device,
    dtype,
    protocol,
    span,
    stage,
    batch_size,
    out,
    store,
    on_error,
    param,
    trust_remote_code,
    model_option=None,
    data_option=None,
    text_checkpoint=None,
    text_revision=None,
    device_map=None,
    max_memory=None,
):
    from .runner import RunConfig

    return RunConfig(
        model=model,
        dataset=dataset,
        analyses=_split_csv(analysis) or [],
        attributes=_split_csv(attribute),
        checkpoint=checkpoint,
        revision=revision,
        adapter=adapter,
        data_path=data_path,
        split=split,
        limit=limit,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol,
        span=span,
        stages=_split_csv(stage),
        batch_size=batch_size,
        out_dir=_results_dir(out),
        store=store,
        on_error=on_error,
        params=_params(param or []),
        trust_remote_code=trust_remote_code,
        model_options=_options(model_option or []),
        dataset_options=_options(data_option or [], "--data-option", "sample_rate=16000"),
        text_checkpoint=text_checkpoint,
        text_revision=text_revision,
        device_map=device_map,
        max_memory=max_memory,
    )


# Options shared by bench, extract and analyze.
MODEL = typer.Option("toy", "--model", "-m", help="model plugin (see `mch list models`)")
DATASET = typer.Option(
    None, "--dataset", "-d", help="attribute dataset (default: the model's default_dataset in the registry)"
)
ATTR = typer.Option(None, "--attribute", "-a", help="attributes to analyse (comma-separated; default all)")
CKPT = typer.Option(None, "--checkpoint", help="HF id or local directory (default: the model's release)")
REV = typer.Option(None, "--revision", help="checkpoint revision (HF commit or tag)")
ADAPTER = typer.Option(None, "--adapter", help="PEFT LoRA adapter directory, merged into the LLM")
DATAPATH = typer.Option(None, "--data-path", help="where the dataset lives (default $MCH_DATA/<name>)")
SPLIT = typer.Option(None, "--split", help="dataset split (default: the dataset's)")
LIMIT = typer.Option(None, "--limit", "-n", help="use the first N samples of the selection")
SEED = typer.Option(0, "--seed", help="seed for selection and analyses")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (under torchrun, cuda = each process's own GPU)")
DEVMAP = typer.Option(
    None, "--device-map", help="split the model over devices (accelerate): auto, balanced, balanced_low_0 or sequential"
)
MAXMEM = typer.Option(
    None, "--max-memory", help="with --device-map: the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB"
)
DTYPE = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default bf16 on cuda, fp32 on cpu)")
PROTOCOL = typer.Option("default", "--protocol", help="default (corrected) or paper (the reference's choices)")
SPAN = typer.Option(None, "--span", help="modality, all, text or last (default: modality; paper: all)")
STAGE = typer.Option(None, "--stage", help="stages to capture (comma-separated; default every stage)")
BATCH = typer.Option(16, "--batch-size", "-b", help="samples per forward pass")
OUT = typer.Option(None, "--out", help="results directory (default ./results or $MCH_RESULTS)")
STORE = typer.Option(None, "--store", help="representation store (default ~/.cache/mch/store or $MCH_STORE)")
ONERR = typer.Option("stop", "--on-error", help="stop or skip (record and go on) on a bad sample")
PARAM = typer.Option(None, "--param", help="analysis parameter, ANALYSIS.KEY=VALUE (repeatable)")
MOPT = typer.Option(None, "--model-option", help="model plugin option KEY=VALUE (repeatable; see the plugin's docs)")
DOPT = typer.Option(None, "--data-option", help="dataset plugin option KEY=VALUE (repeatable; docs/datasets.md)")
TCKPT = typer.Option(
    None, "--text-checkpoint", help="paper protocol: the separate text-only model's checkpoint (default: its release)"
)
TREV = typer.Option(None, "--text-revision", help="paper protocol: the text-only model's revision")
TRC = typer.Option(False, "--trust-remote-code", help="allow Hub remote code (off by default)")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress bars")
JSON_OUT = typer.Option(False, "--json", help="print the numbers as JSON on stdout (README: output for machines)")
CSV_OUT = typer.Option(False, "--csv", help="print the numbers as CSV on stdout, one line per metric row")


def _runner_io(quiet: bool):
    """The run's log (stdlib logging, shown on stderr unless quiet) and its progress bars."""
    import logging

    from . import dist
    from .terminal import RichProgress, show_log

    quiet = quiet or not dist.is_main()  # one rank speaks for a data-parallel job (errors still print)
    show_log(err_console, quiet)
    return logging.getLogger("mch.cli").info, RichProgress(err_console, quiet)


@app.command()
def bench(
    ctx: typer.Context,
    model: str = MODEL,
    dataset: str | None = DATASET,
    analysis: list[str] = typer.Option(["probe,gmi"], "--analysis", help="analyses (comma-separated)"),
    attribute: list[str] | None = ATTR,
    checkpoint: str | None = CKPT,
    revision: str | None = REV,
    adapter: str | None = ADAPTER,
    data_path: str | None = DATAPATH,
    split: str | None = SPLIT,
    limit: int | None = LIMIT,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str | None = DTYPE,
    protocol: str = PROTOCOL,
    span: str | None = SPAN,
    stage: list[str] | None = STAGE,
    batch_size: int = BATCH,
    out: Path | None = OUT,
    store: Path | None = STORE,
    on_error: str = ONERR,
    param: list[str] | None = PARAM,
    trust_remote_code: bool = TRC,
    model_option: list[str] | None = MOPT,
    data_option: list[str] | None = DOPT,
    text_checkpoint: str | None = TCKPT,
    text_revision: str | None = TREV,
    device_map: str | None = DEVMAP,
    max_memory: str | None = MAXMEM,
    quiet: bool = QUIET,
    as_json: bool = JSON_OUT,
    as_csv: bool = CSV_OUT,
    config: Path | None = CONFIG,
):
    """Extract (or reuse) representations, run analyses, write one result record per analysis.

    With no arguments: the built-in toy model organism on the toy world, probe + gmi. Under
    torchrun / accelerate launch every rank extracts its share; rank 0 runs the analyses."""
    from . import dist
    from .runner import run_bench

    if as_json and as_csv:
        raise MchError("--json and --csv print the same numbers two ways; pass one of them")
    cfg = _config(
        model,
        dataset,
        analysis,
        attribute,
        checkpoint,
        revision,
        adapter,
        data_path,
        split,
        limit,
        seed,
        device,
        dtype,
        protocol,
        span,
        stage,
        batch_size,
        out,
        store,
        on_error,
        param,
        trust_remote_code,
        model_option,
        data_option,
        text_checkpoint,
        text_revision,
        device_map,
        max_memory,
    )
    cfg = apply_config(ctx, config, cfg)
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


@app.command()
def extract(
    ctx: typer.Context,
    model: str = MODEL,
    dataset: str | None = DATASET,
    checkpoint: str | None = CKPT,
    revision: str | None = REV,
    adapter: str | None = ADAPTER,
    data_path: str | None = DATAPATH,
    split: str | None = SPLIT,
    limit: int | None = LIMIT,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str | None = DTYPE,
    protocol: str = PROTOCOL,
    span: str | None = SPAN,
    stage: list[str] | None = STAGE,
    batch_size: int = BATCH,
    store: Path | None = STORE,
    on_error: str = ONERR,
    text: bool = typer.Option(False, "--text", help="also extract the text baseline"),
    trust_remote_code: bool = TRC,
    model_option: list[str] | None = MOPT,
    data_option: list[str] | None = DOPT,
    text_checkpoint: str | None = TCKPT,
    text_revision: str | None = TREV,
    device_map: str | None = DEVMAP,
    max_memory: str | None = MAXMEM,
    quiet: bool = QUIET,
    config: Path | None = CONFIG,
):
    """Extract pooled representations into the store (resumable; no analysis). Under torchrun /
    accelerate launch each rank extracts its share of the chunks; rank 0 finalizes."""
    from . import dist
    from .runner import extract as do_extract, plan, text_plan

    cfg = _config(
        model,
        dataset,
        [],
        None,
        checkpoint,
        revision,
        adapter,
        data_path,
        split,
        limit,
        seed,
        device,
        dtype,
        protocol,
        span,
        stage,
        batch_size,
        None,
        store,
        on_error,
        [],
        trust_remote_code,
        model_option,
        data_option,
        text_checkpoint,
        text_revision,
        device_map,
        max_memory,
    )
    cfg = apply_config(ctx, config, cfg, skip=("analyses", "attributes", "params", "out_dir"))
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


@app.command()
def analyze(
    ctx: typer.Context,
    model: str = MODEL,
    dataset: str | None = DATASET,
    analysis: list[str] = typer.Option(["probe"], "--analysis", help="analyses (comma-separated)"),
    attribute: list[str] | None = ATTR,
    checkpoint: str | None = CKPT,
    revision: str | None = REV,
    adapter: str | None = ADAPTER,
    data_path: str | None = DATAPATH,
    split: str | None = SPLIT,
    limit: int | None = LIMIT,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str | None = DTYPE,
    protocol: str = PROTOCOL,
    span: str | None = SPAN,
    stage: list[str] | None = STAGE,
    batch_size: int = BATCH,
    out: Path | None = OUT,
    store: Path | None = STORE,
    param: list[str] | None = PARAM,
    model_option: list[str] | None = MOPT,
    data_option: list[str] | None = DOPT,
    text_checkpoint: str | None = TCKPT,
    text_revision: str | None = TREV,
    device_map: str | None = DEVMAP,
    max_memory: str | None = MAXMEM,
    quiet: bool = QUIET,
    as_json: bool = JSON_OUT,
    as_csv: bool = CSV_OUT,
    config: Path | None = CONFIG,
):
    """Run analyses on representations already in the store.

    `mch extract` puts them there, or `mch import-reference` for the reference
    implementation's HDF5 files. Under a launcher, rank 0 runs them and the other ranks exit
    at once."""
    from . import dist
    from .runner import run_analyze

    if not dist.is_main():
        return
    cfg = _config(
        model,
        dataset,
        analysis,
        attribute,
        checkpoint,
        revision,
        adapter,
        data_path,
        split,
        limit,
        seed,
        device,
        dtype,
        protocol,
        span,
        stage,
        batch_size,
        out,
        store,
        "stop",
        param,
        False,
        model_option,
        data_option,
        text_checkpoint,
        text_revision,
        device_map,
        max_memory,
    )
    cfg = apply_config(ctx, config, cfg)
    log, progress = _runner_io(quiet)
    if as_json and as_csv:
        raise MchError("--json and --csv print the same numbers two ways; pass one of them")
    p, written = _keeping_records(run_analyze, cfg, log, progress)
    say = err_console if (as_json or as_csv) else console
    for path, _ in written:
        say.print(Text.assemble("wrote ", (str(path), "bold")), soft_wrap=True)
    if not _machine_output(written, as_json, as_csv, p.loaded):
        show_records([r for _, r in written])


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
    from .report import show_records as show
    from .tables import stdout_console

    heads = {}
    try:
        reg = _reg()
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


list_app = typer.Typer(help="List registered models, datasets or analyses (no heavy imports).")
app.add_typer(list_app, name="list")

from .store_cli import app as store_app  # noqa: E402 - `mch store list|rm`

app.add_typer(store_app, name="store")

from . import io_cli  # noqa: E402 - `mch export`, `mch export-store`, `mch import-reference`

io_cli.mount(app)


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


@list_app.command("models")
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


@list_app.command("datasets")
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


@list_app.command("analyses")
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


@list_app.command("params")
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
    specs = [reg.get("analysis", a) for a in (_split_csv(analysis) or list(reg.analyses))]
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


@list_app.command("options")
def list_options(name: list[str] | None = typer.Argument(None, help="models or datasets (default: all)")):
    """The options each model and dataset plugin takes (set them with --model-option or
    --data-option KEY=VALUE, or in the registry entry's `options:`), with their types. Imports
    the plugin modules (torch for the models)."""
    from .api import MODEL_OPTIONS, load_entry
    from .tables import Col, Grid, emit, stdout_console

    reg = _reg()
    wanted = _split_csv(name)
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


@app.command()
def plugins():
    """Installed plugins: what each contributes, or why it failed to load."""
    from .tables import Col, Grid, emit, stdout_console

    g = Grid(
        [Col("name", no_wrap=True), Col("entry point"), Col("distribution"), Col("status"), Col("contributes")],
        title="plugins (entry-point group 'mch')",
    )
    for info in _reg().plugins:
        status = "loaded" if info.loaded and not info.error else f"failed: {info.error}"
        contrib = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.contributes.items())
        g.add(
            [info.name, info.value, info.dist or "-", status, contrib],
            style=None if info.loaded and not info.error else "red",
        )
    emit(stdout_console(), g)


def _mount_optional() -> None:
    """The leaderboard command group and plugin commands (mch_register_commands)."""
    try:
        from . import leaderboard_cli

        app.add_typer(leaderboard_cli.app, name="leaderboard")
    except ImportError:
        pass
    try:
        from .manager import get_manager

        get_manager().hook.mch_register_commands(app=app)
    except MchError:
        pass


def main(argv: list[str] | None = None) -> None:
    try:
        _run(argv)
    finally:
        from . import dist

        dist.shutdown()


def _on_rank(exc: MchError) -> MchError:
    """Under a launcher, the error names the rank it happened on."""
    from .dist import ranks

    try:
        r = ranks()
    except MchError:
        return exc
    return MchError(f"(rank {r.rank}) {exc}") if r.world > 1 else exc


def _run(argv: list[str] | None = None) -> None:
    try:
        _mount_optional()
        # non-standalone: typer returns the code of a typer.Exit (Ctrl-C becomes Exit(130) in
        # recent typer) instead of exiting, and raises usage errors for us to show
        rc = app(args=argv, prog_name="mch", standalone_mode=False)
    except MchError as exc:
        exit_error(_on_rank(exc))
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit:
        raise
    except Exception as exc:  # usage errors arrive here in non-standalone mode
        if isinstance(exc.__cause__, KeyboardInterrupt):  # older click turns Ctrl-C into Abort
            _interrupted()
        code = _usage_exit(exc)
        if code is None:
            raise
        sys.exit(code)
    if rc == 130:
        _interrupted()
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


def _interrupted() -> None:
    err_console.print("interrupted; extraction resumes where it stopped on the next run")
    sys.exit(130)


def _usage_exit(exc: Exception) -> int | None:
    """Show a command-line usage error (unknown option, bad value) as click does, without a
    traceback, and return its exit code; None for anything else. Recent typer releases carry
    their own copy of click, whose classes are not click's: a usage error is recognised by
    what both have (`show` and an integer `exit_code`), an abort by its class name."""
    if type(exc).__name__ == "Abort":
        return 1
    show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()
        return int(code)
    return None


if __name__ == "__main__":
    main()
