"""Data-parallel extraction on real launchers (torchrun, accelerate launch; gloo on the CPU):
the store a 2-rank job writes is bit-identical to a one-process run's; a rank SIGKILLed
mid-run loses only its unfinished chunks and a one-process rerun completes the entry with
the same arrays; a second job is kept out while the first holds the entry; rank 0 alone
runs the analyses. Plus the rank logic in-process (ranks that disagree on the entry, a
store a rank cannot see)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from mch.api import MchError
from mch.runner import RunConfig, extract, plan

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TOY = ["--limit", "48", "--batch-size", "4"]  # 6 chunks of 8
INJECT = ROOT / "tests" / "inject"


def _env(store: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MCH_STORE": str(store), "MCH_CHUNK_SIZE": "8", "COLUMNS": "250", **extra}


def _torchrun(n: int) -> list[str]:
    # the launcher of this interpreter (the `torchrun` script may belong to another environment)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def _run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _entry(store: Path) -> Path:
    found = [p.parent for p in store.rglob("manifest.json")]
    assert len(found) == 1, found
    return found[0]


def _arrays(entry: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(entry.glob("*.npy"))}


def _same(a: Path, b: Path) -> None:
    assert a.name == b.name  # the same store key
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys() and "rows.npy" in x
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k != "info"} == {k: v for k, v in mb.items() if k != "info"}


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    """The toy's entry extracted by one process (in this one)."""
    store = tmp_path_factory.mktemp("one")
    extract(plan(RunConfig(limit=48, batch_size=4, chunk_size=8, store=store, analyses=[])))
    return _entry(store)


def test_accelerate_launch_bench_two_ranks_write_the_one_process_store_and_rank0_alone_analyses(
    tmp_path, toy_reference
):
    env = _env(tmp_path / "s", MCH_RESULTS=str(tmp_path / "r"))
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    res = _run(
        launch + ["-m", "mch", "bench", *TOY, "--analysis", "probe", "--param", "probe.n_bootstrap=20", "--quiet"], env
    )
    assert res.returncode == 0, res.stdout + res.stderr
    entry = _entry(tmp_path / "s")
    _same(entry, toy_reference)
    assert json.loads((entry / "manifest.json").read_text())["info"]["world_size"] == 2
    records = list((tmp_path / "r").glob("*.json"))  # rank 0 alone ran the analysis
    assert len(records) == 1 and res.stdout.count("wrote ") == 1
    rec = json.loads(records[0].read_text())
    assert rec["extraction"]["world_size"] == 2 and rec["extraction"]["model_loaded"] is True


def test_killed_rank_loses_only_its_unfinished_chunks_and_one_process_completes(tmp_path, toy_reference):
    """Rank 1 stops after its first chunk (tests/inject); while rank 0 holds the entry, a second
    job is refused; rank 1 is SIGKILLed; a one-process rerun extracts only what is missing."""
    store, marker = tmp_path / "s", tmp_path / "paused"
    env = _env(
        store,
        PYTHONPATH=os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]),
        MCH_TEST_PAUSE_RANK="1",
        MCH_TEST_PAUSE_AFTER="1",
        MCH_TEST_PAUSE_FILE=str(marker),
    )
    job = subprocess.Popen(
        _torchrun(2) + ["-m", "mch", "extract", *TOY, "--quiet"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        chunks: list[Path] = []
        while time.time() < deadline and job.poll() is None:
            chunks = sorted(store.rglob("chunks/*.npz"))
            if marker.exists() and len(chunks) == 4:  # rank 0's three (0, 2, 4) and rank 1's first (1)
                break
            time.sleep(0.1)
        assert job.poll() is None and marker.exists(), job.communicate()
        assert [c.name for c in chunks] == ["00000.npz", "00001.npz", "00002.npz", "00004.npz"]
        # an unrelated job on the same entry is kept out (rank 0 holds its lock)
        other = _run([sys.executable, "-m", "mch", "extract", *TOY], _env(store, MCH_STORE_WAIT="0"))
        err = " ".join(other.stderr.split())
        assert other.returncode == 2 and "another mch process is writing store entry" in err, other.stderr
        os.kill(int(marker.read_text()), signal.SIGKILL)
        out, errs = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    entry = _entry(store)
    assert not json.loads((entry / "manifest.json").read_text())["complete"]
    assert len(list(entry.glob("chunks/*.npz"))) == 4
    res = _run([sys.executable, "-m", "mch", "extract", *TOY], _env(store))
    assert res.returncode == 0, res.stderr
    assert "resuming extraction: 32 samples already in the store" in " ".join(res.stderr.split())
    _same(entry, toy_reference)


def test_tiny_llava_two_ranks_write_the_one_process_store_both_views(tmp_path):
    from mch.plugins.attributes import synth
    from mch.plugins.models.tiny import make_tiny_llava

    ck = make_tiny_llava(tmp_path / "llava")
    coco = synth.make("coco", tmp_path / "coco", images=12)
    args = [
        "--model",
        "llava",
        "--checkpoint",
        str(ck),
        "--dataset",
        "coco",
        "--data-path",
        str(coco),
        "--limit",
        "12",
        "--batch-size",
        "2",
    ]
    res = _run(
        _torchrun(2) + ["-m", "mch", "extract", *args, "--text", "--quiet"], _env(tmp_path / "two", MCH_CHUNK_SIZE="4")
    )
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = RunConfig(
        model="llava",
        checkpoint=str(ck),
        dataset="coco",
        data_path=str(coco),
        limit=12,
        batch_size=2,
        chunk_size=4,
        store=tmp_path / "one",
        analyses=[],
    )
    p = plan(cfg)
    for view in ("modal", "text"):
        one = extract(p, view).dir
        two = tmp_path / "two" / one.relative_to(tmp_path / "one")
        _same(two, one)
        assert json.loads((two / "manifest.json").read_text())["info"]["world_size"] == 2


# --------------------------------------------------------------------------- rank logic in one process


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as td
if sys.argv[1] == "user-group":  # a launcher script that made torch's default group itself
    import torch.distributed.fsdp.sharded_grad_scaler  # before: so that the script can free its group
    td.init_process_group("gloo")
from mch import dist
dist.agree(lambda: 1, "meeting")
import torch.distributed.fsdp.sharded_grad_scaler  # what loading a transformers model imports
got = dist.gather("x" * (3000 * int(os.environ["RANK"])))
dist.finish()
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
groups = None
if td.is_initialized():
    td.barrier()  # the script's own group still works
    groups = len(td.distributed_c10d._world.pg_map)  # and mch's gloo group beside it is gone
    td.destroy_process_group()
os.write(1, (json.dumps({"rank": os.environ["RANK"], "got": [len(g) for g in got], "threads": threads, "groups": groups}) + "\\n").encode())  # one write: the ranks share stdout
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
@pytest.mark.parametrize("mode", ["mch-group", "user-group"])
def test_finish_frees_the_group_and_its_threads_even_when_torch_keeps_the_default_group(tmp_path, mode):
    """torch.distributed.fsdp keeps a reference to a default group made before it is imported
    (a default argument), so a rank that had made the default group exited with its gloo
    threads still running, and now and then aborted at exit (SIGABRT: the launcher then killed
    rank 0 during its analyses). After `finish` no gloo thread is left, and a launcher script's
    own group is left working."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    res = _run(_torchrun(2) + [str(script), mode], {**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    reports = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == ["0", "1"], res.stdout + res.stderr
    for r in reports:
        assert r["got"] == [0, 3000], r  # each rank's value, in rank order
        if mode == "mch-group":
            assert not [t for t in r["threads"] if "gloo" in t] and r["groups"] is None, r
        else:  # the script's group alone: one transport thread
            assert r["threads"].count("gloo_tcp_loop") == 1 and r["groups"] == 1, r


API_ERROR_SCRIPT = """
import json, os
import mch
from mch import dist, runner
def failing_extract(p, view="modal"):  # rank 1 fails after the group is made: every rank stops
    return dist.agree(lambda: 1 / int(os.environ["RANK"] == "0"), "extracting")
runner.extract = failing_extract
try:
    mch.extract("toy", "toy", limit=8)
except Exception as exc:  # rank 1: its own ZeroDivisionError; rank 0: one sentence naming rank 1
    err = f"{type(exc).__name__}: {exc}"
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
os.write(1, (json.dumps({"rank": os.environ["RANK"], "err": err, "threads": threads}) + "\\n").encode())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_a_python_api_error_under_a_launcher_closes_the_group(tmp_path):
    """mch.extract failing on a rank: every rank gets the error and mch's group is closed, as
    the CLI closes it; left open, its gloo threads outlived the interpreter and aborted a rank
    at exit now and then (SIGABRT after the error)."""
    script = tmp_path / "api_error.py"
    script.write_text(API_ERROR_SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MCH_STORE": str(tmp_path / "s")}
    res = _run(_torchrun(2) + [str(script)], env, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    reports = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == ["0", "1"], res.stdout + res.stderr
    for r in reports:
        assert "ZeroDivisionError" in r["err"] or "rank 1" in r["err"], r
        assert not [t for t in r["threads"] if "gloo" in t], r


SAME = object()


class _FakeRanks:
    """Rank 0 of two, in this process: `replies` is what rank 1 brings to each meeting, in
    order (SAME: whatever rank 0 brings)."""

    def __init__(self, monkeypatch, replies, rank: int = 0):
        from mch import dist

        self.replies = list(replies)
        monkeypatch.setattr(dist, "active", lambda: True)
        monkeypatch.setattr(dist, "ranks", lambda: dist.Ranks(rank, 2, rank, 2))
        monkeypatch.setattr(dist, "gather", self.gather)
        monkeypatch.setattr(dist, "broadcast", lambda v: v)

    def gather(self, v):
        reply = self.replies.pop(0) if self.replies else SAME
        return [v, v if reply is SAME else reply]


def _toy16(tmp_path):
    return plan(RunConfig(limit=16, batch_size=4, chunk_size=8, store=tmp_path / "s", analyses=[]))


def test_ranks_that_compute_another_store_entry_stop_with_one_sentence(tmp_path, monkeypatch):
    p = _toy16(tmp_path)
    _FakeRanks(monkeypatch, [SAME, ("0123456789abcdef0123", 8, 16, "node-b")])
    with pytest.raises(
        MchError, match="rank 1 \\(on node-b\\) computes store entry 0123456789abcdef0123.*same checkpoint files"
    ):
        extract(p)


def test_a_failure_on_another_rank_stops_rank_zero_keeps_its_chunks_and_frees_the_lock(tmp_path, monkeypatch):
    from mch.fsio import is_locked

    p = _toy16(tmp_path)
    # meetings: entry found, same key, lock taken, then rank 1 fails while extracting its chunk
    _FakeRanks(monkeypatch, [SAME, SAME, SAME, ("error", "out of memory")])
    with pytest.raises(MchError, match="rank 1 of this job failed while extracting modal chunks: out of memory"):
        extract(p)
    entry = _entry(tmp_path / "s")
    assert is_locked(entry / "lock") is None
    assert not json.loads((entry / "manifest.json").read_text())["complete"]
    assert [c.name for c in sorted(entry.glob("chunks/*.npz"))] == ["00000.npz"]  # rank 0's share, kept


def test_a_rank_that_cannot_see_the_store_says_it_must_be_shared(tmp_path, monkeypatch):
    from mch import dist, runner

    p = _toy16(tmp_path)
    _FakeRanks(monkeypatch, [], rank=1)  # rank 1, on a node where rank 0's entry is not visible
    monkeypatch.setattr(dist, "broadcast", lambda v: ("fill", [0, 1]))
    monkeypatch.setattr(runner, "SHARED_STORE_WAIT_S", 0.0)
    with pytest.raises(MchError, match="does not see store entry .* a filesystem every node shares"):
        extract(p)
