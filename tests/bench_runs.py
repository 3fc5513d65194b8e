"""`mch bench --analysis probe` through the CLI, as the model plugins' end-to-end tests run it."""

from __future__ import annotations

from pathlib import Path


def bench_probe(
    model: str, checkpoint: str | Path, dataset: str, limit: int, tmp_path: Path, *extra: str
) -> list[Path]:
    """Run it quietly with the store and results under `tmp_path`; the result files written."""
    from mch.cli import main

    main(
        ["bench", "--model", model, "--checkpoint", str(checkpoint), "--dataset", dataset, "--limit", str(limit)]
        + [*extra, "--analysis", "probe", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "results")]
        + ["--quiet"]
    )
    return list((tmp_path / "results").rglob("*.json"))
