"""Vectors brought in by `mch import-reference`: a "model" whose representations are already in
the store (mch.reference). It has no weights and is never loaded: every store-only analysis
(probe, modes, per_type, distances) runs on it, under either protocol, and an analysis that
needs the live model is refused before any work (mch.reference.with_imports).

Registered by the run itself, not by registry.yaml: the names are the user's
(`--model NAME --dataset NAME`), found again through the store entry the import wrote.
Light: no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mch.api import MchError, stage_sort_key


class ImportedModel:
    """One imported (model, dataset) pair's vectors; `spec.options["entry"]` is the modal
    store entry's directory."""

    option_specs = None
    datasets = None

    def __init__(
        self,
        spec: Any,
        checkpoint: str | None = None,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        **options: Any,
    ) -> None:
        given = [f for f, v in (("--checkpoint", checkpoint), ("--revision", revision), ("--adapter", adapter)) if v]
        if given:
            raise MchError(
                f"model {spec.name!r} is vectors imported from a file: {', '.join(given)} do not apply "
                f"(import another file under another name)"
            )
        if options:
            raise MchError(
                f"model {spec.name!r} is vectors imported from a file and takes no --model-option "
                f"({', '.join(sorted(options))})"
            )
        self.spec = spec
        self.modality = spec.modality
        self.checkpoint = spec.checkpoint
        self.revision = None
        self.adapter = None
        self.device = device
        self.dtype_name = "float32"
        self.options: dict[str, Any] = {}
        self.entry_dir = Path(spec.options["entry"])
        man = json.loads((self.entry_dir / "manifest.json").read_text())
        self._key = man["key"]
        self.imported: dict[str, Any] = man["imported"]

    # -- what the runner asks of a model
    def identity(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "checkpoint": self.checkpoint,
            "revision": None,
            "adapter": None,
            "dtype": "float32",
            "imported": self.imported["source"],
        }

    def checkpoint_paths(self) -> list[Path]:
        return [Path(self.imported["source"])]

    def stored_key(self, view: str) -> dict[str, Any]:
        """The store key of this import's `view` (the runner uses it instead of computing one:
        the vectors depend on the files alone, not on protocol, span, stages or paths)."""
        if view == "modal":
            return self._key
        text = self.imported.get("text")
        if not text:
            raise MchError(
                f"{self.spec.name!r} on {self._key['dataset']['name']!r} was imported without a text "
                f"file, and this analysis compares with the text baseline; import again with "
                f"--text TEXT.h5 (the reference's script 02 output)"
            )
        return text["key_dict"]

    def stages(self, view: str = "modal") -> list[str]:
        if view == "modal":
            return sorted(self.imported["stages"], key=stage_sort_key)
        return sorted((self.imported.get("text") or {}).get("stages", []), key=stage_sort_key)

    def load(self) -> None:
        raise MchError(
            f"model {self.spec.name!r} is vectors imported from {self.imported['source']}: there is no "
            f"model to load (if its store entries were removed, run `mch import-reference` again)"
        )

    def analysis_defaults(self, protocol: str) -> dict[str, Any]:
        """Parameters the analyses take from this model unless `--param` says otherwise: the
        reference's text file has no decoder-input stage, so under `default` an analysis that
        would compare at the same stage (modes, per_type) compares with the text file's
        llm.16 (else llm.final), as the reference did; `paper` picks that layer itself."""
        text = self.stages("text")
        if protocol != "default" or not text or "adapter" in text:
            return {}
        return {"text_stage": "llm.16" if "llm.16" in text else text[-1]}

    def text_view_source(self) -> str:
        text = self.imported.get("text")
        if not text:
            return "no text baseline (imported without --text)"
        return (
            f"the imported text file {text['source']} (the reference's script 02: a separate text-only model, "
            f"raw text with BOS; stages {', '.join(self.stages('text'))})"
        )

    def fidelity(self, protocol: str) -> list[str]:
        notes = [
            f"vectors imported from {self.imported['source']} (sha256 {self.imported['sha256'][:16]}…), the "
            f"reference's HDF5 layout: mch did not extract them; their pooling and prompt are those of the code "
            f"that wrote the file (the reference: a plain mean over every position), whatever --span says"
        ]
        notes += [str(n) for n in self.imported.get("notes", [])]
        d = self.analysis_defaults(protocol)
        if d:
            notes.append(
                f"the text file has no {', '.join(s for s in ('adapter',))} stage: text_stage = "
                f"{d['text_stage']} for the analyses that compare with it at one stage"
            )
        return notes
