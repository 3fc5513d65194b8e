"""Scale on one machine (issue 17): time and peak memory of extraction and of the default
`probe`, `modes` and `distances` as N grows, with the growth exponent.

    python benchmarks/scale.py                              # N = 2620, 10000, 40000; d = 4096
    python benchmarks/scale.py --quick                      # N = 400, 800, 1600; d = 512 (a smoke run)
    python benchmarks/scale.py --only modes,distances --ns 2620,10000

- extract: `mch extract` of the toy organism (every stage; its widths are 32 and 64) on N
  samples of the toy world (its generator, past the registered split sizes);
- probe: the default protocol on one stage (d wide) with two attributes (40 speakers grouped
  by 120 chapters, 6 emotions grouped by 90 actors: benchmarks/analyses.py's vectors);
- modes, distances: the default protocol on one stage, modal and paired text vectors (d
  wide; benchmarks/analyses.py's pair); `--only distances-paper` adds the paper protocol's
  distances (the reference's script 05) on the same vectors.

Every measured call runs in a fresh spawned process under an address-space cap
(--mem-cap-gib, default 8: the machine is shared; a call that needs more ends in a
MemoryError, reported with the allocation that failed) and a time limit (--timeout-s).
Memory columns: `anon` is the peak growth of the process's anonymous memory (numpy
buffers, BLAS work space, everything allocated; sampled every 20 ms from /proc), `rss` the
peak growth of the resident set (which also counts the memory-mapped vectors' pages as
they are read), `read` the bytes of the vectors the call takes as input (float32, every
stage and view it is given). Target: anon < 2x read at every N. `CPU s` is the process's
user + system time (all its threads), steadier than wall time on a shared machine; the
growth exponent of a column is the slope of log(value) against log(N) between consecutive
N (time: of the CPU seconds).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


# --------------------------------------------------------------------------- measuring


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """The peak of RssAnon and VmRSS (KiB) while the block runs, sampled every `dt` s."""

    def __init__(self, dt: float = 0.02):
        self.dt, self.peak_anon, self.peak_rss = dt, 0, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.dt)

    def sample(self) -> None:
        self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
        self.peak_rss = max(self.peak_rss, _status_kb("VmRSS"))

    def __enter__(self) -> PeakSampler:
        self.sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


WARM = (
    "torch",
    "mch.runner",
    "mch.capture",
    "mch.plugins.models.toy",
    "mch.plugins.attributes.toy",
    "scipy.linalg",
    "scipy.special",
    "scipy.optimize",
    "scipy.stats",
    "sklearn.linear_model",
    "ot",
    "mch.plugins.analyses.probe",
    "mch.plugins.analyses.modes",
    "mch.plugins.analyses.distances",
)


def _child(fn: Callable[..., Any], args: tuple, q: Any, cap_gib: float) -> None:
    import importlib
    import resource

    if cap_gib > 0:
        cap = int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        for mod in WARM:  # imports are not what is measured
            importlib.import_module(mod)
        base_anon, base_rss = _status_kb("RssAnon"), _status_kb("VmRSS")
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        with PeakSampler() as peak:
            res = fn(*args)
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        q.put(
            {
                "seconds": dt,
                "cpu_s": cpu,
                "anon_mib": (peak.peak_anon - base_anon) / 1024,
                "rss_mib": (peak.peak_rss - base_rss) / 1024,
                "result": res,
                "error": None,
            }
        )
    except MemoryError as exc:
        q.put({"error": f"MemoryError under the {cap_gib:g} GiB cap: {exc}"})
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        q.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


def measured(fn: Callable[..., Any], args: tuple, cap_gib: float, timeout_s: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q, cap_gib))
    p.start()
    p.join(timeout_s)
    if p.is_alive():
        p.kill()
        p.join()
        return {"error": f"did not finish in {timeout_s:g} s"}
    try:
        return q.get(timeout=5)
    except Exception:  # noqa: BLE001 - the child died without a word (e.g. killed)
        return {"error": f"the measuring process died (exit code {p.exitcode})"}


# --------------------------------------------------------------------------- the measured calls


def run_extract(n: int, store: str, batch_size: int) -> dict[str, Any]:
    from mch.plugins.attributes import toy as world
    from mch.runner import RunConfig, extract, plan

    world.SPLIT_SIZES["train"] = max(world.SPLIT_SIZES["train"], n)  # the world's generator, any size
    p = plan(RunConfig(limit=n, split="train", batch_size=batch_size, store=Path(store), analyses=[]))
    entry = extract(p)
    reps, rows = entry.read()
    return {"n_rows": int(len(rows)), "stored_mib": sum(v.nbytes for v in reps.values()) / 2**20}


def run_analysis(name: str, files: dict[str, Any], protocol: str = "default") -> dict[str, Any]:
    import analyses as A

    from mch.api import AnalysisSpec, load_entry

    entry = {
        "probe": "mch.plugins.analyses.probe:Probe",
        "modes": "mch.plugins.analyses.modes:ModeAlignment",
        "distances": "mch.plugins.analyses.distances:Distances",
    }[name]
    a = load_entry(entry)(AnalysisSpec(name=name, entry=entry))
    params = a.default_params(protocol)
    if name == "distances" and protocol == "paper":
        params["stages"] = ["adapter"]  # the vectors' one stage (the reference's hooks are llm.16, llm.final)
        params["n_bootstrap"] = 2  # its memory, not the reference's 200 PCA + EMD refits (minutes at any N)
    ctx = A._probe_context(files, protocol, params) if name == "probe" else A._context(files, params, protocol)
    out = a.run(ctx)
    return {"n_metrics": len(out.metrics)}


# --------------------------------------------------------------------------- the table


def exponents(ns: list[int], values: list[float | None]) -> list[str]:
    out = [""]
    for i in range(1, len(ns)):
        a, b = values[i - 1], values[i]
        out.append(f"{math.log(b / a) / math.log(ns[i] / ns[i - 1]):.2f}" if a and b and a > 0 and b > 0 else "-")
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| what | N | seconds | CPU s | growth (CPU) | anon MiB | growth | rss MiB | read MiB | anon / read | note |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    lines = [head]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["what"], []).append(r)
    for what, rs in by.items():
        ns = [r["n"] for r in rs]
        t_exp = exponents(ns, [r.get("cpu_s") for r in rs])
        m_exp = exponents(ns, [r.get("anon_mib") for r in rs])
        for r, te, me in zip(rs, t_exp, m_exp, strict=True):
            if r.get("error"):
                lines.append(f"| {what} | {r['n']} | – | – | | – | | – | {r['read_mib']:.0f} | – | {r['error']} |")
                continue
            ratio = r["anon_mib"] / r["read_mib"] if r["read_mib"] else float("nan")
            lines.append(
                f"| {what} | {r['n']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {te} | {r['anon_mib']:.0f} | {me} | "
                f"{r['rss_mib']:.0f} | {r['read_mib']:.0f} | {ratio:.2f} | {r.get('note', '')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", default="2620,10000,40000")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--only", default="extract,probe,modes,distances")
    ap.add_argument("--quick", action="store_true", help="N = 400, 800, 1600 and d = 512")
    ap.add_argument("--mem-cap-gib", type=float, default=8.0, help="address-space cap per measured call (0: none)")
    ap.add_argument("--timeout-s", type=float, default=3600.0)
    ap.add_argument("--batch-size", type=int, default=64, help="extraction batch size")
    ap.add_argument("--tmp", default=None, help="where the synthetic vectors and stores go (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.ns, args.d = "400,800,1600", 512
    ns = [int(x) for x in args.ns.split(",")]
    only = [x.strip() for x in args.only.split(",") if x.strip()]

    import analyses as A

    rows: list[dict[str, Any]] = []
    print(
        f"scale: N = {ns}, d = {args.d}, cap {args.mem_cap_gib:g} GiB per call, {os.cpu_count()} CPUs",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in ns:
            d_n = Path(tmp) / f"n{n}"
            d_n.mkdir()
            if "extract" in only:
                r = measured(run_extract, (n, str(d_n / "store"), args.batch_size), args.mem_cap_gib, args.timeout_s)
                widths = 32 + 64 * 6  # the toy's stages: encoder 32, adapter and llm.* 64
                stored = r.get("result", {}).get("stored_mib") if r.get("result") else n * widths * 4 / 2**20
                rows.append(
                    {
                        "what": "extract (toy)",
                        "n": n,
                        "read_mib": stored,
                        "note": "read = the stored vectors it writes",
                        **r,
                    }
                )
                _echo(rows[-1])
            if any(a in only for a in ("modes", "distances", "distances-paper")):
                files = A.synthetic_vectors(d_n, n, args.d)
                for name in ("modes", "distances", "distances-paper"):
                    if name in only:
                        call = ("distances", files, "paper") if name == "distances-paper" else (name, files)
                        r = measured(run_analysis, call, args.mem_cap_gib, args.timeout_s)
                        note = {
                            "distances": "reads a subsample of max_n = 1000 pairs",
                            "distances-paper": "paper protocol, n_bootstrap = 2 (memory, not time)",
                        }.get(name, "")
                        rows.append({"what": name, "n": n, "read_mib": 2 * n * args.d * 4 / 2**20, "note": note, **r})
                        _echo(rows[-1])
                for f in ("modal", "text"):
                    Path(files[f]).unlink()
            if "probe" in only:
                files = A.probe_vectors(d_n, n, args.d, n_stages=1)
                r = measured(run_analysis, ("probe", files), args.mem_cap_gib, args.timeout_s)
                rows.append(
                    {"what": "probe", "n": n, "read_mib": n * args.d * 4 / 2**20, "note": "1 stage x 2 attributes", **r}
                )
                _echo(rows[-1])
                for f in files["stages"].values():
                    Path(f).unlink()
    order = {w: i for i, w in enumerate(["extract (toy)", "probe", "modes", "distances", "distances-paper"])}
    rows.sort(key=lambda r: (order.get(r["what"], 9), r["n"]))
    print(table(rows))
    return 0


def _echo(r: dict[str, Any]) -> None:
    if r.get("error"):
        print(f"  {r['what']:<14} N = {r['n']:>6}: {r['error']}", file=sys.stderr, flush=True)
    else:
        print(
            f"  {r['what']:<14} N = {r['n']:>6}: {r['seconds']:8.1f} s ({r['cpu_s']:.1f} s CPU)   anon +{r['anon_mib']:.0f} MiB   "
            f"rss +{r['rss_mib']:.0f} MiB   read {r['read_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
