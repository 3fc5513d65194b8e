"""Data-parallel extraction on an existing launcher: torchrun, `accelerate launch`, or any
launcher that sets torch's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    torchrun --nproc-per-node 8 -m mch extract --model llava --dataset coco --device cuda ...

One process per device. Rank r extracts its share of the store entry's missing chunks (on a
fresh entry: the chunks i with i mod world = r), then every rank meets rank 0, which holds
the entry's lock for the whole job, finalizes the entry and, for `bench`, runs the analyses
alone; the other ranks then exit 0. A chunk is an atomic file whose rows depend only on the
sample index, so a rank killed mid-run loses only its unfinished chunks, and a rerun with
any world size (1 included) completes the entry with the same files.

The process group carries only control messages (who does what, whether a step failed), so
it is gloo on every device: NCCL's object collectives need a CUDA device per rank and its
watchdog aborts a rank that waits longer than its timeout, which waiting for the slowest
rank's extraction is. Waits last up to $MCH_DIST_TIMEOUT seconds (default 86400). When a
rank dies, the launcher stops the others; the ones still waiting get an error from gloo.

The group is mch's own, never torch's default group: torch and transformers keep a
reference to a default group made before they are imported (a default argument,
`process_group=dist.group.WORLD`, in torch.distributed.fsdp), so destroy_process_group
could not free it, and its gloo threads, still running as the interpreter shut down,
aborted a rank at exit now and then (SIGABRT, and the launcher then killed rank 0 in the
middle of its analyses). A group no one else sees is freed, its threads joined, in `finish`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .api import MchError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise MchError(
            f"${name}={raw!r} is not an integer; it is set by the launcher (torchrun, accelerate "
            f"launch): run mch through one, or unset it"
        ) from None


def ranks() -> Ranks:
    """This process's place in the job, from the launcher's environment (1 process without one)."""
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_world = _int_env("LOCAL_WORLD_SIZE", world)
    local_rank = _int_env("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise MchError(
            f"the launcher's environment is inconsistent (RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world})"
        )
    return Ranks(rank, world, local_rank, max(local_world, 1))


_state: dict[str, Any] = {"finished": False, "group": None}


def active() -> bool:
    """Is this process one rank of a multi-process job whose distributed phase is running?"""
    return not _state["finished"] and ranks().world > 1


def is_main() -> bool:
    """Rank 0, or a single process."""
    return ranks().rank == 0


def _timeout_s() -> float:
    raw = os.environ.get("MCH_DIST_TIMEOUT", "86400")
    try:
        t = float(raw)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise MchError(f"MCH_DIST_TIMEOUT={raw!r} must be a positive number of seconds")
    return t


def _group() -> Any:
    """The gloo process group of this job (made on first use)."""
    if _state["group"] is None:
        import datetime

        import torch.distributed as dist

        if not dist.is_available():
            raise MchError("this torch build has no torch.distributed; data-parallel extraction needs it")
        timeout = datetime.timedelta(seconds=_timeout_s())
        if dist.is_initialized():  # the launcher's script made one (perhaps NCCL): a gloo group beside it
            _state["group"] = dist.new_group(backend="gloo", timeout=timeout)
            _state["own"] = "subgroup"
        else:
            for var in ("MASTER_ADDR", "MASTER_PORT"):
                if not os.environ.get(var):
                    raise MchError(
                        f"WORLD_SIZE={ranks().world} but ${var} is not set: start mch with torchrun "
                        f"or accelerate launch, which set both"
                    )
            if os.environ["MASTER_PORT"].strip() == "0":  # the ranks would never meet
                raise MchError(
                    "MASTER_PORT=0: the ranks cannot meet on port 0; give torchrun --standalone (one node) "
                    "or a free --master-port"
                )
            r = ranks()
            # the launcher's store (torchrun's agent holds it; else rank 0 serves it), keys under "mch/"
            store, _, _ = next(dist.rendezvous("env://", rank=r.rank, world_size=r.world, timeout=timeout))
            _state["group"] = dist.ProcessGroupGloo(dist.PrefixStore("mch", store), r.rank, r.world, timeout)
            _state["own"] = "private"
    return _state["group"]


def gather(value: Any) -> list[Any]:
    """Every rank's `value` (a small picklable object), in rank order; a barrier."""
    import pickle

    import torch

    group, world = _group(), ranks().world
    data = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    group.allgather([sizes], [torch.tensor([data.numel()], dtype=torch.int64)]).wait()
    n = max(int(s) for s in sizes)
    padded = torch.zeros(n, dtype=torch.uint8)
    padded[: data.numel()] = data
    got = [torch.empty(n, dtype=torch.uint8) for _ in range(world)]
    group.allgather([got], [padded]).wait()
    return [pickle.loads(g[: int(s)].numpy().tobytes()) for g, s in zip(got, sizes, strict=True)]


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank; a barrier."""
    return gather(value if is_main() else None)[0]


def agree(step: Callable[[], T], what: str) -> T:
    """Run `step` on every rank, then meet: if it failed anywhere, every rank stops with the
    same sentence (the failing rank re-raises its own error), so no rank is left waiting for
    one that has given up."""
    err: BaseException | None = None
    value: Any = None
    try:
        value = step()
        outcome: tuple[str, str] = ("ok", "")
    except MchError as exc:
        err, outcome = exc, ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the other ranks, then re-raised here
        err, outcome = exc, ("error", f"{type(exc).__name__}: {exc}".splitlines()[0])
    outcomes = gather(outcome)
    if err is not None:
        raise err
    for r, (state, msg) in enumerate(outcomes):
        if state != "ok":
            raise MchError(f"rank {r} of this job failed while {what}: {msg}")
    return value


def host() -> str:
    return socket.gethostname()


def _release(group: Any, meet: bool) -> None:
    """Free mch's group (its gloo threads joined now, not at interpreter exit); with `meet`,
    after every rank has reached this point."""
    import torch.distributed as dist

    try:
        if meet:
            gather(None)
        if _state.get("own") == "subgroup":
            dist.destroy_process_group(group)
    except Exception:  # noqa: BLE001 - a peer already gone: nothing left to coordinate
        pass


def finish() -> None:
    """End the distributed phase: later work (rank 0's analyses, a text baseline an analysis
    asks for) runs in this process alone."""
    if _state["finished"]:
        return
    group = _state["group"]
    if group is not None:
        _release(group, meet=True)
    _state["finished"], _state["group"] = True, None
    del group  # the last reference to a private group: its threads are joined here


def shutdown() -> None:
    """Close this process's group without waiting for the others (on the way out after an error)."""
    group, _state["group"] = _state["group"], None
    _state["finished"] = True
    if group is not None:
        _release(group, meet=False)


def shard(items: list[T], r: Ranks | None = None) -> list[T]:
    """This rank's share of `items` (round-robin: on a fresh entry, chunk i goes to rank i mod world)."""
    r = r or ranks()
    return items[r.rank :: r.world]
