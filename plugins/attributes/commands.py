"""`mch data`: write the offline corpora (see `mch.plugins.attributes.synth`).

    mch data list
    mch data make cremad --out ~/mch-data/cremad
    mch data make coco --out /tmp/coco --param counts=[7,1,12] --param width=320

Registered through its own entry point (`data` in the `mch` group). Import-light: typer and
the corpora's names; the writers (numpy, scipy, PIL) are imported when a command runs.
"""

from __future__ import annotations

import json
from typing import Any

from mch.hookspecs import hookimpl

from ._synth_names import DESCRIPTIONS as CORPORA  # what `mch data list` shows


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON (2, 0.5, [7,1], "x") is used as such,
    anything else is a string."""
    from mch.api import MchError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MchError(f"--param {item!r} must look like KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


@hookimpl
def mch_register_commands(app):
    import typer

    data = typer.Typer(help="Offline corpora in the real datasets' layouts.", no_args_is_help=True)

    @data.command("list")
    def list_corpora() -> None:
        """List the corpora `mch data make` can write."""
        for name, desc in CORPORA.items():
            typer.echo(f"{name:<12} {desc}")

    @data.command("make")
    def make(
        name: str = typer.Argument(..., help="corpus: " + ", ".join(CORPORA)),
        out: str = typer.Option(..., "--out", "-o", help="new or empty directory to write"),
        seed: int = typer.Option(0, "--seed", help="random seed (same seed, same corpus)"),
        param: list[str] = typer.Option(
            [], "--param", "-p", help="generator argument KEY=VALUE, repeatable (e.g. actors=8)"
        ),
    ) -> None:
        """Write corpus NAME into --out, in the exact on-disk layout of the real dataset."""
        from mch.api import MchError

        if name not in CORPORA:
            raise MchError(f"unknown corpus {name!r}; `mch data list` shows: {', '.join(CORPORA)}")
        from . import synth

        kwargs = parse_params(param)
        kwargs["seed"] = seed
        path = synth.make(name, out, **kwargs)
        manifest = synth.read_manifest(path) or {}
        typer.echo(
            f"wrote {name} ({manifest.get('files', '?')} files) to {path}; read it with "
            f"--dataset {name} --data-path {path}"
        )

    app.add_typer(data, name="data")
