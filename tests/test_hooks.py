"""The hook core (mch.hooks.Trace): outputs and inputs traced, edits, the early stop, cleanup."""

from __future__ import annotations

import pytest
import torch

from mch.hooks import Trace


class Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, x, scale=1.0):
        return (torch.tanh(self.lin(x)) * scale, "aux")  # a tuple, like HF decoder layers


class Net(torch.nn.Module):
    def __init__(self, d: int = 4, n: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(Block(d) for _ in range(n))
        self.head = torch.nn.Linear(d, 2)
        self.ran: list[str] = []

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            self.ran.append(f"layers.{i}")
            x = layer(x, scale=2.0)[0]
        self.ran.append("head")
        return self.head(x)


def manual(net: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out, h = {}, x
    for i, layer in enumerate(net.layers):
        out[f"in{i}"] = h
        h = layer(h, scale=2.0)[0]
        out[f"out{i}"] = h
    out["logits"] = net.head(h)
    return out


def test_outputs_and_inputs_are_the_tensors_a_manual_run_computes():
    net, x = Net(), torch.randn(2, 5, 4)
    ref = manual(net, x)
    with Trace(net, {"o1": "layers.1", "i1": "layers.1:input", "o2": "layers.2"}, keep=True) as tr:
        net(x)
    torch.testing.assert_close(tr.kept["o1"][0], ref["out1"])
    torch.testing.assert_close(tr.kept["i1"][0], ref["in1"])
    torch.testing.assert_close(tr.kept["i1"][0], ref["out0"].detach())
    torch.testing.assert_close(tr.kept["o2"][0], ref["out2"])
    assert tr.calls == {"o1": 1, "i1": 1, "o2": 1} and tr.fired


def test_fn_sees_the_keyword_arguments_of_the_call():
    net, seen = Net(), {}
    with Trace(net, {"i0": "layers.0:input"}, fn=lambda f: seen.update(name=f.name, kw=f.kwargs)):
        net(torch.randn(1, 2, 4))
    assert seen == {"name": "i0", "kw": {"scale": 2.0}}


def test_stop_ends_the_forward_after_the_deepest_point_and_is_swallowed():
    net = Net()
    with Trace(net, {"a": "layers.0", "b": "layers.1"}, keep=True, stop=True) as tr:
        net(torch.randn(1, 2, 4))
        pytest.fail("the forward pass should have stopped")  # pragma: no cover
    assert net.ran == ["layers.0", "layers.1"]  # layers.2 and the head never ran
    assert tr.fired
    # without stop the whole model runs
    net.ran.clear()
    with Trace(net, {"a": "layers.0"}):
        net(torch.randn(1, 2, 4))
    assert net.ran[-1] == "head"


def test_edits_change_what_the_forward_pass_continues_with():
    net, x = Net(), torch.randn(2, 3, 4)
    ref = manual(net, x)
    with Trace(net, {"o0": "layers.0"}, edit={"o0": torch.zeros_like}, keep=True) as tr:
        got = net(x)
    assert torch.count_nonzero(tr.kept["o0"][0]) == 0  # kept = what the model continued with
    expected = net.head(net.layers[2](net.layers[1](torch.zeros(2, 3, 4), scale=2.0)[0], scale=2.0)[0])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, ref["logits"])
    # an input edit: doubling layer 1's input is the same as doubling layer 0's output
    with Trace(net, {"i1": "layers.1:input"}, edit={"i1": lambda h: 2 * h}):
        a = net(x)
    with Trace(net, {"o0": "layers.0"}, edit={"o0": lambda h: 2 * h}):
        b = net(x)
    torch.testing.assert_close(a, b)


def test_hooks_are_removed_on_exit_even_after_an_error():
    net = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(net, {"a": "layers.0", "b": "layers.1:input"}):
            raise RuntimeError("boom")
    assert not net.layers[0]._forward_hooks and not net.layers[1]._forward_pre_hooks
    with pytest.raises(AttributeError):
        Trace(net, {"a": "layers.0", "bad": "layers.9"})
    assert not net.layers[0]._forward_hooks  # the hooks made before the bad path are gone too
    with pytest.raises(KeyError):
        Trace(net, {"a": "layers.0"}, edit={"b": torch.zeros_like})


def test_the_analyses_adapter_edits_go_through_the_hook_core(monkeypatch):
    """_causal.edit_adapter and _gradients.adapter_leaf (ablation, swap, gradient, lipschitz,
    bound) edit the adapter output through Trace: forward-hook code exists once."""
    from pathlib import Path
    from types import SimpleNamespace

    import mch.hooks
    from mch.api import MchError
    from mch.plugins.analyses import _causal, _gradients

    root = Path(_causal.__file__).parent
    assert not [p.name for p in root.glob("*.py") if "register_forward" in p.read_text()]

    made = []

    class Spy(Trace):
        def __init__(self, *a, **kw):
            made.append(kw.get("edit"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(mch.hooks, "Trace", Spy)
    net, x = Net(), torch.randn(2, 3, 4)
    model = SimpleNamespace(
        module=net, stage_map=lambda view: {"adapter": "layers.0"}, spec=SimpleNamespace(name="net")
    )
    ref = manual(net, x)
    with _causal.edit_adapter(model, lambda z: 2 * z):
        doubled = net(x)
    with Trace(net, {"o0": "layers.0"}, edit={"o0": lambda h: 2 * h}):
        torch.testing.assert_close(doubled, net(x))
    with _gradients.adapter_leaf(model) as st:
        out = net(x)
    torch.testing.assert_close(out, ref["logits"])  # the leaf carries the same values
    assert st["calls"] == 1 and st["z"].requires_grad and st["z"].dtype == torch.float32
    (g,) = torch.autograd.grad(out.sum(), st["z"])
    assert g.shape == ref["out0"].shape
    assert len(made) == 2 and all(set(e) == {"adapter"} for e in made)
    assert all(not m._forward_hooks for m in net.modules())
    bad = SimpleNamespace(module=net, stage_map=lambda view: {"adapter": "layers.9"}, spec=model.spec)
    with pytest.raises(MchError, match="adapter stage path 'layers.9' does not resolve"):
        with _causal.edit_adapter(bad, lambda z: z):
            pass
