"""mch, the modality-collapse harness, from Python (docs/python-api.md).

    import mch
    res = mch.bench(model="toy", analyses=["probe", "gmi"])
    res.to_frame()                      # pandas DataFrame, one row per metric (pip install 'mch[frames]')
    res.plot_layers(metric="accuracy")  # per-layer curves (pip install 'mch[plot]')

Light on purpose: `import mch` imports neither torch, transformers nor numpy. Every name
below is resolved on first use (module `__getattr__`), so `mch.hookimpl` costs pluggy and
`mch.bench(...)` costs what the run needs.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute); attribute None: the submodule itself
_LAZY: dict[str, tuple[str, str | None]] = {
    # running and reading
    "bench": ("mch.python_api", "bench"),
    "extract": ("mch.python_api", "extract"),
    "analyze": ("mch.python_api", "analyze"),
    "load_results": ("mch.python_api", "load_results"),
    "load_config": ("mch.python_api", "load_config"),
    "Results": ("mch.python_api", "Results"),
    "RunConfig": ("mch.runner", "RunConfig"),
    "import_reference": ("mch.reference", "import_reference"),
    # plugin authors
    "hookimpl": ("mch.hookspecs", "hookimpl"),
    "hookspec": ("mch.hookspecs", "hookspec"),
    "MchError": ("mch.api", "MchError"),
    "SampleError": ("mch.api", "SampleError"),
    "ModelSpec": ("mch.api", "ModelSpec"),
    "DatasetSpec": ("mch.api", "DatasetSpec"),
    "AnalysisSpec": ("mch.api", "AnalysisSpec"),
    "Attribute": ("mch.api", "Attribute"),
    "Sample": ("mch.api", "Sample"),
    "Metric": ("mch.api", "Metric"),
    "AnalysisOutput": ("mch.api", "AnalysisOutput"),
    "Analysis": ("mch.api", "Analysis"),
    "DatasetPlugin": ("mch.api", "DatasetPlugin"),
    "Param": ("mch.api", "Param"),
    # the representation store (numpy, memory-mapped): mch.store.open(KEY), mch.store.entries()
    "store": ("mch.store", None),
}

__all__ = sorted([*_LAZY, "__version__"])


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mch")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
    else:
        raise AttributeError(f"module 'mch' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
