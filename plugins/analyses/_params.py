"""Small helpers the analyses share: parameter checks and stage lookups (and the modal/text
pair at a stage), each failing with one clear `MchError` sentence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mch.api import STAGE_PATTERN, MchError, Param, check_param_keys, check_values, param_table, stage_sort_key

# What each analysis declared with `declare` (its class's `param_specs` too).
DECLARED: dict[str, dict[str, Param]] = {}

STAGE = Param(str, pattern=STAGE_PATTERN)  # a stage name: encoder, adapter, llm.N, llm.final
TEXT_STAGE = Param(str, pattern=STAGE_PATTERN, nullable=True)  # None: the protocol's text stage


def declare(analysis: str, **specs: Param) -> dict[str, Param]:
    """The types and ranges of `analysis`'s parameters beyond what their defaults say (see
    `mch.api.Param`); a parameter not named here is still checked against its default's type."""
    DECLARED[analysis] = dict(specs)
    return DECLARED[analysis]


def check_params(analysis: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """A misspelled `--param`, or a value of the wrong type or range, must not be silently
    used (the runner makes the same check before any work; this one covers analyses run
    directly)."""
    check_param_keys(analysis, params, defaults)
    check_values(f"analysis {analysis!r}", params, param_table(defaults, DECLARED.get(analysis)))


def as_list(value: Any) -> list[str]:
    """`"a,b"` or `["a", "b"]` -> ["a", "b"]; None -> []."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def need_stage(analysis: str, reps: Mapping[str, Any], stage: str, what: str = "modal") -> Any:
    if stage not in reps:
        have = ", ".join(sorted(reps, key=stage_sort_key)) or "none"
        raise MchError(
            f"analysis {analysis!r} needs stage {stage!r} of the {what} representations; this run has: {have}"
        )
    return reps[stage]


def middle_llm_stage(stages: list[str]) -> str | None:
    """llm.{L//2} of the stages present (llm.16 for a 32-layer decoder), or None."""
    layers = sorted(int(s.split(".")[1]) for s in stages if s.startswith("llm.") and s[4:].isdigit())
    if not layers:
        return None
    mid = f"llm.{(layers[-1] + 1) // 2}"
    return mid if mid in stages else f"llm.{layers[len(layers) // 2]}"


def paper_text_stage(text_stages: list[str]) -> str:
    """The reference's text hook: llm_hidden_16 if present, else llm_final (scripts 06/07)."""
    for s in ("llm.16", "llm.final"):
        if s in text_stages:
            return s
    raise MchError(
        "the paper protocol compares against the text baseline's llm.16 or llm.final; "
        "the text representations of this run have neither"
    )


def load_pair(name: str, ctx: Any, stage: str, text_stage: str | None) -> tuple[Any, Any, str]:
    """Modal vectors at `stage` and text vectors at `text_stage` (None: the protocol's
    choice), with all-zero rows dropped under paper as the reference did."""
    import numpy as np

    X = need_stage(name, ctx.reps, stage)
    treps = ctx.text_reps()
    if text_stage is None:
        text_stage = paper_text_stage(list(treps)) if ctx.protocol == "paper" else stage
    Y = need_stage(name, treps, text_stage, "text")
    if ctx.protocol == "paper":
        X = np.asarray(X)[np.any(np.asarray(X) != 0, axis=1)]
        Y = np.asarray(Y)[np.any(np.asarray(Y) != 0, axis=1)]
        if X.shape[1] != Y.shape[1]:  # the reference: PCA of the stacked rows to the smaller width
            from sklearn.decomposition import PCA

            pca = PCA(n_components=min(X.shape[1], Y.shape[1]), random_state=0)
            pca.fit(np.concatenate([X, Y]).astype(np.float64))
            X, Y = pca.transform(X.astype(np.float64)), pca.transform(Y.astype(np.float64))
    elif X.shape[0] != Y.shape[0]:
        raise MchError(
            f"analysis {name!r}: {X.shape[0]} modal rows but {Y.shape[0]} text rows; "
            f"the default protocol needs the paired text of every sample"
        )
    return X, Y, text_stage
