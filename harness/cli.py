"""The `mch` command line (typer + rich).

Light commands (`--help`, `list`, `plugins`, `leaderboard`) never import torch: plugin
specs are plain data, and model/analysis code is imported only by `bench`, `extract` and
`analyze`. A user error ends in one sentence and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from . import io_cli, list_cli, run_cli
from .api import MchError
from .run_cli import _options  # noqa: F401 - where callers have always found it
from .store_cli import app as store_app
from .terminal import err_console, exit_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    rich_markup_mode="rich",
    help="mch, the modality-collapse harness: how much non-text information multimodal LLMs "
    "keep accessible to their text decoder, layer by layer.",
)


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


# the commands in the order `mch --help` lists them
run_cli.mount(app)  # `mch bench`, `mch extract`, `mch analyze`
app.add_typer(list_cli.app, name="list")
app.add_typer(store_app, name="store")  # `mch store list|rm`
io_cli.mount(app)  # `mch export`, `mch export-store`, `mch import-reference`


@app.command()
def plugins():
    """Installed plugins: what each contributes, or why it failed to load."""
    from .manager import get_registry
    from .tables import Col, Grid, emit, stdout_console

    g = Grid(
        [Col("name", no_wrap=True), Col("entry point"), Col("distribution"), Col("status"), Col("contributes")],
        title="plugins (entry-point group 'mch')",
    )
    for info in get_registry().plugins:
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
