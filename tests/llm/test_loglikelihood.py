"""The batched scorer equals a hand computation: one unpadded forward, log-softmax, summed picks."""

from __future__ import annotations

import pytest
import torch

from instillm.errors import DataError
from instillm.llm.loglikelihood import ScoreRequest, score_requests


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from instillm.models.loading import load_model

    torch.set_num_threads(1)
    return load_model(tiny_model_dir)


def hand_logprob(model, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, from one forward pass without padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (L, vocab)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_batched_scores_equal_hand_computation(tiny_model, tiny_tokenizer):
    texts = [
        ("The answer is", " yes"),
        ("Q: what colour is the sky?\nA:", " blue and grey"),
        ("x", " y z w v"),
        ("A much longer context, with several more words in it than the others", "."),
    ]
    reqs = []
    for ctx, cont in texts:
        c = tiny_tokenizer(ctx, add_special_tokens=False)["input_ids"]
        k = tiny_tokenizer(cont, add_special_tokens=False)["input_ids"]
        reqs.append(ScoreRequest.continuation(c, k))
    scores = score_requests(tiny_model, reqs, batch_size=3, pad_id=tiny_tokenizer.pad_token_id)
    for r, s in zip(reqs, scores):
        start = r.labels.index(next(y for y in r.labels if y != -100))
        assert s.n_tokens == len(r.input_ids) - start
        assert s.logprob == pytest.approx(hand_logprob(tiny_model, list(r.input_ids), start), abs=1e-5)
        assert s.logprob < 0 and not s.truncated


def test_greedy_flag(tiny_model, tiny_tokenizer):
    ctx = tiny_tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(3):  # greedy continuation by hand
            ids.append(int(tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = ScoreRequest.continuation(ctx, ids[len(ctx) :])
    other = ScoreRequest.continuation(ctx, [ids[len(ctx)] + 1, *ids[len(ctx) + 1 :]])
    a, b = score_requests(tiny_model, [greedy, other])
    assert a.greedy and not b.greedy


def test_left_truncation_keeps_scored_tokens(tiny_model):
    ids = list(range(5, 25))
    req = ScoreRequest.continuation(ids[:17], ids[17:])
    (s,) = score_requests(tiny_model, [req], max_length=8)
    assert s.truncated and s.n_tokens == 3
    assert s.logprob == pytest.approx(hand_logprob(tiny_model, ids[-8:], 5), abs=1e-5)
    with pytest.raises(DataError, match="max_length 3"):
        score_requests(tiny_model, [req], max_length=3)


def test_bad_requests_are_named(tiny_model):
    with pytest.raises(DataError, match="request 1: needs"):
        score_requests(tiny_model, [ScoreRequest.continuation([5], [6]), ScoreRequest((5, 6), (-100, -100))])
    with pytest.raises(DataError, match="request 0: labels must equal"):
        score_requests(tiny_model, [ScoreRequest((5, 6), (-100, 7))])
