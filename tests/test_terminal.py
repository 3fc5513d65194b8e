"""The core logs plain text through stdlib logging; only the CLI styles it (mch.terminal).
The CLI's one error exit prints a user error as text, on one line, exit code 2."""

from __future__ import annotations

import io
import logging
import sys

from rich.console import Console
from typer.testing import CliRunner

from mch.runner import RunConfig, plan
from mch.terminal import RichLogHandler, show_log


def test_the_runner_logs_plain_text_through_stdlib_logging(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mch")
    p = plan(RunConfig(limit=8, store=tmp_path / "s", analyses=[]))  # no log= given: the logger
    p.ensure_loaded()
    said = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("mch.runner", next(m for _, m in said if m.startswith("loading model toy (builtin:toy"))) in said
    assert not [m for _, m in said if "[" in m], said  # no rich markup leaves the core


def test_the_cli_handler_prints_messages_as_text_and_quiet_removes_it():
    out = io.StringIO()
    show_log(Console(file=out, width=200), quiet=False)
    log = logging.getLogger("mch.runner")
    try:
        log.info("running analysis probe on /data/[bold]x[/] (%d samples)", 8)
        show_log(Console(file=out, width=200), quiet=False)  # installed again: still one handler
        assert sum(isinstance(h, RichLogHandler) for h in logging.getLogger("mch").handlers) == 1
        show_log(Console(file=out, width=200), quiet=True)
        log.info("not shown")
    finally:
        show_log(Console(file=out), quiet=True)
    assert out.getvalue() == "mch: running analysis probe on /data/[bold]x[/] (8 samples)\n"


def _main(*args: str, env: dict | None = None) -> tuple[int, str]:
    from mch.cli import main

    with CliRunner().isolation(env=env) as (_, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        sys.stderr.flush()
        return code, err.getvalue().decode()


def test_a_user_error_is_one_line_of_text_with_exit_code_2():
    name = "[red]no-such-model-" + "x" * 120  # markup-like and longer than the terminal
    code, err = _main("bench", "--model", name, env={"COLUMNS": "60"})
    assert code == 2
    assert err.startswith(f"error: unknown model '{name}'") and err.count("\n") == 1, err


def test_the_cli_and_its_drawing_import_no_numpy():
    import subprocess

    code = (
        "import sys, mch.cli, mch.terminal, mch.leaderboard_cli; "
        "print(sorted(m for m in ('numpy', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
