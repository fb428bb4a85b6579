"""Zero-shot T0 evaluation: option inference, rank classification against a hand computation, medians."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from instillm.data.render import RenderConfig, Renderer
from instillm.data.schema import from_prompt_completion
from instillm.errors import ConfigError
from instillm.evaluate.t0_clusters import template_files
from instillm.evaluate.zeroshot import (
    CLASSIFICATION,
    GENERATION,
    ZeroShotConfig,
    aggregate,
    infer_options,
    pick,
    rank_options,
    read_template,
)
from instillm.llm.loglikelihood import TokenScore


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from instillm.models.loading import load_model

    torch.set_num_threads(1)
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def real_templates(shared_data: Path):
    return {t.file.template: t for t in map(read_template, template_files(shared_data / "t0_multitask"))}


def hand_logprob(model, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one unpadded forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ option inference


def test_infer_options_rule():
    assert infer_options(["yes", "no", "no", "yes"]) == (
        ("no", "yes"),
        "2 distinct completions, each in ≥2 rows: classification",
    )
    assert infer_options(["a"] * 5)[0] is None  # nothing to rank against
    assert infer_options(["a", "a", "b"])[0] is None  # an option seen once
    many = [str(i) for i in range(11)] * 3
    assert infer_options(many)[0] is None and infer_options(many, max_options=11)[0] is not None


def test_detection_on_the_real_files(real_templates):
    kinds = Counter(t.kind for t in real_templates.values() if t.examples)
    assert kinds == {CLASSIFICATION: 66, GENERATION: 210}
    assert sum(1 for t in real_templates.values() if not t.examples) == 18  # the trec files
    cls = {name: t.options for name, t in real_templates.items() if t.kind == CLASSIFICATION}
    assert cls["glue_mrpc_equivalent"] == ("equivalent", "not equivalent")
    assert cls["yelp_review_full_format_star"] == ("1 star", "2 stars", "3 stars", "4 stars", "5 stars")
    assert cls["cosmos_qa_no_prompt_id"] == ("A", "B", "C", "D")
    assert cls["app_reviews_convert_to_star_rating"] == ("★", "★★", "★★★", "★★★★", "★★★★★")
    for name in (
        "gigaword_TLDR",
        "xsum_DOC_tldr",
        "quarel_choose_between",
        "duorc_SelfRC_title_generation",
        "wiki_qa_Topic_Prediction_Answer_Only",
        "imdb_Reviewer_Enjoyment",
    ):
        assert real_templates[name].kind == GENERATION, name
    assert "1 distinct" in real_templates["imdb_Reviewer_Enjoyment"].why
    assert real_templates["trec_trec1"].rejected == {"empty_response": 200}


# ------------------------------------------------------------------ rank classification


def test_option_scores_equal_hand_computation_chatml(tiny_model, tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer)  # the tiny model's chatml template, as training renders
    ex = from_prompt_completion("Are these sentences equivalent?\nA: it rains.\nB: rain falls.\n", "equivalent")
    options = ("equivalent", "not equivalent", "maybe, hard to say")
    (row,) = rank_options(tiny_model, renderer, [ex], options, batch_size=2)
    prompt_ids = encode(tiny_tokenizer, renderer.example_prompt_text(ex))
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for opt, score in zip(options, row):
        opt_ids = encode(tiny_tokenizer, opt) + [end]  # option tokens and the end of turn, as trained
        assert score.n_tokens == len(opt_ids) and (opt == "equivalent" or len(opt_ids) > 3)
        expected = hand_logprob(tiny_model, prompt_ids + opt_ids, len(prompt_ids))
        assert score.logprob == pytest.approx(expected, abs=1e-5)


def test_merging_boundary_is_tokenized_apart_as_training_does(tiny_model, tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="plain"))  # prompt and option abut
    prompt, option = "The review is ", "positive"
    whole = encode(tiny_tokenizer, prompt + option)
    apart = encode(tiny_tokenizer, prompt) + encode(tiny_tokenizer, option)
    assert whole != apart  # " positive" is one token when tokenized together: it would straddle
    ex = from_prompt_completion(prompt, option)
    rendered = renderer.render(ex)  # what training sees for this pair
    prompt_ids = [tiny_tokenizer.bos_token_id] + encode(tiny_tokenizer, prompt)
    assert rendered.input_ids == prompt_ids + encode(tiny_tokenizer, option) + [tiny_tokenizer.eos_token_id]
    (row,) = rank_options(tiny_model, renderer, [ex], (option, "negative"))
    assert row[0].logprob == pytest.approx(hand_logprob(tiny_model, rendered.input_ids, len(prompt_ids)), abs=1e-5)


def test_pick_sum_or_length_normalized():
    scores = [TokenScore(-3.0, 1, False), TokenScore(-4.0, 4, False)]
    assert pick(scores) == 0 and pick(scores, length_normalize=True) == 1
    assert pick([TokenScore(-1.0, 1, False), TokenScore(-1.0, 1, False)]) == 0  # ties: first


# ------------------------------------------------------------------ aggregation


def _t(dataset, cluster, kind, value):
    return {
        "dataset": dataset,
        "cluster": cluster,
        "kind": kind,
        "accuracy" if kind == CLASSIFICATION else "rouge_l": value,
    }


def test_median_per_dataset_then_mean_per_cluster():
    templates = {
        "a1": _t("a", "sentiment", CLASSIFICATION, 0.1),
        "a2": _t("a", "sentiment", CLASSIFICATION, 0.9),
        "a3": _t("a", "sentiment", CLASSIFICATION, 0.4),
        "a4": _t("a", "sentiment", GENERATION, 0.2),
        "b1": _t("b", "sentiment", CLASSIFICATION, 0.3),
        "b2": _t("b", "sentiment", CLASSIFICATION, 0.6),
        "c1": _t("c", "summarization", GENERATION, 0.5),
    }
    agg = aggregate(templates)
    assert agg["datasets"]["a"]["accuracy"] == 0.4  # median of 0.1, 0.4, 0.9 (not the mean 0.467)
    assert agg["datasets"]["a"]["rouge_l"] == 0.2
    assert agg["datasets"]["b"]["accuracy"] == pytest.approx(0.45)  # even count: mean of the middle two
    assert agg["clusters"]["sentiment"]["accuracy"] == pytest.approx((0.4 + 0.45) / 2)
    assert agg["clusters"]["sentiment"]["rouge_l"] == 0.2  # b has no generation template
    assert agg["clusters"]["summarization"] == {"accuracy": None, "rouge_l": 0.5, "datasets": ["c"]}
    assert agg["overall"]["accuracy"] == pytest.approx((0.4 + 0.45) / 2)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="limit"):
        ZeroShotConfig(limit=0)
    with pytest.raises(ConfigError, match="max_options"):
        ZeroShotConfig(max_options=1)


# ------------------------------------------------------------------ end to end


def test_cli_zeroshot_on_real_templates(shared_data: Path, tiny_model_dir: Path, tmp_path: Path):
    from instillm.cli import app

    t0 = shared_data / "t0_multitask"
    names = ["glue_mrpc_equivalent", "yelp_review_full_format_score", "common_gen_Put_together", "trec_trec1"]
    args = [
        "eval",
        str(tiny_model_dir),
        "--suite",
        "zeroshot",
        "--limit",
        "5",
        "--max-new-tokens",
        "8",
        "-o",
        str(tmp_path / "results.json"),
    ]
    for n in names:
        args += ["--data", str(t0 / f"{n}.jsonl")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["suite"] == "zeroshot" and results["scoring"]["limit"] == 5
    t = results["templates"]
    assert set(t) == set(names[:3]) and set(results["skipped"]) == {"trec_trec1"}
    assert t["glue_mrpc_equivalent"]["kind"] == CLASSIFICATION and t["glue_mrpc_equivalent"]["n"] == 5
    assert 0 <= t["yelp_review_full_format_score"]["accuracy"] <= 1
    assert t["common_gen_Put_together"]["kind"] == GENERATION and 0 <= t["common_gen_Put_together"]["rouge_l"] <= 1
    assert set(results["clusters"]) == {"paraphrase_identification", "sentiment", "structure_to_text"}
    sample = t["glue_mrpc_equivalent"]["samples"][0]
    assert sample["prediction"] == max(sample["logprobs"], key=sample["logprobs"].get)
    assert "paraphrase_identification" in res.stdout
    bad = CliRunner().invoke(app, args[:4] + ["--data", str(t0), "--heldout-clusters", "nope"])
    assert bad.exit_code == 1 and "heldout_clusters" in bad.output
