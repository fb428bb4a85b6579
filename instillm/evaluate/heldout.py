"""Held-out evaluation: generate answers to unseen instructions and score them per task and category.

Every example is scored three ways: SuperNI exact match against the reference, ROUGE-L F
(stemmed, as SuperNI scores generation tasks), and — for the built-in skills suite — the task
family's own checker, which accepts equivalent forms (e.g. JSON with other spacing). `correct`
is the checker's verdict where there is one, else exact match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from instillm.data.schema import Example
from instillm.llm.backend import reply_text
from instillm.metrics import exact_match, max_rouge_l

Checker = Callable[[Example, str], "bool | None"]
N_SAMPLES = 5  # sample predictions kept per task in results.json


@dataclass(frozen=True)
class Scored:
    """One example's prediction and scores."""

    id: str
    task: str
    category: str
    prompt: str
    reference: str
    prediction: str
    exact_match: float
    rouge_l: float
    correct: float


@dataclass
class Aggregate:
    """Mean scores over a group of examples."""

    n: int = 0
    exact_match: float = 0.0
    rouge_l: float = 0.0
    correct: float = 0.0


@dataclass
class SplitResult:
    """Scores of one evaluation split: overall, per task, per category, and samples."""

    overall: Aggregate
    per_task: dict[str, Aggregate]
    per_category: dict[str, Aggregate]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what results.json stores for a split)."""
        return {
            **asdict(self.overall),
            "per_task": {k: asdict(v) for k, v in sorted(self.per_task.items())},
            "per_category": {k: asdict(v) for k, v in sorted(self.per_category.items())},
            "samples": self.samples,
        }


def score_example(example: Example, prediction: str, checker: Checker | None = None) -> Scored:
    """Score one prediction against the example's final assistant turn."""
    ref = example.reference
    em = exact_match(prediction, ref)
    verdict = checker(example, prediction) if checker is not None else None
    return Scored(
        id=example.id,
        task=example.task or "(none)",
        category=example.category or "(none)",
        prompt=example.messages[-2].content,
        reference=ref,
        prediction=prediction,
        exact_match=em,
        rouge_l=max_rouge_l(prediction, ref),
        correct=float(verdict) if verdict is not None else em,
    )


def _mean(items: Sequence[Scored]) -> Aggregate:
    n = len(items)
    if not n:
        return Aggregate()
    return Aggregate(
        n=n,
        exact_match=sum(s.exact_match for s in items) / n,
        rouge_l=sum(s.rouge_l for s in items) / n,
        correct=sum(s.correct for s in items) / n,
    )


def aggregate(scored: Sequence[Scored], n_samples: int = N_SAMPLES) -> SplitResult:
    """Group scores per task and category; keep failures first among the sample predictions."""
    by_task: dict[str, list[Scored]] = defaultdict(list)
    by_cat: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        by_task[s.task].append(s)
        by_cat[s.category].append(s)
    samples = {
        task: [asdict(s) for s in sorted(items, key=lambda s: s.correct)[:n_samples]] for task, items in by_task.items()
    }
    return SplitResult(
        overall=_mean(scored),
        per_task={k: _mean(v) for k, v in by_task.items()},
        per_category={k: _mean(v) for k, v in by_cat.items()},
        samples=samples,
    )


def evaluate_predictions(
    examples: Sequence[Example], predictions: Sequence[str], checker: Checker | None = None
) -> SplitResult:
    """Score given predictions (one per example, same order)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    return aggregate([score_example(e, p, checker) for e, p in zip(examples, predictions)])


def suite_checker(example: Example, prediction: str) -> bool | None:
    """The skills-suite family checker for suite examples; None for any other data."""
    from instillm.data.skills import FAMILIES, check

    if example.meta.get("family") not in FAMILIES:
        return None
    return check(example, prediction)


def predict(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    renderer: Any,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to each example's prompt (everything before its last turn), in order."""
    from instillm.llm.generation import GenerateOptions, Generator

    gen = Generator(model, tokenizer, renderer)
    opts = GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    prompts = [renderer.example_prompt_text(e) for e in examples]
    preds: list[str] = []
    chunk = max(batch_size * 4, 1)  # progress granularity; the generator buckets inside a chunk
    for i in range(0, len(prompts), chunk):
        preds += [reply_text(o) for o in gen.generate_texts(prompts[i : i + chunk], opts)]
        if progress:
            progress(len(prompts[i : i + chunk]))
    return preds


def evaluate_model(
    model: Any,
    tokenizer: Any,
    splits: Mapping[str, Sequence[Example]],
    renderer: Any,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[str, SplitResult]:
    """Generate and score every split; skills-suite examples are also judged by their family checker."""
    return {
        name: evaluate_predictions(
            examples,
            predict(model, tokenizer, examples, renderer, max_new_tokens, batch_size, progress),
            checker=suite_checker,
        )
        for name, examples in splits.items()
    }
