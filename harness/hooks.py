"""The one hook core: trace named modules for one forward pass (in the spirit of baukit's
`TraceDict`).

    with Trace(model, {"adapter": "model.multi_modal_projector",
                       "encoder": "model.multi_modal_projector:input"}, keep=True, stop=True) as tr:
        model(**inputs)
    tr.kept["adapter"][0]          # the projector's output, detached

A point is a module path relative to `root`; `path:input` traces the module's first input
(a forward pre-hook: the first positional argument, else `inputs_embeds` / `hidden_states`
/ the first tensor keyword) instead of its output. An output is unwrapped the way every
hook in mch reads it: the first element of a tuple, `last_hidden_state` of a ModelOutput.

Per point, on every call: `fn(fired)` observes it (pooling, counting, reading the keyword
arguments the module got); `edit[name](x)` returns a replacement that the forward pass
continues with (put back in the same structure); `keep=True` keeps the tensors. With
`stop=True` the forward pass ends as soon as every point has fired, so layers above the
deepest one (and the LM head) never run; the exception that does it is swallowed on exit.

Used by capture, the contract kit, the HF plugins and the analyses' adapter edits
(`_causal.edit_adapter`, and through it `_gradients.adapter_leaf`). The Ultravox / Prismatic
plugins still register their own hooks; `edit` is what they need to move onto this core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

INPUT_SUFFIX = ":input"


class StopForward(Exception):
    """Raised inside the forward pass once every traced point has fired (`stop=True`)."""


def split_point(point: str) -> tuple[str, bool]:
    """(module path, traces the input?) of a point string."""
    if point.endswith(INPUT_SUFFIX):
        return point[: -len(INPUT_SUFFIX)], True
    return point, False


@dataclass
class Fired:
    """One call of a traced module: `x` the traced tensor; `args`/`kwargs` what the module was
    called with (for an input point, before any edit)."""

    name: str
    x: torch.Tensor
    args: tuple
    kwargs: dict


def unwrap(output: Any) -> torch.Tensor:
    """The tensor a hook reads from a module output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return unwrap(output[0])
    h = getattr(output, "last_hidden_state", None)
    if isinstance(h, torch.Tensor):
        return h
    raise TypeError(f"cannot read a tensor from a module output of type {type(output).__name__}")


def _rewrap(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (_rewrap(output[0], new),) + tuple(output[1:])
    if isinstance(output, list):
        return [_rewrap(output[0], new)] + list(output[1:])
    output.last_hidden_state = new  # a ModelOutput keeps its tuple view in step
    return output


_INPUT_KEYS = ("inputs_embeds", "hidden_states", "input_features", "pixel_values")


def _input_of(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | int]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    for k in _INPUT_KEYS:
        if isinstance(kwargs.get(k), torch.Tensor):
            return kwargs[k], k
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return v, k
    raise TypeError("the traced module was called without a tensor input")


class Trace(contextlib.AbstractContextManager):
    """Hooks on `points` ({name: point}) of `root` while the context is open (module docstring)."""

    def __init__(
        self,
        root: torch.nn.Module,
        points: Mapping[str, str],
        *,
        fn: Callable[[Fired], None] | None = None,
        edit: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        keep: bool = False,
        detach: bool = True,
        stop: bool = False,
    ) -> None:
        from .model import resolve_module

        self.points = dict(points)
        self.fn, self.edit, self.keep, self.detach, self.stop = fn, dict(edit or {}), keep, detach, stop
        unknown = set(self.edit) - set(self.points)
        if unknown:
            raise KeyError(f"edit names points that are not traced: {sorted(unknown)}")
        self.kept: dict[str, list[torch.Tensor]] = {n: [] for n in self.points}
        self.calls: dict[str, int] = {n: 0 for n in self.points}
        self._handles: list[Any] = []
        try:
            for name, point in self.points.items():
                path, is_input = split_point(point)
                module = resolve_module(root, path)
                if is_input:
                    self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
                else:
                    self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        except BaseException:
            self.close()
            raise

    # -- what every hook does with the traced tensor
    def _fire(self, name: str, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
        self.calls[name] += 1
        new = self.edit[name](x) if name in self.edit else None
        seen = x if new is None else new
        if self.keep:
            self.kept[name].append(seen.detach() if self.detach else seen)
        if self.fn is not None:
            self.fn(Fired(name, seen, args, kwargs))
        return new

    def _after(self) -> None:
        if self.stop and all(self.calls.values()):
            raise StopForward

    def _hook(self, name: str) -> Callable:
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            new = self._fire(name, unwrap(output), args, kwargs)
            self._after()
            return None if new is None else _rewrap(output, new)

        return hook

    def _pre_hook(self, name: str) -> Callable:
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            x, where = _input_of(args, kwargs)
            new = self._fire(name, x, args, kwargs)
            self._after()
            if new is None:
                return None
            if where == 0:
                return (new,) + tuple(args[1:]), kwargs
            return args, {**kwargs, where: new}

        return hook

    @property
    def fired(self) -> bool:
        """Did every point fire at least once?"""
        return all(self.calls.values())

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)
