"""What the CLI draws on the terminal besides tables: the one error exit, progress bars, and
the log handler that shows the core's messages.

The core never draws: the runner and the store say what they do through stdlib `logging`
(logger "mch") and report progress through `mch.context.Progress`. Rich styling lives here
alone, so a library caller gets plain log records and no escape codes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from rich.console import Console
from rich.highlighter import ReprHighlighter
from rich.text import Text

from .progress import Progress, no_advance

err_console = Console(stderr=True)

# the name a log line is about, shown in bold: "loading model NAME", "running analysis NAME"
_EMPHASIS = r"(?<=^mch: loading model )\S+|(?<=^mch: running analysis )\S+"


def print_error(exc: BaseException) -> None:
    """A user error as the CLI shows it: `error: ` and the sentence on stderr, on one line (the
    terminal wraps it; no line break is inserted into a path or a name)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)


def exit_error(exc: BaseException, code: int = 2) -> NoReturn:
    """The CLI's one error exit: print the error (`print_error`), exit with `code` (2: a user
    error)."""
    print_error(exc)
    sys.exit(code)


class RichProgress(Progress):
    """Progress bars on a rich console (or nothing when quiet)."""

    def __init__(self, console: Any | None, quiet: bool = False):
        self.console = console
        self.quiet = quiet or console is None

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.quiet:
            yield no_advance
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress as RP,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with RP(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as p:
            t = p.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                p.advance(t, n)

            yield advance


class RichLogHandler(logging.Handler):
    """Log records as `mch: message` lines on a rich console. The message is text, never
    markup: a path with brackets prints as it is."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.highlighter = ReprHighlighter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.highlighter(Text.assemble(("mch:", "dim"), " ", record.getMessage()))
            text.highlight_regex(_EMPHASIS, "bold")
            self.console.print(text)
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises
            self.handleError(record)


def show_log(console: Console, quiet: bool) -> None:
    """Show the "mch" logger's messages (INFO and up) on `console`, or none when `quiet`. Replaces
    the handler an earlier call installed (main() may run more than once in one process)."""
    logger = logging.getLogger("mch")
    for h in [h for h in logger.handlers if isinstance(h, RichLogHandler)]:
        logger.removeHandler(h)
    if not quiet:
        logger.setLevel(logging.INFO)
        logger.addHandler(RichLogHandler(console))
