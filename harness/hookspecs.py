"""The hookspecs of mch. A plugin is any module or object with functions of these names
decorated with `mch.hookimpl`; it is found through the entry-point group `mch`.

Each register hook receives a `register` callback (the simonw/llm pattern): call it once per
thing you contribute. Registering is cheap and must not import heavy code: specs name the
class to load as a `"package.module:Class"` string, imported only when the thing is used.
The plugin manager (`mch.manager`) calls each plugin's implementation through pluggy, one
plugin at a time, so what a plugin registers (or the error it raises) is attributed to it.
`mch_record_written` is an event: it fires after each result record is written.

    import mch

    @mch.hookimpl
    def mch_record_written(record, path):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import typer

    from .api import AnalysisSpec, DatasetSpec, ModelSpec

hookspec = pluggy.HookspecMarker("mch")
hookimpl = pluggy.HookimplMarker("mch")


@hookspec
def mch_register_models(register: Callable[[ModelSpec], None]) -> None:
    """Contribute model plugins.

    :param register:
        Call it once per model with a :class:`mch.api.ModelSpec`. ``spec.entry`` names a
        :class:`mch.model.ModelPlugin` subclass (``"package.module:Class"``), which implements
        ``load``, ``stage_map``, ``prepare`` and ``score``.

    Called once, when the plugin manager is built (every ``mch`` command that lists or runs
    plugins). The return value is ignored.
    """


@hookspec
def mch_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Contribute attribute datasets.

    :param register:
        Call it once per dataset with a :class:`mch.api.DatasetSpec`. ``spec.entry`` names a
        :class:`mch.api.DatasetPlugin` subclass whose ``attributes(protocol)`` declares classes,
        verbalizers, query and group key, and whose ``samples(split, limit, seed, protocol)``
        lists samples deterministically.

    Called once, when the plugin manager is built. The return value is ignored.
    """


@hookspec
def mch_register_analyses(register: Callable[[AnalysisSpec], None]) -> None:
    """Contribute analyses.

    :param register:
        Call it once per analysis with a :class:`mch.api.AnalysisSpec`. ``spec.entry`` names a
        :class:`mch.api.Analysis` subclass; ``spec.needs_model`` says whether it may use the
        live model (GMI, ablation, LoRA) or only the stored representations (probe, modes,
        distances).

    Called once, when the plugin manager is built. The return value is ignored.
    """


@hookspec
def mch_register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``mch`` command line.

    :param app:
        The ``mch`` typer app: add commands (``app.command()``) or a command group
        (``app.add_typer(...)``).

    Called when the CLI starts, before the command line is parsed. Keep imports inside the
    command functions so ``mch --help`` stays fast. The return value is ignored.
    """


@hookspec
def mch_record_written(record: dict, path: Path) -> None:
    """React to a result record that was just written: the place for loggers and uploaders
    (W&B, MLflow, a Hub push) that live outside mch's core.

    :param record:
        The record as written (validated against ``schemas/result.schema.json``); treat it
        as read-only.
    :param path:
        The file it was written to.

    Called once per record, as soon as its analysis ends (``mch bench``, ``mch analyze``,
    ``mch.bench(...)``). The return value is ignored. The record is already on disk when the
    hook runs: an exception raised here is reported in the run's log and the run goes on (a
    failing upload never costs a measurement). Example: docs/examples/mch-csv-log.
    """
