"""The options that several `mch` commands take, each declared once, and `with_options`, which
puts them into a command's signature (typer builds a command from its signature).

Light: typer only.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer

STORE = typer.Option(None, "--store", help="representation store (default ~/.cache/mch/store or $MCH_STORE)")
CONFIG = typer.Option(
    None,
    "--config",
    help="run config file (YAML or JSON, schemas/run.schema.json); flags given on the command line override it",
)

# parameter name -> (type, option with its default): bench, extract and analyze (io_cli.FLAG_FIELDS
# maps the run's to RunConfig fields)
OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (str, typer.Option("toy", "--model", "-m", help="model plugin (see `mch list models`)")),
    "dataset": (
        str | None,
        typer.Option(
            None, "--dataset", "-d", help="attribute dataset (default: the model's default_dataset in the registry)"
        ),
    ),
    "analysis": (list[str], typer.Option(["probe,gmi"], "--analysis", help="analyses (comma-separated)")),
    "attribute": (
        list[str] | None,
        typer.Option(None, "--attribute", "-a", help="attributes to analyse (comma-separated; default all)"),
    ),
    "checkpoint": (
        str | None,
        typer.Option(None, "--checkpoint", help="HF id or local directory (default: the model's release)"),
    ),
    "revision": (str | None, typer.Option(None, "--revision", help="checkpoint revision (HF commit or tag)")),
    "adapter": (str | None, typer.Option(None, "--adapter", help="PEFT LoRA adapter directory, merged into the LLM")),
    "data_path": (
        str | None,
        typer.Option(None, "--data-path", help="where the dataset lives (default $MCH_DATA/<name>)"),
    ),
    "split": (str | None, typer.Option(None, "--split", help="dataset split (default: the dataset's)")),
    "limit": (int | None, typer.Option(None, "--limit", "-n", help="use the first N samples of the selection")),
    "seed": (int, typer.Option(0, "--seed", help="seed for selection and analyses")),
    "device": (
        str,
        typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (under torchrun, cuda = each process's own GPU)"),
    ),
    "dtype": (
        str | None,
        typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default bf16 on cuda, fp32 on cpu)"),
    ),
    "protocol": (
        str,
        typer.Option("default", "--protocol", help="default (corrected) or paper (the reference's choices)"),
    ),
    "span": (
        str | None,
        typer.Option(None, "--span", help="modality, all, text or last (default: modality; paper: all)"),
    ),
    "stage": (
        list[str] | None,
        typer.Option(None, "--stage", help="stages to capture (comma-separated; default every stage)"),
    ),
    "batch_size": (int, typer.Option(16, "--batch-size", "-b", help="samples per forward pass")),
    "out": (
        Path | None,
        typer.Option(None, "--out", help="results directory (default ./results or $MCH_RESULTS)"),
    ),
    "store": (Path | None, STORE),
    "on_error": (str, typer.Option("stop", "--on-error", help="stop or skip (record and go on) on a bad sample")),
    "param": (
        list[str] | None,
        typer.Option(None, "--param", help="analysis parameter, ANALYSIS.KEY=VALUE (repeatable)"),
    ),
    "trust_remote_code": (
        bool,
        typer.Option(False, "--trust-remote-code", help="allow Hub remote code (off by default)"),
    ),
    "model_option": (
        list[str] | None,
        typer.Option(None, "--model-option", help="model plugin option KEY=VALUE (repeatable; see the plugin's docs)"),
    ),
    "data_option": (
        list[str] | None,
        typer.Option(None, "--data-option", help="dataset plugin option KEY=VALUE (repeatable; docs/datasets.md)"),
    ),
    "text_checkpoint": (
        str | None,
        typer.Option(
            None,
            "--text-checkpoint",
            help="paper protocol: the separate text-only model's checkpoint (default: its release)",
        ),
    ),
    "text_revision": (
        str | None,
        typer.Option(None, "--text-revision", help="paper protocol: the text-only model's revision"),
    ),
    "device_map": (
        str | None,
        typer.Option(
            None,
            "--device-map",
            help="split the model over devices (accelerate): auto, balanced, balanced_low_0 or sequential",
        ),
    ),
    "max_memory": (
        str | None,
        typer.Option(
            None,
            "--max-memory",
            help="with --device-map: the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB",
        ),
    ),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="no progress bars")),
    "as_json": (
        bool,
        typer.Option(False, "--json", help="print the numbers as JSON on stdout (README: output for machines)"),
    ),
    "as_csv": (
        bool,
        typer.Option(False, "--csv", help="print the numbers as CSV on stdout, one line per metric row"),
    ),
    "config": (Path | None, CONFIG),
}

# The order `--help` lists the run commands' options in (a name a command neither declares nor
# takes from OPTIONS is skipped: `text` is extract's own).
RUN_ORDER = (
    "model",
    "dataset",
    "analysis",
    "attribute",
    "checkpoint",
    "revision",
    "adapter",
    "data_path",
    "split",
    "limit",
    "seed",
    "device",
    "dtype",
    "protocol",
    "span",
    "stage",
    "batch_size",
    "out",
    "store",
    "on_error",
    "text",
    "param",
    "trust_remote_code",
    "model_option",
    "data_option",
    "text_checkpoint",
    "text_revision",
    "device_map",
    "max_memory",
    "quiet",
    "as_json",
    "as_csv",
    "config",
)

F = TypeVar("F", bound=Callable[..., Any])


def with_options(
    order: Sequence[str], omit: Collection[str] = (), defaults: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """A command that takes every option of `order` found in OPTIONS, less `omit`, in that
    order. A parameter the command declares with a typer default is its own (placed by
    `order`); one it names without a default, and every other taken option, gets the OPTIONS
    declaration (with `defaults` replacing its default value); the options the command does
    not name arrive in its `**kwargs`."""

    def deco(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        own = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        params = [own.pop("ctx")] if "ctx" in own else []
        kw = inspect.Parameter.KEYWORD_ONLY
        for name in order:
            mine = own.pop(name, None)
            if mine is not None and mine.default is not mine.empty:
                params.append(mine.replace(kind=kw))
            elif name in OPTIONS and name not in omit:
                typ, option = OPTIONS[name]
                if defaults and name in defaults:
                    option = copy.copy(option)
                    option.default = defaults[name]
                params.append(inspect.Parameter(name, kw, default=option, annotation=typ))
            elif mine is not None:
                raise TypeError(f"{func.__name__}: parameter {name!r} has no default and is not a shared option")
        if own:
            raise TypeError(f"{func.__name__}: parameters {', '.join(own)} are not in the options' order")

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return deco


def split_csv(values: list[str] | None) -> list[str] | None:
    """Repeatable, comma-separated values as one list (`--stage a,b --stage c`); None for none."""
    if not values:
        return None
    return [x.strip() for v in values for x in v.split(",") if x.strip()]
