"""Optional dependencies (the extras of pyproject.toml): imported when a feature needs them,
or one sentence naming the extra that installs them."""

from __future__ import annotations

from typing import Any

from .api import MchError

EXTRAS = {"pandas": "frames", "matplotlib": "plot", "pyarrow": "parquet", "h5py": "hdf5"}


def need(module: str, what: str) -> Any:
    """Import an optional dependency, or one sentence naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise MchError(
            f"{what} needs {module.split('.')[0]}, which is not installed: pip install 'mch[{extra}]'"
        ) from None
