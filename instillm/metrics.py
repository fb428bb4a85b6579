"""Text metrics: SuperNI exact match and a fast ROUGE-L that equals `rouge-score` exactly.

ROUGE-L here tokenizes like `rouge-score`'s default tokenizer (lowercase, every run of
characters outside [a-z0-9] is a separator, optional Porter stemming of tokens longer than 3
characters) and computes the longest common subsequence with a bit-parallel algorithm
(Allison-Dix / Hyyrö): one Python big-int operation per token of the second text instead of a
Python-level DP table, so it is exact and far faster. Precision, recall and F are computed with
the same float operations as `rouge-score`, so threshold decisions agree bit for bit.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SuperNI normalization: lowercase, strip ASCII punctuation, collapse whitespace."""
    return " ".join(text.lower().translate(_PUNCT).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized reference, else 0.0."""
    refs = [references] if isinstance(references, str) else references
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter  # what rouge-score uses; imported only when stemming is asked

    return porter.PorterStemmer()


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """Tokens exactly as `rouge_score.tokenize.tokenize` produces them."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if use_stemmer:
        stem = _stemmer().stem
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]
        tokens = [t for t in tokens if _NON_ALNUM.search(t) is None and t]
    return tokens


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a  # bits over the longer sequence, one step per token of the shorter
    if not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return lcs_from_masks(masks, len(a), b)


def lcs_from_masks(masks: dict, n: int, b: Iterable) -> int:
    """Hyyrö's recurrence: V' = (V + (V & M)) | (V & ~M); LCS = zero bits of V in n bits."""
    full = (1 << n) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


@dataclass(frozen=True)
class RougeScore:
    """ROUGE-L precision, recall and F-measure (rouge-score's Score fields)."""

    precision: float
    recall: float
    fmeasure: float


def rouge_l_tokens(target: Sequence[str], prediction: Sequence[str]) -> RougeScore:
    """ROUGE-L of token lists, with rouge-score's float operations and empty-input rule."""
    if not target or not prediction:
        return RougeScore(0, 0, 0)
    lcs = lcs_length(target, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeScore(precision, recall, f)


def rouge_l(target: str, prediction: str, use_stemmer: bool = False) -> RougeScore:
    """ROUGE-L between two strings; equals `RougeScorer(['rougeL']).score(target, prediction)`."""
    return rouge_l_tokens(rouge_tokenize(target, use_stemmer), rouge_tokenize(prediction, use_stemmer))


def max_rouge_l(prediction: str, references: str | Sequence[str], use_stemmer: bool = True) -> float:
    """Best ROUGE-L F over references (SuperNI scores generation tasks this way, with stemming)."""
    refs = [references] if isinstance(references, str) else references
    return max((rouge_l(r, prediction, use_stemmer).fmeasure for r in refs), default=0.0)
