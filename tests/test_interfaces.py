"""The declared plugin interfaces: abstract bases (a plugin missing a method fails when it is
created, or when its entry is loaded, never mid-run), the register hooks called through
pluggy one plugin at a time, and hookspecs that document every argument."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest

from mch import hookspecs
from mch.api import Analysis, AnalysisSpec, DatasetPlugin, DatasetSpec, MchError, ModelSpec, load_entry
from mch.hookspecs import hookimpl
from mch.manager import build, get_registry
from mch.model import ModelPlugin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "mch-example-plugin"


class NoScore(ModelPlugin):
    def load(self): ...
    def stage_map(self, view="modal", protocol="default"):
        return {}

    def prepare(self, samples, protocol, view="modal"): ...


class NoSamples(DatasetPlugin):
    def attributes(self, protocol):
        return {}


class NoRun(Analysis):
    def default_params(self, protocol):
        return {}


MSPEC = ModelSpec(name="m", entry=f"{__name__}:NoScore", modality="vision", checkpoint="/nowhere")


@pytest.mark.parametrize(
    "cls, spec, missing",
    [
        (NoScore, MSPEC, "score"),
        (NoSamples, DatasetSpec(name="d", entry=f"{__name__}:NoSamples", modality="vision", attributes=()), "samples"),
        (NoRun, AnalysisSpec(name="a", entry=f"{__name__}:NoRun"), "run"),
    ],
)
def test_an_incomplete_plugin_fails_when_created_and_when_its_entry_is_loaded(cls, spec, missing):
    with pytest.raises(TypeError, match=missing):
        cls(spec)
    with pytest.raises(MchError, match=rf"class {cls.__name__} does not implement {missing}\b"):
        load_entry(spec.entry)


def test_hf_plugin_mixin_declares_what_a_subclass_provides():
    from mch.plugins.models._hf_common import HFPluginMixin

    assert HFPluginMixin.__abstractmethods__ == {
        "_prepare_inputs",
        "render_prompt",
        "_instruction",
        "_score_context",
        "_build_paths",
    }

    class Half(HFPluginMixin, ModelPlugin):  # a transformers plugin that forgot its scoring context
        def load(self): ...
        def stage_map(self, view="modal", protocol="default"):
            return {}

        def prepare(self, samples, protocol, view="modal"): ...
        def _prepare_inputs(self, samples, protocol, view, query="", suffix=None): ...
        def render_prompt(self, protocol, view="modal", text=None, query=""): ...
        def _instruction(self, protocol):
            return ""

        def _build_paths(self, model):
            return {}

    with pytest.raises(TypeError, match="_score_context"):
        Half(MSPEC)


def test_every_builtin_and_the_example_plugin_can_be_created():
    reg = get_registry()
    for table in (reg.models, reg.datasets, reg.analyses):
        for spec in table.values():
            cls = load_entry(spec.entry)
            assert not inspect.isabstract(cls), (spec.name, cls.__abstractmethods__)
            cls(spec)  # light: no weights, no corpus read
    sys.path.insert(0, str(EXAMPLE))
    try:
        from mch_example_plugin.hooks import mch_register_models

        specs: list = []
        mch_register_models(register=specs.append)
        assert specs
        for spec in specs:
            load_entry(spec.entry)(spec)
    finally:
        sys.path.remove(str(EXAMPLE))


def test_every_builtin_model_declares_its_stage_map_per_protocol():
    """`stage_map(view, protocol)` is the interface (mch.model.stage_map_of keeps calling a
    third-party plugin written before the protocol argument with the view alone)."""
    reg = get_registry()
    classes = {load_entry(spec.entry) for spec in reg.models.values()}
    assert {c.__name__ for c in classes} >= {"ToyModel", "Ultravox", "PrismaticModel", "TextBaseline", "Llava"}
    for cls in classes:
        params = inspect.signature(cls.stage_map).parameters
        assert list(params)[:3] == ["self", "view", "protocol"], (cls.__name__, list(params))
        assert params["protocol"].default == "default", cls.__name__


def test_a_run_with_an_incomplete_model_plugin_stops_before_any_work(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import run_mch
    from test_inputs import _fails, _install, _no_work

    env = {
        **_install(
            tmp_path,
            "mch_half",
            """
        from mch.api import ModelSpec
        from mch.hookspecs import hookimpl
        from mch.model import ModelPlugin

        class Half(ModelPlugin):
            modality = "speech"
            def load(self): ...
            def stage_map(self, view="modal", protocol="default"): return {"adapter": "x"}
            def prepare(self, samples, protocol, view="modal"): ...

        @hookimpl
        def mch_register_models(register):
            register(ModelSpec(name="half", entry="mch_half:Half", modality="speech", checkpoint="/nowhere",
                               options={"default_dataset": "toy"}))
        """,
        ),
        "MCH_STORE": str(tmp_path / "store"),
    }
    res = run_mch("bench", "--model", "half", "--out", str(tmp_path / "r"), env=env)
    _fails(res, "plugin entry 'mch_half:Half': class Half does not implement score")
    _no_work(tmp_path)


# --------------------------------------------------------------------------- hooks through pluggy


class _Models:
    """A plugin object; `name` is what it registers, `fail` makes its hook raise."""

    def __init__(self, name: str, model: str, fail: bool = False) -> None:
        self.__name__, self.model, self.fail = name, model, fail  # the manager names a plugin by __name__

    @hookimpl
    def mch_register_models(self, register):
        if self.fail:
            raise RuntimeError("broken on purpose")
        register(ModelSpec(name=self.model, entry="x:Y", modality="speech", checkpoint="c"))


class _Undecorated:
    """A plugin whose hook lacks @hookimpl: still taken, as before (and as pytest does)."""

    __name__ = "undecorated"

    @staticmethod
    def mch_register_analyses(register):
        register(AnalysisSpec(name="plain", entry="x:Y"))


class _Pluggy:
    """Hooks only pluggy finds: an implementation under another name (`specname`), and one
    that asks to run first."""

    __name__ = "pluggy-only"

    @hookimpl(specname="mch_register_analyses")
    def analyses(self, register):
        register(AnalysisSpec(name="renamed", entry="x:Y"))

    @hookimpl(tryfirst=True)
    def mch_register_models(self, register):
        register(ModelSpec(name="m0", entry="x:Y", modality="speech", checkpoint="c"))


def test_register_hooks_go_through_pluggy_and_are_attributed_per_plugin(monkeypatch):
    monkeypatch.setenv("MCH_LOAD_PLUGINS", "")  # no entry point: only the plugins below
    pm, reg = build(
        [_Pluggy(), _Models("first", "m1"), _Models("broken", "m2", fail=True), _Models("third", "m3"), _Undecorated()]
    )
    assert reg.analyses["renamed"].source == "pluggy-only"
    assert list(reg.models)[0] == "m0"  # tryfirst, though registered before the others
    del reg.models["m0"]
    assert {n: s.source for n, s in reg.models.items()} == {"m1": "first", "m3": "third"}
    assert reg.analyses["plain"].source == "undecorated"
    info = {p.name: p for p in reg.plugins}
    assert info["first"].contributes == {"model": ["m1"]} and info["first"].error is None
    assert info["broken"].error == "mch_register_models failed: RuntimeError: broken on purpose"
    assert not info["broken"].contributes
    assert list(reg.models) == ["m3", "m1"]  # pluggy's call order: the last registered first
    names = {impl.plugin_name for impl in pm.hook.mch_register_models.get_hookimpls()}
    assert names == {"pluggy-only", "first", "broken", "third"}


def test_a_hook_with_arguments_its_spec_lacks_is_refused_by_pluggy(monkeypatch):
    class Wrong:
        __name__ = "wrong"

        @hookimpl
        def mch_register_models(self, register, extra):
            pass

    monkeypatch.setenv("MCH_LOAD_PLUGINS", "")
    import pluggy

    with pytest.raises(pluggy.PluginValidationError, match="extra"):
        build([Wrong()])


def test_hookspecs_are_typed_and_document_every_argument():
    specs = [f for n, f in vars(hookspecs).items() if n.startswith("mch_") and callable(f)]
    assert {f.__name__ for f in specs} >= {
        "mch_register_models",
        "mch_register_datasets",
        "mch_register_analyses",
        "mch_register_commands",
    }
    for f in specs:
        sig = inspect.signature(f)
        assert sig.return_annotation == "None", f.__name__
        for name, param in sig.parameters.items():
            assert param.annotation is not inspect.Parameter.empty, (f.__name__, name)
            assert re.search(rf":param {name}:\s*\n\s+\S", f.__doc__ or ""), (f.__name__, name)
