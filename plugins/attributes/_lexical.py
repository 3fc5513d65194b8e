"""Lexical labels: the "first top-k word" of each sample's text, per protocol.

The paper's rule tokenizes with [a-z]+ and keeps stop words; the default rule keeps
contractions whole and removes `_stop_words.STOP_WORDS`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from mch.api import Attribute

from ._corpus import majority, ordered_classes
from ._stop_words import STOP_WORDS

_PAPER_TOKEN = re.compile(r"[a-z]+")
_CONTENT_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*")
LEXICAL_TOP_K = 50


def paper_tokens(text: str) -> list[str]:
    """The reference's tokens: lower-case, regex [a-z]+ ("don't" -> "don", "t")."""
    return _PAPER_TOKEN.findall(text.lower())


def content_tokens(text: str) -> list[str]:
    """Default tokens: contractions kept whole, possessive 's dropped, stop words removed."""
    out = []
    for tok in _CONTENT_TOKEN.findall(text.lower().replace("\u2019", "'")):
        if tok.endswith("'s") and tok not in STOP_WORDS:
            tok = tok[:-2]
        if tok in STOP_WORDS or len(tok) < 2:
            continue
        out.append(tok)
    return out


def first_top_k_labels(
    texts: Sequence[str], tokenize: Callable[[str], list[str]], k: int = LEXICAL_TOP_K
) -> tuple[list[str], list[str]]:
    """The "first top-k word" rule: count tokens over all texts, keep the k most frequent
    (ties in first-seen order, as Counter.most_common), label each text with its first token
    in that set ("" when none). Returns (labels, vocabulary in rank order)."""
    tokens = [tokenize(t) for t in texts]
    counts: Counter[str] = Counter()
    for toks in tokens:
        counts.update(toks)
    vocab = [w for w, _ in counts.most_common(k)]
    top = set(vocab)
    labels = [next((w for w in toks if w in top), "") for toks in tokens]
    return labels, vocab


def lexical_labels(texts: Sequence[str], protocol: str) -> tuple[list[str], list[str]]:
    tokenize = paper_tokens if protocol == "paper" else content_tokens
    return first_top_k_labels(texts, tokenize)


LEXICAL_RULES = {
    "paper": (
        "first top-50 word (reference script 03): lower-case, tokens [a-z]+, the 50 most frequent "
        "tokens over the whole split (ties in first-seen order), label = first token of the text "
        "in that set; no stop-word removal"
    ),
    "default": (
        "first top-50 content word: lower-case, tokens [a-z]+('[a-z]+)*, possessive 's dropped, "
        "mch's English stop-word list removed, the 50 most frequent content words over the whole "
        "split (ties in first-seen order), label = first content word of the text in that set"
    ),
}


def lexical_attribute(
    labels: Sequence[str], vocab: Sequence[str], protocol: str, query: str, group_key: str, what: str
) -> Attribute:
    classes = ordered_classes(labels, vocab)
    maj, rate = majority(labels)
    n_lab = sum(1 for x in labels if x)
    desc = (
        f"first top-50 {'word' if protocol == 'paper' else 'content word'} of the {what}; "
        f"{len(classes)} classes over {n_lab} labelled samples of the split, majority class "
        f"{maj!r} = {rate:.1%}"
    )
    return Attribute(
        name="lexical",
        classes=classes,
        verbalizers={c: [c] for c in classes},
        query=query,
        group_key=group_key,
        text_describable=True,
        description=desc,
        label_rule=dict(LEXICAL_RULES),
    )
