"""Where a model's weights go: one device, or split over several (accelerate's big-model
inference), and which device each rank of a data-parallel job uses.

    --device-map auto|balanced|balanced_low_0|sequential    accelerate's placement strategies
    --max-memory 0=70GiB,1=70GiB,cpu=200GiB                 the most each device may hold

A transformers plugin passes both to `from_pretrained`; a plugin that builds its own module
(Ultravox, Prismatic) places it with the same accelerate calls (`ModelPlugin.place`).
`--device` says which kind of device: `cpu` keeps every weight on the CPU (the map is then
trivial, which is what the CPU tests check); `cuda` spreads the model over the visible GPUs
(and onto the CPU only where `--max-memory` names it, or where accelerate's own default
puts what does not fit). A map that would leave weights on disk is an error: mch never
reads weights from disk during a forward pass.

Under a launcher with several processes on a node, `--device cuda` gives each process its
own GPU (cuda:LOCAL_RANK); with `--device-map` each process gets an equal, contiguous share
of the node's GPUs (8 GPUs, 2 processes: 0-3 and 4-7), and `--max-memory`'s GPU numbers are
the node's (each process keeps those of its share).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .api import MchError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
MAX_MEMORY_EXAMPLE = "0=70GiB,1=70GiB,cpu=200GiB"


def parse_max_memory(text: str | dict | None) -> dict[int | str, str] | None:
    """`0=70GiB,1=70GiB,cpu=200GiB` -> {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}; one sentence
    for anything else. A dict (from the Python API) is checked alike."""
    if text is None or text == "":
        return None
    from accelerate.utils import convert_file_size_to_int

    items = (
        list(text.items())
        if isinstance(text, dict)
        else [
            tuple(part.split("=", 1)) if "=" in part else (part, None) for part in str(text).split(",") if part.strip()
        ]
    )
    out: dict[int | str, str] = {}
    for key, size in items:
        k = str(key).strip().lower()
        if size is None or not k:
            raise MchError(f"--max-memory {text!r} must be DEVICE=SIZE pairs, e.g. {MAX_MEMORY_EXAMPLE}")
        if k.isdigit():
            dev: int | str = int(k)
        elif k == "cpu":
            dev = "cpu"
        else:
            raise MchError(
                f"--max-memory: {key!r} is not a device; use a GPU number (0, 1, ...) or cpu, e.g. {MAX_MEMORY_EXAMPLE}"
            )
        s = str(size).strip()
        try:
            n = convert_file_size_to_int(s)
        except ValueError:
            n = -1
        if not isinstance(n, int) or n <= 0:
            raise MchError(f"--max-memory {key}={size}: not a size; write e.g. 70GiB, 500MB or a number of bytes")
        if dev in out:
            raise MchError(f"--max-memory names device {key} twice")
        out[dev] = s
    return out or None


def check(device: str, device_map: str | None, max_memory: Any, ranks: Any) -> dict[int | str, str] | None:
    """--device-map and --max-memory against --device, the visible GPUs and the launcher's
    processes, before any work; returns --max-memory parsed."""
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise MchError(f"unknown --device-map {device_map!r}; use one of {', '.join(DEVICE_MAPS)}")
    mm = parse_max_memory(max_memory)
    if mm is not None and device_map is None:
        raise MchError("--max-memory only limits a model split by --device-map; add --device-map auto")
    if device_map is None:
        return mm
    if re.fullmatch(r"cuda:\d+", device):
        raise MchError(
            f"--device {device} with --device-map: the map spreads the model over every visible GPU; "
            f"pass --device cuda and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    gpus = [k for k in (mm or {}) if isinstance(k, int)]
    if device == "cpu":
        if gpus:
            raise MchError(
                f"--max-memory names GPU {gpus[0]} but --device is cpu; pass --device cuda, or only cpu=SIZE"
            )
        return mm
    import torch

    n = torch.cuda.device_count()
    bad = [g for g in gpus if g >= n]
    if bad:
        raise MchError(f"--max-memory names GPU {bad[0]}, and this machine has {n} visible GPU{'s' * (n != 1)}")
    if ranks.local_world > n:
        raise MchError(
            f"{ranks.local_world} processes on this node share {n} GPU{'s' * (n != 1)} with --device-map: "
            f"start at most {n} processes per node"
        )
    return mm


def gpu_share(n_gpus: int, ranks: Any) -> list[int]:
    """The GPUs of this process: all of them alone, else an equal contiguous block per local rank."""
    if ranks.local_world <= 1:
        return list(range(n_gpus))
    per = n_gpus // ranks.local_world
    return list(range(ranks.local_rank * per, (ranks.local_rank + 1) * per))


def rank_device(device: str, ranks: Any) -> str:
    """`cuda` means this process's own GPU under a launcher with several processes per node."""
    if device == "cuda" and ranks.local_world > 1:
        return f"cuda:{ranks.local_rank}"
    return device


def max_memory_map(device: str, max_memory: dict | None, ranks: Any) -> dict[int | str, Any] | None:
    """What `max_memory` accelerate gets: on the CPU, the CPU alone; on GPUs, this process's
    share (the CPU only where --max-memory names it); None leaves accelerate's default (every
    GPU, then the CPU) to a single process."""
    from accelerate.utils import get_max_memory

    if device == "cpu":
        return {"cpu": (max_memory or {}).get("cpu") or get_max_memory()["cpu"]}
    share = gpu_share(_n_gpus(), ranks)
    if max_memory is None and len(share) == _n_gpus():
        return None
    free = get_max_memory()
    out: dict[int | str, Any] = {g: (max_memory or {}).get(g, free.get(g)) for g in share}
    if max_memory and "cpu" in max_memory:
        out["cpu"] = max_memory["cpu"]
    return out


def _n_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def module_devices(module: Any) -> dict[str, str]:
    """{module path: device} as accelerate placed it (`hf_device_map`), or {"": device} when
    every weight is on one device."""
    dmap = getattr(module, "hf_device_map", None)
    if dmap:
        return {str(k): str(v) for k, v in dmap.items()}
    devs = sorted({str(p.device) for p in module.parameters()})
    return {"": devs[0] if len(devs) == 1 else ",".join(devs)}


def refuse_disk(dmap: dict, name: str, device_map: str, max_memory: Any) -> None:
    """A device map that puts weights on disk is one sentence (mch never reads weights from
    disk during a forward pass)."""
    if "disk" in [str(v) for v in dmap.values()]:
        limits = f" within --max-memory {_words(max_memory)}" if max_memory else ""
        raise MchError(
            f"model {name!r} does not fit{limits} (--device-map {device_map} would leave weights on disk); "
            f"raise --max-memory or use more GPUs"
        )


def check_fits(module: Any, name: str, device_map: str, max_memory: Any) -> None:
    """A loaded model with weights left on disk (the meta device) is refused, as `refuse_disk`."""
    on_disk = {k: "disk" for k, v in module_devices(module).items() if v in ("disk", "meta")}
    on_disk.update({n: "disk" for n, p in module.named_parameters() if p.is_meta})
    refuse_disk(on_disk, name, device_map, max_memory)


def _words(max_memory: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in (max_memory or {}).items())


def dispatch(
    module: Any,
    name: str,
    device: str,
    device_map: str,
    max_memory: dict | None,
    ranks: Any,
    no_split: list[str],
    dtype: Any,
) -> Any:
    """Place a module built in code (not by `from_pretrained`) the way transformers places a
    pretrained one: accelerate's balanced memory (except `sequential`), its device map with
    `no_split` blocks kept whole, then `dispatch_model` (hooks move each block's inputs)."""
    from accelerate import dispatch_model

    dmap = infer_map(module, device_map, max_memory_map(device, max_memory, ranks), no_split, dtype)
    refuse_disk(dmap, name, device_map, max_memory)
    if len(set(dmap.values())) == 1:  # one device: no hooks needed
        dev = next(iter(dmap.values()))
        module = module.to(f"cuda:{dev}" if isinstance(dev, int) else dev)
    else:
        module = dispatch_model(module, device_map=dmap)
    module.hf_device_map = dmap
    return module


def no_split_classes(module: Any, extra: Sequence[str] = ()) -> list[str]:
    """Blocks that must stay whole on one device: `extra` and every `_no_split_modules` the
    transformers models inside `module` declare (their decoder and encoder layers)."""
    out = list(extra)
    for m in module.modules():
        for name in getattr(m, "_no_split_modules", None) or []:
            if name not in out:
                out.append(name)
    return out


def infer_map(module: Any, device_map: str, max_memory: dict | None, no_split: list[str], dtype: Any) -> dict:
    """accelerate's device map for `module` under a strategy, as transformers computes one for
    `from_pretrained` (balanced memory first, except for `sequential`)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    no_split = no_split_classes(module, no_split)
    if device_map == "sequential":
        mm = get_max_memory(max_memory)
    else:
        mm = get_balanced_memory(
            module,
            max_memory=max_memory,
            no_split_module_classes=no_split,
            dtype=dtype,
            low_zero=device_map == "balanced_low_0",
        )
    return infer_auto_device_map(module, max_memory=mm, no_split_module_classes=no_split, dtype=dtype)


def summary(device_map: str, max_memory: dict | None, module: Any) -> dict[str, Any]:
    """What the manifest and the record's extraction section keep of a placement."""
    out: dict[str, Any] = {"strategy": device_map, "modules": module_devices(module)}
    if max_memory:
        out["max_memory"] = {str(k): v for k, v in max_memory.items()}
    return out
