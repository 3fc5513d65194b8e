"""An mch plugin that logs every result record to a CSV file as mch writes it: the shape of a
W&B, MLflow or Hub-push integration, without the network.

    pip install -e docs/examples/mch-csv-log
    MCH_CSV_LOG=runs.csv mch bench        # one line per metric of each record, appended

The file (default ./mch-log.csv) gets a header once, then per metric row: when the record
was written, the record's file, model, checkpoint, dataset, analysis, protocol, stage,
attribute, metric, value, ci_low, ci_high, n. mch calls the hook after each record is on
disk (hookspec `mch_record_written`); an exception here is reported and the run goes on.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import mch

FIELDS = [
    "created_at",
    "record",
    "model",
    "checkpoint",
    "dataset",
    "analysis",
    "protocol",
    "stage",
    "attribute",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
]


def log_path() -> Path:
    return Path(os.environ.get("MCH_CSV_LOG", "mch-log.csv"))


@mch.hookimpl
def mch_record_written(record, path):
    out = log_path()
    new = not out.exists() or out.stat().st_size == 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            w.writeheader()
        for m in record["metrics"]:
            w.writerow(
                {
                    "created_at": record["created_at"],
                    "record": str(path),
                    "model": record["model"]["name"],
                    "checkpoint": record["model"].get("checkpoint"),
                    "dataset": record["dataset"]["name"],
                    "analysis": record["analysis"]["name"],
                    "protocol": record["protocol"],
                    "stage": m.get("stage") or "",
                    "attribute": m.get("attribute") or "",
                    "metric": m["metric"],
                    "value": "" if m.get("value") is None else m["value"],
                    "ci_low": "" if m.get("ci_low") is None else m["ci_low"],
                    "ci_high": "" if m.get("ci_high") is None else m["ci_high"],
                    "n": "" if m.get("n") is None else m["n"],
                }
            )
