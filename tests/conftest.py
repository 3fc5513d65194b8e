"""Shared fixtures: every test gets its own store and results directory, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MCH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MCH_LOAD_PLUGINS", raising=False)
    yield


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models on two shared cores: a second torch thread only spins against the other
    jobs (up to 10x slower). Modules opt in with `pytestmark = usefixtures(...)`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def blas_one_thread():
    """Small numpy/scipy fits: a threaded BLAS call waits on its second thread (and the plugin
    and a direct reference implementation then run under the same limit)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def run_mch(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the `mch` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "mch.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
