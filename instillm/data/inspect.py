"""Data inspector: what the model will actually see and which tokens are trained."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.text import Text

from instillm.data.pack import packing_efficiency
from instillm.data.render import IGNORE_INDEX, Rendered, Renderer
from instillm.data.schema import Example
from instillm.errors import DataError

JSON_KEYS = (
    "n_examples",
    "n_tokens",
    "trained_token_fraction",
    "truncated",
    "dropped",
    "length_p50",
    "length_p95",
    "length_max",
    "packing_efficiency",
)


@dataclass
class InspectStats:
    """Token statistics of a rendered dataset at one max_length."""

    n_examples: int
    n_tokens: int
    n_trained_tokens: int
    trained_token_fraction: float
    truncated: int
    dropped: int
    dropped_by_reason: dict[str, int]
    length_p50: float
    length_p95: float
    length_max: int
    packing_efficiency: float
    max_length: int
    histogram: dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON summary printed by `instillm data inspect --json`."""
        d = asdict(self)
        return {k: d[k] for k in JSON_KEYS}


def compute_stats(
    rendered: list[Rendered], n_examples: int, dropped: dict[str, int], truncated: int, max_length: int, bins: int = 10
) -> InspectStats:
    """Summarise rendered examples: lengths, trained fraction, packing efficiency."""
    lengths = np.array([len(r) for r in rendered], dtype=np.int64)
    n_tokens = int(lengths.sum()) if len(lengths) else 0
    n_trained = sum(r.n_trained for r in rendered)
    empty = (np.zeros(0), np.zeros(0))
    counts, edges = np.histogram(lengths, bins=bins, range=(0, max_length)) if len(lengths) else empty
    return InspectStats(
        n_examples=n_examples,
        n_tokens=n_tokens,
        n_trained_tokens=n_trained,
        trained_token_fraction=n_trained / n_tokens if n_tokens else 0.0,
        truncated=truncated,
        dropped=sum(dropped.values()),
        dropped_by_reason=dict(dropped),
        length_p50=float(np.percentile(lengths, 50)) if len(lengths) else 0.0,
        length_p95=float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
        length_max=int(lengths.max()) if len(lengths) else 0,
        packing_efficiency=packing_efficiency(lengths.tolist(), max_length),
        max_length=max_length,
        histogram={"edges": [int(e) for e in edges], "counts": [int(c) for c in counts]},
    )


def inspect_examples(
    examples: Iterable[Example], renderer: Renderer, progress: Callable[[], None] | None = None
) -> tuple[InspectStats, list[Rendered]]:
    """Render every example with the training renderer and compute InspectStats."""
    rendered, rs = renderer.render_many(examples, progress=progress)
    if rs.n_examples == 0:
        raise DataError("no examples to inspect: the data file holds no rows")
    stats = compute_stats(rendered, rs.n_examples, rs.dropped, rs.truncated, renderer.config.max_length)
    return stats, rendered


def highlight(rendered: Rendered, tokenizer: Any) -> Text:
    """Decoded text with trained tokens in bold green and masked tokens dimmed."""
    text = Text()
    ids, labels = rendered.input_ids, rendered.labels
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            piece = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            trained = labels[start] != IGNORE_INDEX
            text.append(piece, style="bold green" if trained else "dim")
            start = i
    return text
