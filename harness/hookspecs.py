"""The hookspecs of mch. A plugin is any module or object with functions of these names
decorated with `mch.hookimpl`; it is found through the entry-point group `mch`.

The `mch_register_*` hooks receive a `register` callback (the simonw/llm pattern): call it
once per thing you contribute. Registering is cheap and must not import heavy code: specs
name the class to load as a `"package.module:Class"` string, imported only when the thing is
used. `mch_record_written` is an event: it fires after each result record is written.

    import mch

    @mch.hookimpl
    def mch_record_written(record, path):
        ...
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mch")
hookimpl = pluggy.HookimplMarker("mch")


@hookspec
def mch_register_models(register):
    """Contribute model plugins. Called once when the plugin manager is built.

    ``register(spec: mch.api.ModelSpec)``: `spec.entry` names a `mch.model.ModelPlugin`
    subclass that implements `load`, `stage_map`, `prepare` and `score`. Returns nothing."""


@hookspec
def mch_register_datasets(register):
    """Contribute attribute datasets. Called once when the plugin manager is built.

    ``register(spec: mch.api.DatasetSpec)``: `spec.entry` names a `mch.api.DatasetPlugin`
    subclass whose `attributes(protocol)` declares classes, verbalizers, query and group key,
    and whose `samples(split, limit, seed, protocol)` lists samples deterministically."""


@hookspec
def mch_register_analyses(register):
    """Contribute analyses. Called once when the plugin manager is built.

    ``register(spec: mch.api.AnalysisSpec)``: `spec.entry` names a `mch.api.Analysis`
    subclass; `spec.needs_model` says whether it may use the live model (GMI, ablation,
    LoRA) or only the stored representations (probe, modes, distances)."""


@hookspec
def mch_register_commands(app):
    """Add subcommands to the `mch` typer app. Called when the CLI starts; keep imports
    inside the command functions so `mch --help` stays fast."""


@hookspec
def mch_record_written(record, path):
    """Called after each result record is written, one call per record, as soon as its
    analysis ends (`mch bench`, `mch analyze`, `mch.bench(...)`): the place for loggers and
    uploaders (W&B, MLflow, a Hub push) that live outside mch's core.

    :param dict record: the record as written (validated against
        ``schemas/result.schema.json``); treat it as read-only.
    :param pathlib.Path path: the file it was written to.

    The return value is ignored. The record is already on disk when the hook runs: an
    exception raised here is reported in the run's log and the run goes on (a failing upload
    never costs a measurement). Example: docs/examples/mch-csv-log."""
