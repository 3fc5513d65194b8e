"""benchmarks/analyses.py's call timer: it puts back what it wraps, so a later section of the
same benchmark run times the real functions, not a wrapper of a wrapper."""

from __future__ import annotations

import importlib.util
import types

import pytest
from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_analyses", ROOT / "benchmarks" / "analyses.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_calls_restores_the_functions_it_wraps_even_on_error():
    bench = _bench()

    def f(x):
        return x + 1

    def g(x):
        return 2 * x

    m = types.SimpleNamespace(f=f, g=g)
    spent: dict[str, float] = {}
    with bench._time_calls(m, {"f": "eff", "g": "gee"}, spent):
        assert m.f is not f and m.f(1) == 2 and m.g(3) == 6
    assert m.f is f and m.g is g
    assert set(spent) == {"eff", "gee"} and all(v >= 0 for v in spent.values())
    with pytest.raises(RuntimeError), bench._time_calls(m, {"f": "eff"}, spent):
        raise RuntimeError("a section failed")
    assert m.f is f
