"""The run commands' options come from one table (mch.cli_options): each command gets the
options it takes, in one order, with the declared defaults; a command declared wrong fails
when it is defined, not when it runs."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command

from mch.cli_options import OPTIONS, RUN_ORDER, with_options


def _params(func) -> list[tuple[str, object]]:
    app = typer.Typer(add_completion=False)
    app.command()(func)
    return [(p.name, p.default) for p in get_command(app).params]


def test_a_command_gets_the_shared_options_in_order_less_those_it_omits():
    omit = ("analysis", "attribute", "out", "param", "as_json", "as_csv", "config")

    @with_options(RUN_ORDER, omit=omit)
    def cmd(ctx: typer.Context, *, text: bool = typer.Option(False, "--text"), quiet: bool, **run):
        pass

    names = [n for n, _ in _params(cmd)]
    assert names == [n for n in RUN_ORDER if n == "text" or (n in OPTIONS and n not in omit)]
    assert names.index("on_error") + 1 == names.index("text") == names.index("trust_remote_code") - 1


def test_defaults_replace_a_shared_default_for_one_command_only():
    @with_options(("model", "analysis"), defaults={"analysis": ["probe"]})
    def one(**run):
        pass

    @with_options(("model", "analysis"))
    def other(**run):
        pass

    assert dict(_params(one)) == {"model": "toy", "analysis": ["probe"]}
    assert dict(_params(other)) == {"model": "toy", "analysis": ["probe,gmi"]}


def test_the_command_receives_its_own_and_the_shared_options():
    seen = {}

    @with_options(("model", "seed", "quiet"))
    def cmd(*, quiet: bool, **run):
        seen.update(run, quiet=quiet)

    app = typer.Typer()
    app.command()(cmd)
    app(args=["--seed", "3", "-q"], standalone_mode=False)
    assert seen == {"model": "toy", "seed": 3, "quiet": True}


def test_a_misdeclared_command_fails_when_defined():
    with pytest.raises(TypeError, match="'nonesuch' has no default"):

        @with_options(("model", "nonesuch"))
        def a(*, nonesuch: int, **run):
            pass

    with pytest.raises(TypeError, match="extra are not in the options' order"):

        @with_options(("model",))
        def b(extra: int = typer.Option(1, "--extra"), **run):
            pass


def test_bench_extract_analyze_take_the_options_they_always_took():
    import mch.run_cli as rc

    def names(func):
        return [n for n, _ in _params(func)]

    # written out, not derived from RUN_ORDER: an option dropped from the table must fail here
    run = [
        "model", "dataset", "analysis", "attribute", "checkpoint", "revision", "adapter", "data_path",
        "split", "limit", "seed", "device", "dtype", "protocol", "span", "stage", "batch_size", "out",
        "store", "on_error", "param", "trust_remote_code", "model_option", "data_option",
        "text_checkpoint", "text_revision", "device_map", "max_memory",
    ]  # fmt: skip
    assert names(rc.bench) == [*run, "quiet", "as_json", "as_csv", "config"]
    assert names(rc.analyze) == [
        *[n for n in run if n not in ("on_error", "trust_remote_code")],
        "quiet",
        "as_json",
        "as_csv",
        "config",
    ]
    ext = [n for n in run if n not in ("analysis", "attribute", "out", "param")]
    ext.insert(ext.index("on_error") + 1, "text")
    assert names(rc.extract) == [*ext, "quiet", "config"]
    assert dict(_params(rc.bench))["analysis"] == ["probe,gmi"]
    assert dict(_params(rc.analyze))["analysis"] == ["probe"]


def test_the_run_commands_defaults_are_the_documented_ones():
    """Every default `mch bench` shows (and extract/analyze share), written out: a default
    changed in the options' table changes what a run measures."""
    import mch.run_cli as rc

    expected = {"model": "toy", "analysis": ["probe,gmi"], "seed": 0, "device": "cpu", "protocol": "default"}
    expected |= {"batch_size": 16, "on_error": "stop", "trust_remote_code": False, "quiet": False}
    expected |= {"as_json": False, "as_csv": False}
    bench = dict(_params(rc.bench))
    assert {n: v for n, v in bench.items() if v is not None} == expected
    for cmd in (rc.extract, rc.analyze):
        own = dict(_params(cmd))
        assert all(own[n] == v for n, v in bench.items() if n in own and n != "analysis"), cmd.__name__
