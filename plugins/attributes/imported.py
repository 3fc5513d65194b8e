"""Labels brought in by `mch import-reference`: the samples of an imported reference HDF5 file,
in the file's row order, labelled from its string columns (mch.reference).

Attributes, as the reference's script 03 maps its info types to H5 fields: `lexical` from
`transcript` (else `caption`, else `question`), `speaker` from `speaker_id`, `emotion`,
`acoustic` from `sound_class`, the vision columns under their own names, and any other
string column under its own name. Label rules:
  * `paper`: the reference's (script 03): strings as stored ("" = unlabelled); lexical =
    first top-50 word ([a-z]+ tokens, no stop-word removal, rank order);
  * `default`: the same strings; lexical = mch's default rule (first top-50 content word).
Groups (the default protocol's grouped splits): `speaker` is not grouped beyond the sample
(closed-set speaker id); every other attribute is grouped by `speaker_id` when the file has
it, else by sample. Option `groups` ({attribute: column or "sample"}) says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mch.api import Attribute, DatasetPlugin, MchError, Param, Sample

from ._corpus import ordered_classes
from ._lexical import LEXICAL_RULES, lexical_attribute, lexical_labels

RULES = {
    "paper": "the string stored in the file's {col!r} column (reference script 03: empty = unlabelled)",
    "default": "the string stored in the file's {col!r} column (empty = unlabelled)",
}


class ImportedDataset(DatasetPlugin):
    name = "imported"
    option_specs = {
        "entry": Param(str, help="the store entry the import wrote (set by mch, not by hand)"),
        "groups": Param(dict, help='group key per attribute: {attribute: column or "sample"}'),
    }
    reads_path = False  # its samples are the store entry the import wrote

    def __init__(self, spec: Any, path: str | None = None, **options: Any) -> None:
        super().__init__(spec, path, **options)
        if path:
            raise MchError(f"dataset {spec.name!r} is labels imported from a file; --data-path does not apply")
        self.entry_dir = Path(self.options["entry"])
        data = json.loads((self.entry_dir / "labels.json").read_text())
        man = json.loads((self.entry_dir / "manifest.json").read_text())
        self.imported = man["imported"]
        self.modality = self.imported["modality"]
        self.sample_ids: list[str] = data["sample_ids"]
        self.columns: dict[str, list[str]] = data.get("columns") or {}
        self.texts: list[str] = data.get("texts") or [""] * len(self.sample_ids)
        from mch.reference_layout import attribute_columns

        self.attr_columns = attribute_columns(self.columns)
        groups = dict(self.options.get("groups") or {})
        bad = [a for a in groups if a not in self.attr_columns]
        if bad:
            raise MchError(
                f"dataset {spec.name!r} option groups: no attribute {bad[0]!r} (it has {', '.join(self.attr_columns)})"
            )
        wrong = [c for c in groups.values() if c != "sample" and c not in self.columns]
        if wrong:
            raise MchError(
                f"dataset {spec.name!r} option groups: no column {wrong[0]!r} "
                f"(columns: sample, {', '.join(sorted(self.columns))})"
            )
        default_group = "speaker_id" if any(self.columns.get("speaker_id", [])) else "sample"
        self.group_of = {a: groups.get(a, "sample" if a == "speaker" else default_group) for a in self.attr_columns}
        self._labels: dict[str, tuple[dict[str, list[str]], list[str]]] = {}

    def _by_protocol(self, protocol: str) -> tuple[dict[str, list[str]], list[str]]:
        """({attribute: label per sample}, lexical vocabulary in rank order)."""
        if protocol not in self._labels:
            labels, vocab = {}, []
            for attr, col in self.attr_columns.items():
                if attr == "lexical":
                    labels[attr], vocab = lexical_labels(self.columns[col], protocol)
                else:
                    labels[attr] = [v.strip() if protocol == "default" else v for v in self.columns[col]]
            self._labels[protocol] = (labels, vocab)
        return self._labels[protocol]

    def samples(self, split: str | None, limit: int | None, seed: int, protocol: str) -> list[Sample]:
        if split or limit:
            raise MchError(
                f"dataset {self.spec.name!r} holds exactly the imported file's {len(self.sample_ids)} rows "
                f"(their order kept); --split and --limit do not apply"
            )
        labels, _ = self._by_protocol(protocol)
        out = []
        for i, sid in enumerate(self.sample_ids):
            groups = {"sample": sid}
            for col, vals in self.columns.items():
                groups[col] = vals[i] or f"sample:{sid}"  # a missing group value groups the sample alone
            out.append(Sample(sid, self.texts[i], {a: v[i] for a, v in labels.items()}, groups, meta={"row": i}))
        return out

    def attributes(self, protocol: str) -> dict[str, Attribute]:
        labels, vocab = self._by_protocol(protocol)
        out = {}
        for attr, col in self.attr_columns.items():
            group = self.group_of[attr]
            if attr == "lexical":
                a = lexical_attribute(labels[attr], vocab, protocol, "The word is", group, col)
                a.label_rule = {p: f"{LEXICAL_RULES[p]} (of the file's {col!r} column)" for p in LEXICAL_RULES}
                out[attr] = a
                continue
            classes = ordered_classes(labels[attr])
            if not classes:
                continue
            out[attr] = Attribute(
                attr,
                classes,
                {c: [c] for c in classes},
                "The answer is",
                group_key=group,
                description=f"imported from the file's {col!r} column; grouped by {group}",
                label_rule={p: r.format(col=col) for p, r in RULES.items()},
            )
        return out
