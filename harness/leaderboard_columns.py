"""The leaderboard's columns (a text field of the row, or one metric at one stage) and how a
cell is written as text; mch.leaderboard builds the rows, the renderers draw them.

Light on purpose: the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """A leaderboard column: a text field of the row, or one metric at one stage.

    `stage` "*" takes the metric's attribute-level row (stage null) if there is one, else its
    `llm.final` row, else its only row."""

    key: str
    label: str
    metric: str | None = None
    stage: str | None = None
    fmt: str = "{:.3f}"
    help: str = ""

    @property
    def numeric(self) -> bool:
        return self.metric is not None


TEXT_COLUMNS = [
    Column("kind", "Kind", help="measured by mch, or reported in the paper"),
    Column("model", "Model"),
    Column(
        "checkpoint",
        "Checkpoint",
        help="the weights measured: local path (last two parts) or HF id, @revision; "
        "#hash tells apart checkpoints that would read the same",
    ),
    Column("dataset", "Dataset"),
    Column(
        "n",
        "N",
        help="samples the row's numbers rest on (the attribute's labelled ones; rows of different selections are never merged)",
    ),
    Column("attribute", "Attribute"),
    Column("protocol", "Protocol"),
]
METRIC_COLUMNS = [
    Column("acc_adapter", "Acc @adapter", "accuracy", "adapter", help="probe accuracy at the adapter output, 95% CI"),
    Column("acc_final", "Acc @final", "accuracy", "llm.final", help="probe accuracy at llm.final, 95% CI"),
    Column(
        "chance",
        "Chance",
        "chance_retention",
        "*",
        help="the chance level c of Retained % (mch's default protocol: the majority rate; paper: 1/K)",
    ),
    Column("retained_pct", "Retained %", "retained_pct", "*", "{:.0f}", help="100·(acc_final − c)/(acc_adapter − c)"),
    Column(
        "i_probe_adapter",
        "I_probe @adapter",
        "i_probe_bits",
        "adapter",
        "{:.2f}",
        help="information present at the adapter, bits",
    ),
    Column(
        "i_probe_final",
        "I_probe @final",
        "i_probe_bits",
        "llm.final",
        "{:.2f}",
        help="information present at llm.final, bits",
    ),
    Column("gmi", "GMI", "gmi_bits", "*", "{:.2f}", help="information accessible to the decoder, bits, 95% CI"),
    Column(
        "gmi_lm",
        "GMI (LM rate)",
        "gmi_lm_bits",
        "*",
        "{:.2f}",
        help="GMI with per-class offsets: the decoder's answer bias not counted as inaccessible, bits, 95% CI",
    ),
    Column(
        "gmi_p",
        "GMI p",
        "gmi_p",
        "*",
        "{:.3f}",
        help="label-permutation p-value of GMI (group structure kept): is anything accessible?",
    ),
    Column(
        "access_adapter",
        "Access. @adapter",
        "accessibility",
        "adapter",
        "{:.2f}",
        help="GMI / I_probe(adapter), 95% CI from shared group resamples",
    ),
    Column(
        "access_final",
        "Access. @final",
        "accessibility",
        "llm.final",
        "{:.2f}",
        help="GMI / I_probe(llm.final), 95% CI from shared group resamples",
    ),
    Column(
        "access_lm_adapter",
        "Access. LM @adapter",
        "accessibility_lm",
        "adapter",
        "{:.2f}",
        help="gmi_lm / I_probe(adapter), 95% CI",
    ),
    Column(
        "access_lm_final",
        "Access. LM @final",
        "accessibility_lm",
        "llm.final",
        "{:.2f}",
        help="gmi_lm / I_probe(llm.final), 95% CI",
    ),
    Column(
        "ablation_ms",
        "Ablation Δ% MS",
        "ablation_pct_change_ms_all",
        "*",
        "{:+.2f}",
        help="% change of decoder loss when all modality-specific modes are removed",
    ),
    Column(
        "lora_dacc",
        "LoRA Δacc",
        "lora_delta_accuracy",
        "*",
        "{:+.3f}",
        help="change of probe accuracy after the attribute LoRA",
    ),
    Column(
        "lora_dgmi",
        "LoRA ΔGMI",
        "lora_delta_gmi_bits",
        "*",
        "{:+.2f}",
        help="change of GMI (bits) after the attribute LoRA",
    ),
]
# a column's stand-in metric for records without its own: the paper's reported entries carry
# only 1/K, which is also the c of their retention numbers
FALLBACK: dict[str | None, str] = {"chance_retention": "chance_uniform"}  # keyed by Column.metric
TAIL_COLUMNS = [Column("revision", "Revision"), Column("mch_version", "mch")]
COLUMNS = TEXT_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}


def format_cell(col: Column, cell: dict | None, with_ci: bool = True) -> str:
    if cell is None or cell.get("value") is None:
        return "—"
    s = col.fmt.format(cell["value"])
    lo, hi = cell.get("ci_low"), cell.get("ci_high")
    if with_ci and lo is not None and hi is not None:
        f = col.fmt.replace("+", "")
        s += f" [{f.format(lo)}, {f.format(hi)}]"
    return s


def text_value(row: dict, key: str) -> str:
    if key == "attribute" and row.get("kind") and row.get(key) is None:
        return "(model-level)"
    if key == "checkpoint" and row.get("checkpoint_label"):
        return row["checkpoint_label"]
    if key == "kind" and row.get("smoke"):
        return "smoke"  # a random-weight checkpoint: never a model's measurement
    if key == "mch_version" and row.get("kind") == "reported":
        return "—"  # entered by hand, not produced by mch
    v = row.get(key)
    return "—" if v in (None, "") else str(v)


def visible_metric_columns(rows: list[dict]) -> list[Column]:
    """Metric columns that have a value in at least one row (keeps the table narrow)."""
    return [c for c in METRIC_COLUMNS if any(r["values"].get(c.key) for r in rows)]
