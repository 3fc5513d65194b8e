"""The built-in plugin: registers everything `registry.yaml` catalogues.

Built-ins go through the same entry-point group (`mch`) and the same hooks as any
third-party plugin; this module only turns the YAML entries into lazy specs (no plugin code
is imported here).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from mch.api import AnalysisSpec, DatasetSpec, MchError, ModelSpec
from mch.hookspecs import hookimpl

# plugins/registry.yaml links to the checkout's top-level registry.yaml; a wheel ships it as a file
REGISTRY_PATH = Path(os.environ.get("MCH_REGISTRY", Path(__file__).resolve().parent / "registry.yaml"))


def _line_of(root: Any, path: list[Any]) -> int | None:
    """Line (1-based) of the YAML node at `path` in a composed YAML tree."""
    node = root
    line = getattr(node, "start_mark", None)
    for key in path:
        if node is None or not hasattr(node, "value"):
            break
        nxt = None
        if isinstance(node.value, list) and node.value and isinstance(node.value[0], tuple):
            for k, v in node.value:
                if k.value == key:
                    nxt = v
                    line = k.start_mark
                    break
        elif isinstance(node.value, list) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
            line = nxt.start_mark
        node = nxt
    return line.line + 1 if line is not None else None


@cache
def load_registry(path: Path = REGISTRY_PATH) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MchError(f"cannot read the plugin registry {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise MchError(f"{path} is not valid YAML: {exc}") from None
    import jsonschema

    from mch.results import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("registry"))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        keypath = list(e.absolute_path)
        line = _line_of(tree, keypath)
        where = f"line {line}, " if line else ""
        raise MchError(f"{path}: {where}key {'.'.join(map(str, keypath)) or '(top level)'}: {e.message}")
    return data


@hookimpl
def mch_register_models(register):
    for name, e in load_registry()["models"].items():
        register(
            ModelSpec(
                name=name,
                entry=e["entry"],
                modality=e["modality"],
                checkpoint=e["checkpoint"],
                revision=e.get("revision"),
                aliases=tuple(e.get("aliases", ())),
                description=e.get("description", ""),
                text_baseline=e.get("text_baseline"),
                options=e.get("options", {}),
            )
        )


@hookimpl
def mch_register_datasets(register):
    for name, e in load_registry()["datasets"].items():
        register(
            DatasetSpec(
                name=name,
                entry=e["entry"],
                modality=e["modality"],
                attributes=tuple(e["attributes"]),
                description=e.get("description", ""),
                source_hint=e.get("source_hint", ""),
                options=e.get("options", {}),
            )
        )


@hookimpl
def mch_register_analyses(register):
    for name, e in load_registry()["analyses"].items():
        register(
            AnalysisSpec(
                name=name,
                entry=e["entry"],
                needs_model=e.get("needs_model", False),
                description=e.get("description", ""),
                options=e.get("options", {}),
            )
        )


@hookimpl
def mch_register_commands(app):
    """`mch toy-bench` (the toy organisms as a validation bench); imports nothing heavy here."""
    from mch.plugins.models import toybench

    toybench.register(app)
