"""How the core reports progress: `Progress.task(description, total)` yields an `advance(n)`
callback. This base draws nothing; the CLI's `mch.terminal.RichProgress` draws bars. Light
(no numpy), so the CLI can import it at start-up."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Progress:
    """A tiny progress interface so the runner and analyses don't depend on rich."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield no_advance


def no_advance(n: int = 1) -> None:
    """The `advance` of a progress that draws nothing."""
