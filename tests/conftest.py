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


def run_mch(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the `mch` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mch.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
