"""Log-likelihood of chosen tokens of token sequences, batched: the scorer behind rank classification.

A request is `(input_ids, labels)` in the layout `Renderer.render` produces: `labels[t]` is
`input_ids[t]` where token t is scored and -100 elsewhere. Token t is scored by the log-probability
the model gives it from tokens < t, so the score of a request is
`sum_t log p(input_ids[t] | input_ids[:t])` over scored t, in nats, computed in fp32.

Both the zero-shot option ranker (`instillm.evaluate.zeroshot`) and the lm-evaluation-harness
adapter (`instillm.evaluate.lm_eval_adapter`) score through `score_requests`; they differ only in
how they tokenize (chat-rendered prompt + option, or lm-eval's raw context + continuation).

How: requests are sorted by length and batched with right padding, so a real token never attends
to a pad (causal attention) and default position ids are right. The decoder gives hidden states
(B, L, H); only the scored positions are projected by the LM head (as the training loss does), so
no (B, L, vocab) logits tensor is built. Sequences longer than `max_length` lose tokens from the
left (the scored tokens and at least one token before them are kept), as lm-eval does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from instillm.config import check_min_int
from instillm.data.render import IGNORE_INDEX
from instillm.errors import ConfigError, DataError

VOCAB_CHUNK = 1024  # scored positions projected to the vocabulary at once


@dataclass(frozen=True)
class ScoreRequest:
    """Token ids and their labels (-100: context, not scored; else the id itself: scored)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @classmethod
    def continuation(cls, context: Sequence[int], continuation: Sequence[int]) -> ScoreRequest:
        """Score `continuation` given `context` (the lm-eval layout)."""
        ids = tuple(int(x) for x in (*context, *continuation))
        return cls(ids, (IGNORE_INDEX,) * len(context) + tuple(int(x) for x in continuation))


@dataclass(frozen=True)
class TokenScore:
    """Summed log-probability (nats) of the scored tokens, their count, whether each was the argmax."""

    logprob: float
    n_tokens: int
    greedy: bool
    truncated: bool = False

    @property
    def mean_logprob(self) -> float:
        """Length-normalized score: log-probability per scored token."""
        return self.logprob / self.n_tokens


def _fit(req: ScoreRequest, max_length: int | None, index: int) -> tuple[list[int], list[int], bool]:
    """Ids and labels of one request, left-truncated to max_length; DataError when it cannot fit."""
    ids, labels = list(req.input_ids), list(req.labels)
    if len(ids) != len(labels):
        raise DataError(f"score request {index}: {len(ids)} input ids but {len(labels)} labels")
    scored = [t for t, y in enumerate(labels) if y != IGNORE_INDEX]
    if not scored or scored[0] == 0:
        raise DataError(f"score request {index}: needs ≥1 scored token after ≥1 context token")
    if any(labels[t] != ids[t] for t in scored):
        raise DataError(f"score request {index}: labels must equal input_ids where scored")
    if max_length is None or len(ids) <= max_length:
        return ids, labels, False
    cut = len(ids) - max_length
    if cut >= scored[0]:
        raise DataError(
            f"score request {index}: {len(ids) - scored[0]} scored tokens do not fit in max_length "
            f"{max_length} with context; raise max_length"
        )
    return ids[cut:], labels[cut:], True


def score_requests(
    model: Any, requests: Sequence[ScoreRequest], batch_size: int = 16, max_length: int | None = None, pad_id: int = 0
) -> list[TokenScore]:
    """Log-likelihood of each request's scored tokens, in input order (batched by length)."""
    from instillm.train.loss import split_causal_lm

    problems: list[str] = []
    check_min_int(problems, "batch_size", batch_size)
    if problems:
        raise ConfigError(problems[0])
    fitted = [_fit(r, max_length, i) for i, r in enumerate(requests)]
    order = sorted(range(len(fitted)), key=lambda i: len(fitted[i][0]))
    decoder, head = split_causal_lm(model)
    device = next(model.parameters()).device
    out: list[TokenScore | None] = [None] * len(fitted)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                scores = _score_batch(decoder, head, [fitted[i] for i in idx], pad_id, device)
                for i, s in zip(idx, scores):
                    out[i] = s
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _score_batch(
    decoder: Any, head: Any, rows: list[tuple[list[int], list[int], bool]], pad_id: int, device: torch.device
) -> list[TokenScore]:
    """One right-padded forward pass; scores of each row."""
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y, _) in enumerate(rows):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, L, H)
    targets = labels[:, 1:]  # (B, L-1): position t-1 predicts token t
    keep = targets != IGNORE_INDEX
    h, t = hidden[:, :-1][keep], targets[keep]  # (N, H), (N,): N scored tokens
    picked_parts, is_max_parts = [], []
    for hc, tc in zip(h.split(VOCAB_CHUNK), t.split(VOCAB_CHUNK)):  # bounds the (chunk, vocab) logits
        logp = torch.log_softmax(head(hc).float(), dim=-1)
        picked_parts.append(logp.gather(1, tc.unsqueeze(1)).squeeze(1))
        is_max_parts.append(logp.argmax(dim=-1) == tc)
    picked, is_max = torch.cat(picked_parts), torch.cat(is_max_parts)  # (N,), (N,)
    counts = keep.sum(dim=1).tolist()
    result, start = [], 0
    for (_, _, truncated), n in zip(rows, counts):
        result.append(
            TokenScore(float(picked[start : start + n].sum()), n, bool(is_max[start : start + n].all()), truncated)
        )
        start += n
    return result
