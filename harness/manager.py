"""The plugin manager: built-ins and third-party plugins, all through entry points.

Loading is defensive: each entry point is imported on its own inside try/except, so one
broken plugin is listed by `mch plugins` with its error and breaks nothing else.

Environment variables:
  MCH_LOAD_PLUGINS   comma-separated entry-point names to load (others are skipped);
                     an empty value loads none. Unset: load all.
  MCH_TRACE_PLUGINS  print each plugin as it loads (to stderr).
  MCH_STRICT_PLUGINS raise on the first plugin that fails to load.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .api import AnalysisSpec, DatasetSpec, MchError, ModelSpec

GROUP = "mch"


@dataclass
class PluginInfo:
    name: str
    value: str
    dist: str | None
    loaded: bool
    error: str | None = None
    contributes: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Everything the loaded plugins registered, by kind and name (aliases resolve)."""

    def __init__(self) -> None:
        self.models: dict[str, ModelSpec] = {}
        self.datasets: dict[str, DatasetSpec] = {}
        self.analyses: dict[str, AnalysisSpec] = {}
        self.aliases: dict[str, str] = {}
        self.plugins: list[PluginInfo] = []

    def _table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {"model": self.models, "dataset": self.datasets, "analysis": self.analyses}
        return tables[kind]

    def get(self, kind: str, name: str) -> Any:
        table = self._table(kind)
        key = name if name in table else (self.aliases.get(name) if kind == "model" else None)
        if key is None or key not in table:
            failed = self.failed_plugin(name)
            if failed is not None:
                raise MchError(
                    f"{kind} {name!r} is not registered: plugin {failed.name!r} failed to load "
                    f"({first_line(failed.error)}); `mch plugins` shows every plugin and its error"
                )
            choices = list(table) + (list(self.aliases) if kind == "model" else [])
            close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(table)) or "none"
            broken = [p.name for p in self.plugins if p.error]
            also = (
                (
                    f"; plugin{'s' if len(broken) > 1 else ''} {', '.join(repr(b) for b in broken)} failed to load, "
                    f"see `mch plugins`"
                )
                if broken
                else ""
            )
            raise MchError(f"unknown {kind} {name!r}{hint} (known: {known}; see `mch list {kind_plural(kind)}`{also})")
        return table[key]

    def failed_plugin(self, name: str) -> PluginInfo | None:
        """The plugin that failed to load and most likely provides `name`: its entry-point name
        or distribution is `name`, or contains it (a plugin `mch-qwen2vl` for a model
        `qwen2vl`)."""
        norm = lambda s: s.lower().replace("-", "_")  # noqa: E731
        for p in self.plugins:
            if p.error and not p.contributes:
                names = [norm(p.name), norm(p.dist or ""), norm(p.value.partition(":")[0])]
                if any(norm(name) == n or (len(name) >= 3 and norm(name) in n) for n in names if n):
                    return p
        return None


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no message"


def kind_plural(kind: str) -> str:
    return {"model": "models", "dataset": "datasets", "analysis": "analyses"}[kind]


def _allowed() -> set[str] | None:
    raw = os.environ.get("MCH_LOAD_PLUGINS")
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the `mch` hooks. A function named like an mch hookspec counts as its
    implementation even without `@hookimpl` (pytest does the same for `pytest_*` functions),
    as mch has always taken it."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if (
            opts is None
            and name.startswith("mch_")
            and hasattr(hookspecs, name)
            and inspect.isroutine(getattr(plugin, name, None))
        ):
            return {}
        return opts


def build(extra_plugins: list[Any] | None = None) -> tuple[pluggy.PluginManager, Registry]:
    """Load every allowed entry point of group `mch` (plus `extra_plugins`, for tests) and
    collect what they register."""
    pm = PluginManager("mch")
    pm.add_hookspecs(hookspecs)
    reg = Registry()
    allowed = _allowed()
    trace = bool(os.environ.get("MCH_TRACE_PLUGINS"))
    strict = bool(os.environ.get("MCH_STRICT_PLUGINS"))
    seen: set[str] = set()
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if allowed is not None and ep.name not in allowed:
            continue
        info = PluginInfo(ep.name, ep.value, dist, loaded=False)
        reg.plugins.append(info)
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
            info.loaded = True
            if trace:
                print(f"mch: loaded plugin {ep.name} ({ep.value})", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            info.error = f"{type(exc).__name__}: {exc}"
            if trace:
                traceback.print_exc()
            if strict:
                raise MchError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {first_line(info.error)} "
                    f"(MCH_STRICT_PLUGINS is set; unset it to skip the plugin, or set MCH_TRACE_PLUGINS=1 "
                    f"for the traceback)"
                ) from None
    for i, obj in enumerate(extra_plugins or []):
        name = getattr(obj, "__name__", f"extra{i}")
        pm.register(obj, name=name)
        reg.plugins.append(PluginInfo(name, repr(obj), None, loaded=True))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise MchError(f"a plugin defines a hook mch does not know (misspelled?): {exc}") from None
    _collect(pm, reg)
    return pm, reg


def _collect(pm: pluggy.PluginManager, reg: Registry) -> None:
    def registrar(kind: str, table: dict[str, Any], plugin_name: str):
        def register(spec: Any) -> None:
            expected: type[ModelSpec | DatasetSpec | AnalysisSpec] = {
                "model": ModelSpec,
                "dataset": DatasetSpec,
                "analysis": AnalysisSpec,
            }[kind]
            if not isinstance(spec, expected):
                raise MchError(f"plugin {plugin_name!r} registered a {type(spec).__name__} as a {kind}")
            if spec.name in table and table[spec.name].source != plugin_name:
                raise MchError(
                    f"{kind} {spec.name!r} is registered twice (by {table[spec.name].source!r} and {plugin_name!r})"
                )
            spec.source = plugin_name
            table[spec.name] = spec
            for alias in getattr(spec, "aliases", ()):
                reg.aliases[alias] = spec.name
            info = next((p for p in reg.plugins if p.name == plugin_name), None)
            if info is not None:
                info.contributes.setdefault(kind, []).append(spec.name)

        return register

    # Each implementation is called through pluggy (its argument checks, its call order:
    # tryfirst/trylast, then the last registered first), one plugin at a time, so that what a
    # plugin registers, or the error it raises, is its own.
    for hook, kind, table in (
        ("mch_register_models", "model", reg.models),
        ("mch_register_datasets", "dataset", reg.datasets),
        ("mch_register_analyses", "analysis", reg.analyses),
    ):
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
            pname = impl.plugin_name
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            try:
                pm.subset_hook_caller(hook, remove_plugins=others)(register=registrar(kind, table, pname))
            except MchError:
                raise
            except Exception as exc:  # noqa: BLE001
                info = next((p for p in reg.plugins if p.name == pname), None)
                if info is not None:
                    info.error = f"{hook} failed: {type(exc).__name__}: {exc}"


_CACHE: tuple[pluggy.PluginManager, Registry] | None = None


def get_registry(refresh: bool = False) -> Registry:
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = build()
    return _CACHE[1]


def get_manager() -> pluggy.PluginManager:
    get_registry()
    assert _CACHE is not None
    return _CACHE[0]
