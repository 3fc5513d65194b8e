"""`python -m mch.plugins.models.toy train | organism NAME`: rebuild the shipped weights."""

from __future__ import annotations

import sys
from pathlib import Path

from .modeling import ORGANISMS, WEIGHTS, WEIGHTS_ROOT
from .training import train, train_organism


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mch.plugins.models.toy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the toy organism from scratch")
    t.add_argument("--out", default=str(WEIGHTS))
    t.add_argument("--text-steps", type=int, default=1200)
    t.add_argument("--adapter-steps", type=int, default=1200)
    o = sub.add_parser("organism", help="write one organism of the validation bench (its adapter)")
    o.add_argument("name", choices=sorted(ORGANISMS) + ["all"])
    o.add_argument("--out", default=None, help="directory (default: the shipped weights/NAME; with 'all', a root)")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        print(f"wrote {train(a.out, a.text_steps, a.adapter_steps)}")
        return
    for name in sorted(ORGANISMS) if a.name == "all" else [a.name]:
        root = Path(a.out) if a.out else WEIGHTS_ROOT
        out = root / name if (a.name == "all" or not a.out) else root
        print(f"wrote {train_organism(name, out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
