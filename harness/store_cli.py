"""`mch store list` and `mch store rm`: see what the representation store holds, drop entries.

Light: numpy (through mch.store) is imported only when a command runs. The listing is a few
short lines per entry, never a wide table, so it reads the same at 80 columns, in a wide
terminal and through a pipe (`mch store list | grep llava`); `--json` is for machines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .api import MchError
from .cli_options import STORE

app = typer.Typer(help="The representation store: list its entries, remove some (see MCH_STORE).", no_args_is_help=True)
console = Console()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _out(text: str) -> None:
    # soft_wrap: a long path is never cut or broken by a newline (the terminal wraps it)
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _stages(stages: list[str]) -> str:
    if not stages:
        return "no stages yet"
    if len(stages) <= 3:
        return f"stages {', '.join(stages)}"
    return f"{len(stages)} stages ({stages[0]} … {stages[-1]})"


def _lines(info: dict[str, Any]) -> list[str]:
    what = info["model"]
    if info["dataset"]:
        what += f" on {info['dataset']}" + (f":{info['split']}" if info["split"] else "")
    if info["view"]:
        what += f" ({info['view']} view)"
    n = ""
    if info["n"] is not None:
        kept = info["n_rows"]
        n = f"{info['n']} samples" if kept in (None, info["n"]) else f"{kept} of {info['n']} samples kept"
    second = " · ".join(
        x
        for x in (
            info["state"],
            n,
            _stages(info["stages"]) if info["complete"] else "",
            _size(info["size_bytes"]),
            info["modified"],
        )
        if x
    )
    out = [f"{info['key']}  {what}", f"    {second}"]
    if info.get("imported_from"):
        out.append(f"    imported from {info['imported_from']}")
    elif info["checkpoint"]:
        fp = info["checkpoint_fingerprint"]
        out.append(f"    checkpoint {info['checkpoint']}" + (f" ({fp})" if fp else ""))
    return out


@app.command("list")
def list_entries(
    store: Path | None = STORE,
    model: str | None = typer.Option(None, "--model", "-m", help="only this model's entries"),
    as_json: bool = typer.Option(False, "--json", help="one JSON list, for machines"),
):
    """Every store entry: key, model, dataset and view, state (complete, partial, being
    written), samples, stages, size, last change, checkpoint and its fingerprint."""
    from .store import Store

    st = Store(store)
    infos = [st.describe(d) for d in st.entry_dirs()]
    if model:
        infos = [i for i in infos if model in (i["model"], Path(i["dir"]).parent.name)]
    infos.sort(key=lambda i: (i["model"], str(i["dataset"]), str(i["view"]), i["modified"]))
    if as_json:
        print(json.dumps(infos, indent=1))
        return
    if not infos:
        _out(f"store {st.root}: no entries" + (f" of model {model}" if model else ""))
        return
    total = sum(i["size_bytes"] for i in infos)
    _out(f"store {st.root}: {len(infos)} entr{'y' if len(infos) == 1 else 'ies'}, {_size(total)}")
    for info in infos:
        for line in _lines(info):
            _out(line)
    _out("remove one with `mch store rm KEY`, a model's with `mch store rm --model NAME`")


@app.command("rm")
def remove(
    keys: list[str] | None = typer.Argument(
        None, help="entry keys as `mch store list` shows them (a unique prefix will do)"
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="remove every entry of this model"),
    all_entries: bool = typer.Option(False, "--all", help="remove every entry"),
    store: Path | None = STORE,
):
    """Remove store entries (their next run extracts them again). An entry another process is
    writing is left alone."""
    from .store import Store

    if sum(bool(x) for x in (keys, model, all_entries)) != 1:
        raise MchError(
            "say which store entries to remove: KEY ..., --model NAME or --all (`mch store list` shows them)"
        )
    st = Store(store)
    dirs = st.entry_dirs()
    if all_entries:
        chosen = dirs
    elif model:
        chosen = [d for d in dirs if model in (d.parent.name, st.describe(d)["model"])]
        if not chosen:
            have = sorted({d.parent.name for d in dirs})
            raise MchError(
                f"the store {st.root} holds no entries of model {model!r}"
                + (f"; it holds {', '.join(have)}" if have else "")
            )
    else:
        chosen = []
        for k in keys or []:
            d = st.find(k)  # one sentence for a key no entry or several entries start with
            if d not in chosen:
                chosen.append(d)
    if not chosen:
        _out(f"store {st.root}: nothing to remove")
        return
    failed: list[str] = []
    freed = 0
    for d in chosen:
        info = st.describe(d)
        try:
            st.remove(d)
        except MchError as exc:
            failed.append(str(exc))
            continue
        except OSError as exc:
            failed.append(f"cannot remove {d} ({exc.strerror or exc})")
            continue
        freed += info["size_bytes"]
        _out(f"removed {info['key']}  {_lines(info)[0].split('  ', 1)[1]} ({_size(info['size_bytes'])})")
    if len(chosen) > 1:
        _out(f"removed {len(chosen) - len(failed)} of {len(chosen)} entries, {_size(freed)} freed")
    if failed:
        raise MchError(failed[0] + (f" (and {len(failed) - 1} more entries not removed)" if len(failed) > 1 else ""))
