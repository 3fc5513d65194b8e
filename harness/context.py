"""What an analysis sees: representations, labels, groups, and a lazy handle on the model.

Analyses never extract by themselves and never load a model directly. What they need from
the live model (GMI scores, gradients, ablation losses) goes through `ctx.cached(...)`,
which stores arrays in the representation store; `ctx.model` loads the model only on first
use, so a second run whose numbers are all cached never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .api import AnalysisOutput, Attribute, MchError, Sample
from .progress import Progress


@dataclass
class AnalysisContext:
    protocol: str
    params: dict[str, Any]
    seed: int
    stages: list[str]
    reps: Mapping[str, np.ndarray]  # stage -> (N, D) float array, row i = samples[i]
    samples: list[Sample]
    attributes: dict[str, Attribute]  # the attributes selected for this run
    labels: dict[str, np.ndarray]  # attribute -> (N,) class names ("" = unlabelled)
    groups: dict[str, np.ndarray]  # attribute -> (N,) group values of its group key
    span: str = "modality"
    previous: dict[str, AnalysisOutput] = field(default_factory=dict)  # earlier analyses, same run
    progress: Progress = field(default_factory=Progress)
    run_config: Any = None  # the runner's RunConfig (an analysis that re-runs the runner, e.g. lora, reads it)
    dataset: Any = None  # the DatasetPlugin (e.g. lora draws its training split from it)
    _model_loader: Callable[[], Any] | None = None
    _cache: Callable[..., np.ndarray] | None = None
    _text_reps: Callable[[], Mapping[str, np.ndarray]] | None = None
    text_source: str = "the model's own text view"  # which model makes text_reps(), in words
    _own_text_reps: Callable[[], Mapping[str, np.ndarray]] | None = None
    _rerun: Callable[..., tuple[dict[str, AnalysisOutput], list[Any]]] | None = None
    _model: Any = None

    @property
    def sample_ids(self) -> list[str]:
        return [s.sample_id for s in self.samples]

    @property
    def model(self) -> Any:
        """The loaded model plugin; loads it on first access."""
        if self._model is None:
            if self._model_loader is None:
                raise MchError("this analysis needs the live model, but none is available in this context")
            self._model = self._model_loader()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def cached(self, name: str, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the array stored under (name, key) for this run's model and samples, or
        compute it (typically with `ctx.model`), store it and return it."""
        if self._cache is None:
            return np.asarray(compute())
        return self._cache(name, key, compute)

    def text_reps(self) -> Mapping[str, np.ndarray]:
        """Representations of the protocol's text baseline (default: the paired text through the
        model's own LLM; paper: through the separate text-only model, `text_source`), extracted
        once and stored like the modal ones, rows paired with `reps`."""
        if self._text_reps is None:
            raise MchError("no text baseline is available for this run")
        return self._text_reps()

    def own_text_reps(self) -> Mapping[str, np.ndarray]:
        """The paired text through this model's own LLM under either protocol: what an analysis
        that feeds text vectors back into this model's decoder needs (bound)."""
        if self._own_text_reps is None:
            return self.text_reps()
        return self._own_text_reps()

    def rerun(
        self,
        analyses: Sequence[str],
        sample_ids: Sequence[str],
        adapter: str | None = None,
        write_records: bool = False,
    ) -> tuple[dict[str, AnalysisOutput], list[Any]]:
        """Run other analyses again on some of this run's samples, without or with a PEFT
        `adapter` merged into the model (lora: before and after training): the runner's own
        plan, store and configuration otherwise; without an adapter, this run's model is reused
        if it is loaded. With `write_records` each one's result record is written. Returns
        ({analysis: output}, [paths of the records written])."""
        if self._rerun is None:
            raise MchError("this analysis re-runs other analyses and needs the runner; run it through `mch bench`")
        return self._rerun(
            list(analyses), list(sample_ids), adapter, write_records, self._model if adapter is None else None
        )

    def labelled(self, attribute: str) -> np.ndarray:
        """Row indices whose label for `attribute` is set."""
        return np.flatnonzero(self.labels[attribute] != "")
