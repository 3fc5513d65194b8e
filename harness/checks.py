"""A run's inputs checked before any work: `--param` values against the analyses' declared
types, --seed/--limit/--dtype/--device, whether the model can read the dataset and takes its
options, and whether the results directory takes a file. Found later, a typo or a missing GPU
would cost the extraction (or the dataset's generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import MchError, check_options, check_values, load_entry, param_table


def check_params(
    params: dict[str, dict[str, Any]], reg: Any, run: list[str], protocol: str
) -> dict[str, dict[str, Any]]:
    """Every `--param ANALYSIS.KEY=VALUE` names a registered analysis and a parameter it
    declares, with a value of its type and range (`mch.api.Param`), checked before any work:
    found later, a typo would cost the extraction. An analysis outside the run (lora
    re-measures with other analyses' params) may also be given the parameters of the other
    protocol, checked when it runs; a key no protocol knows is an error. An analysis that
    declares no parameters takes any. The registry's `params` of the analyses in the run are
    checked alike. Returns the values in their declared types."""
    from .api import PROTOCOLS

    out: dict[str, dict[str, Any]] = {}
    for name in list(params) + [a for a in run if a not in params]:
        spec = reg.get("analysis", name)  # an unknown name fails here, with a suggestion
        given = params.get(name, {})
        analysis = load_entry(spec.entry)(spec)
        defaults = analysis.default_params(protocol)
        if not defaults:
            if given:
                out[name] = dict(given)
            continue
        takes = param_table(defaults, getattr(analysis, "param_specs", None))
        check_values(f"analysis {name!r}", spec.options.get("params", {}), takes)
        if name not in params:
            continue
        later = {}
        if name not in run:
            known = {k for pr in PROTOCOLS for k in analysis.default_params(pr)}
            later = {k: v for k, v in given.items() if k not in takes and k in known}
        checked = check_values(f"analysis {name!r}", {k: v for k, v in given.items() if k not in later}, takes)
        out[name] = {**checked, **later}
    return out


DEVICES = "cpu, cuda or cuda:N"


def check_flags(cfg: Any) -> None:
    """--seed, --limit, --dtype, --device, --device-map and --max-memory, before any work (a
    missing GPU found at load time would come after the dataset was read, or generated)."""
    import operator

    try:
        seed = None if isinstance(cfg.seed, bool) else operator.index(cfg.seed)
    except TypeError:
        seed = None
    if seed is None or not 0 <= seed < 2**32:
        raise MchError(f"--seed must be an integer from 0 to 2**32 - 1 (numpy and sklearn seeds), not {cfg.seed!r}")
    if cfg.limit is not None and cfg.limit < 1:
        raise MchError(f"--limit must be at least 1, not {cfg.limit}: the selection would be empty")
    if cfg.dtype is not None and cfg.dtype not in ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise MchError(f"unknown --dtype {cfg.dtype!r}; use float32, bfloat16 or float16")
    check_device(cfg.device)
    from . import dist, placement

    r = dist.ranks()
    placement.check(cfg.device, cfg.device_map, cfg.max_memory, r)
    if cfg.device == "cuda" and r.local_world > 1 and cfg.device_map is None:
        import torch

        n = torch.cuda.device_count()
        if r.local_world > n:
            raise MchError(
                f"{r.local_world} processes on this node and {n} visible GPU{'s' * (n != 1)}: with "
                f"--device cuda each process takes its own GPU (cuda:LOCAL_RANK); start at most {n} "
                f"per node, or name one GPU for all with --device cuda:N"
            )


def check_device(device: str) -> None:
    import re

    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(device))
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise MchError(f"unknown --device {device!r}; use {DEVICES}")
    if m.group(1) == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise MchError(f"--device {device} asks for a GPU, but {why} (torch {torch.__version__}); use --device cpu")
    n = torch.cuda.device_count()
    if m.group(2) is not None and int(m.group(2)) >= n:
        raise MchError(
            f"--device {device}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
            f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})"
        )


def check_model_and_dataset(mspec: Any, dspec: Any, cfg: Any) -> None:
    """The model can read the dataset (modality, and models or datasets that only read each
    other, like the toy organism and its world), and takes the options it is given."""
    mcls, dcls = load_entry(mspec.entry), load_entry(dspec.entry)
    if cfg.device_map is not None and not getattr(mcls, "supports_device_map", False):
        raise MchError(
            f"model {mspec.name!r} loads on one device and cannot be split by --device-map; "
            f"drop --device-map (and --max-memory)"
        )
    if cfg.data_path and not getattr(dcls, "reads_path", True):  # else it would only enter the store key
        raise MchError(
            f"dataset {dspec.name!r} reads no path (its samples are made in code): --data-path does not "
            f"apply to it; drop --data-path (data_path in a --config file)"
        )
    only = getattr(mcls, "datasets", None)
    if only is not None and dspec.name not in only:
        raise MchError(
            f"model {mspec.name!r} reads only dataset{'s' if len(only) > 1 else ''} "
            f"{', '.join(repr(d) for d in only)}, not {dspec.name!r}"
        )
    readers = getattr(dcls, "models", None)
    # readers name registry entries or plugin classes ("module:Class"), so every checkpoint of
    # one plugin (the toy's validation family) reads its world
    if readers is not None and mspec.name not in readers and mspec.entry not in readers:
        raise MchError(
            f"dataset {dspec.name!r} is read only by "
            f"{', '.join(f'the models of plugin {m}' if ':' in m else repr(m) for m in readers)}, "
            f"not {mspec.name!r}"
        )
    if mspec.modality != "text" and dspec.modality != mspec.modality:
        raise MchError(
            f"model {mspec.name!r} reads {mspec.modality} and dataset {dspec.name!r} is {dspec.modality}; "
            f"choose a {mspec.modality} dataset (`mch list datasets`)"
        )
    cfg.model_options = {
        k: v
        for k, v in check_options(
            "model", mspec.name, getattr(mcls, "option_specs", None), {**mspec.options, **cfg.model_options}
        ).items()
        if k in cfg.model_options
    }


def check_results_dir(out_dir: Path) -> None:
    """The results directory exists (or can be made) and takes a file: checked before any
    work, so a bad --out or $MCH_RESULTS never costs an extraction."""
    from .fsio import ensure_writable_dir

    ensure_writable_dir(out_dir, "results directory", "pass --out (or set MCH_RESULTS) with a writable directory")
