"""GQA (Hudson & Manning 2019): compositional questions about Visual Genome images.

Layout: `images/{imageId}.jpg` and `{split}_balanced_questions.json` (in the root or in
`questions1.2/`); option `questions=FILE` points at another question file (e.g.
`val_all_questions.json`). Each question is one sample (`sample_id` = question id), grouped
by its image so an image's questions stay on one side of a split.

The question is the sample's text and is shown to the model (`Sample.meta['question']`),
unlike the reference, whose prompt stayed "Describe this image." while `answer` was probed.
Attributes: `answer` (the short answer string) and `question_type` (GQA's structural type:
verify, query, choose, logical, compare). Both choices are mch's: the reference's GQA loader
is missing and it never ran GQA.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from mch.api import Attribute, MchError, Param

from ._corpus import Corpus, Record, ordered_classes, read_json
from ._media import read_image

TYPE_VERBALIZERS = {
    "verify": ["a yes/no question", "a verification question"],
    "query": ["an open question", "a what question"],
    "choose": ["a choice question", "an either-or question"],
    "logical": ["a logical question", "an and/or question"],
    "compare": ["a comparison question", "a comparative question"],
}


class GQA(Corpus):
    name = "gqa"
    modality = "vision"
    option_specs = {
        **Corpus.option_specs,
        "questions": Param(str, help="another question file, e.g. val_all_questions.json"),
    }
    layout = "a GQA directory holding images/*.jpg and {split}_balanced_questions.json (or questions1.2/)"
    default_split = "val"
    stratify = "question_type"

    def _find_root(self, path: Path) -> Path:
        if (path / "images").is_dir():
            return path
        raise MchError(f"dataset {self.data_name!r}: no images/ directory in {path}; expected {self.layout}")

    def _default_split(self) -> str | None:
        """val, or the only split whose balanced question file is present."""
        root = self.root()
        files = list(root.glob("*_balanced_questions.json")) + list(root.glob("questions1.2/*_balanced_questions.json"))
        have = sorted({p.name[: -len("_balanced_questions.json")] for p in files})
        return self.default_split if self.default_split in have or len(have) != 1 else have[0]

    def _questions_file(self, split: str) -> Path:
        if self.options.get("questions"):
            return Path(self.options["questions"]).expanduser()
        root = self.root()
        for cand in (
            root / f"{split}_balanced_questions.json",
            root / "questions1.2" / f"{split}_balanced_questions.json",
        ):
            if cand.is_file():
                return cand
        raise MchError(
            f"dataset {self.data_name!r}: no {split}_balanced_questions.json in {root} or "
            f"{root / 'questions1.2'}; expected {self.layout}"
        )

    def _scan(self, split: str | None, protocol: str) -> list[Record]:
        qfile = self._questions_file(split or "val")
        questions = read_json(qfile, f"dataset {self.data_name!r}: question file")
        if not isinstance(questions, dict):
            raise MchError(f"dataset {self.data_name!r}: {qfile} must map question ids to questions")
        img_dir = self.root() / "images"
        records = []
        for qid in sorted(questions, key=lambda q: (len(q), q)):
            q = questions[qid]
            if not isinstance(q, dict):
                continue
            image = str(q.get("imageId", ""))
            path = img_dir / f"{image}.jpg"
            question = str(q.get("question", "")).strip()
            answer = str(q.get("answer", "") or "").strip()
            qtype = str((q.get("types") or {}).get("structural", "") or "")
            rec = Record(
                str(qid),
                question,
                {"answer": answer, "question_type": qtype},
                {"image": image, "question": str(qid)},
                partial(read_image, path, str(qid)),
                path=str(path),
                meta={"question": question, "image_id": image, "full_answer": q.get("fullAnswer", "")},
            )
            if not image:
                rec.fail(f"it has no imageId in {qfile.name}")
            elif not question:
                rec.fail(f"it has no question text in {qfile.name}")
            elif not answer:
                rec.fail(f"it has no answer in {qfile.name}")
            records.append(rec)
        if not records:
            raise MchError(f"dataset {self.data_name!r}: {qfile} holds no questions")
        return records

    def _declare(self, records: list[Record], protocol: str) -> dict[str, Attribute]:
        ok = [r for r in records if r.error is None]
        answers = ordered_classes(r.labels["answer"] for r in ok)
        types = ordered_classes((r.labels["question_type"] for r in ok), list(TYPE_VERBALIZERS))
        rule_a = "the question's short answer string; one sample per question, grouped by image"
        rule_t = "GQA structural question type (types.structural)"
        return {
            "answer": Attribute(
                "answer",
                answers,
                {a: [a] for a in answers},
                "The answer is",
                group_key="image",
                description="answer to the question shown with the image",
                label_rule={"default": rule_a, "paper": rule_a},
            ),
            "question_type": Attribute(
                "question_type",
                types,
                {t: TYPE_VERBALIZERS.get(t, [t]) for t in types},
                "The question is",
                group_key="image",
                text_describable=True,
                description="structural type of the question",
                label_rule={"default": rule_t, "paper": rule_t},
            ),
        }
