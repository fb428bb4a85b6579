"""T0 cluster map: every real template file has a known dataset and cluster; splits are disjoint and complete."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instillm.data.importer import read_examples
from instillm.errors import ConfigError, DataError
from instillm.evaluate.t0_clusters import (
    CLUSTERS,
    DATASET_CLUSTERS,
    UNKNOWN,
    describe,
    parse_clusters,
    parse_template_name,
    split_clusters,
    template_files,
    write_cluster_split,
)

# The 37 datasets (with subsets) of the shared T0 training-mixture sample and their clusters.
EXPECTED_DATASETS = {
    "adversarial_qa_dbert",
    "adversarial_qa_dbidaf",
    "adversarial_qa_droberta",
    "ag_news",
    "amazon_polarity",
    "app_reviews",
    "cnn_dailymail_3_0_0",
    "common_gen",
    "commonsense_qa",
    "cosmos_qa",
    "dbpedia_14",
    "dream",
    "duorc_ParaphraseRC",
    "duorc_SelfRC",
    "gigaword",
    "glue_mrpc",
    "glue_qqp",
    "imdb",
    "kilt_tasks_hotpotqa",
    "multi_news",
    "paws_labeled_final",
    "qasc",
    "quarel",
    "quartz",
    "quoref",
    "ropes",
    "rotten_tomatoes",
    "samsum",
    "sciq",
    "social_i_qa",
    "trec",
    "wiki_bio",
    "wiki_hop_original",
    "wiki_qa",
    "wiqa",
    "xsum",
    "yelp_review_full",
}


@pytest.fixture(scope="module")
def t0_dir(shared_data: Path) -> Path:
    return shared_data / "t0_multitask"


@pytest.mark.parametrize(
    "stem, dataset, template",
    [
        ("cnn_dailymail_3_0_0_2_or_3_sentences", "cnn_dailymail_3_0_0", "2_or_3_sentences"),
        ("duorc_SelfRC_title_generation", "duorc_SelfRC", "title_generation"),
        ("adversarial_qa_dbidaf_based_on", "adversarial_qa_dbidaf", "based_on"),
        ("wiki_hop_original_generate_object", "wiki_hop_original", "generate_object"),
        ("wiki_qa_exercise", "wiki_qa", "exercise"),
        ("glue_qqp_answer", "glue_qqp", "answer"),
        ("paws_labeled_final_Meaning_no_label", "paws_labeled_final", "Meaning_no_label"),
        ("my_new_task_v2", "my_new_task_v2", ""),  # unknown: its own dataset
    ],
)
def test_parse_template_name(stem: str, dataset: str, template: str):
    assert parse_template_name(stem) == (dataset, template)


def test_every_real_file_has_a_known_cluster(t0_dir: Path):
    files = template_files(t0_dir)
    assert len(files) == 294
    assert [f.template for f in files if f.cluster == UNKNOWN] == []
    assert {f.dataset for f in files} == EXPECTED_DATASETS
    counts = Counter(f.cluster for f in files)
    assert counts == {
        "multiple_choice_qa": 72,
        "extractive_qa": 56,
        "sentiment": 41,
        "summarization": 41,
        "topic_classification": 29,
        "paraphrase_identification": 25,
        "closed_book_qa": 16,
        "structure_to_text": 14,
    }
    assert describe(t0_dir / "yelp_review_full_on_a_scale.jsonl").cluster == "sentiment"
    assert describe(t0_dir / "kilt_tasks_hotpotqa_final_exam.jsonl").cluster == "closed_book_qa"


def test_unknown_files_are_kept_in_the_unknown_cluster(tmp_path: Path):
    f = tmp_path / "brand_new_dataset_some_prompt.jsonl"
    f.write_text('{"prompt": "p", "completion": "c"}\n')
    (d,) = template_files([f])
    assert (d.dataset, d.cluster) == ("brand_new_dataset_some_prompt", UNKNOWN)
    assert set(DATASET_CLUSTERS.values()) | {UNKNOWN} == set(CLUSTERS)


def test_split_clusters_is_disjoint_and_complete(t0_dir: Path):
    files = template_files(t0_dir)
    train, held = split_clusters(files, "sentiment, paraphrase_identification")
    assert {f.cluster for f in held} == {"sentiment", "paraphrase_identification"}
    assert not {f.cluster for f in train} & {"sentiment", "paraphrase_identification"}
    assert sorted(f.template for f in train + held) == sorted(f.template for f in files)
    assert len(held) == 41 + 25


def test_split_errors_name_the_setting(t0_dir: Path):
    files = template_files(t0_dir)
    with pytest.raises(ConfigError, match=r"heldout_clusters: \['sentimental'\] unknown"):
        split_clusters(files, "sentimental")
    with pytest.raises(DataError, match="no template file is in"):
        split_clusters(files, "word_sense")
    with pytest.raises(DataError, match="nothing to train on"):
        split_clusters(files, ",".join(sorted({f.cluster for f in files})))
    assert parse_clusters(["sentiment", "sentiment"]) == ("sentiment",)
    with pytest.raises(DataError, match="not found"):
        template_files([t0_dir / "no_such_file.jsonl"])


def test_write_cluster_split_through_the_importer(t0_dir: Path, tmp_path: Path):
    names = ["glue_mrpc_equivalent", "ag_news_classify", "trec_trec1", "imdb_Reviewer_Enjoyment"]
    summaries = write_cluster_split([t0_dir / f"{n}.jsonl" for n in names], tmp_path, "topic_classification")
    train = list(read_examples(tmp_path / "train.jsonl"))
    held = list(read_examples(tmp_path / "heldout.jsonl"))
    assert {e.task for e in train} == {"glue_mrpc_equivalent", "imdb_Reviewer_Enjoyment"} and len(train) == 400
    assert {e.task for e in held} == {"ag_news_classify"} and len(held) == 200  # trec rows: empty completions
    assert summaries["heldout"].rejects_by_reason == {"empty_response": 200}
    assert {(e.category, e.meta["dataset"]) for e in held} == {("topic_classification", "ag_news")}
    assert {e.category for e in train} == {"paraphrase_identification", "sentiment"}
    assert not any("<|endoftext|>" in e.reference for e in train + held)
    rejects = [json.loads(line) for line in open(tmp_path / "heldout.rejects.jsonl")]
    assert {r["file"].rsplit("/", 1)[-1] for r in rejects} == {"trec_trec1.jsonl"}


def test_cli_t0_split(t0_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from instillm.cli import app

    src = tmp_path / "t0"
    src.mkdir()
    for n in ("glue_qqp_answer", "xsum_DOC_tldr"):
        (src / f"{n}.jsonl").write_bytes((t0_dir / f"{n}.jsonl").read_bytes())
    res = CliRunner().invoke(
        app, ["data", "t0-split", str(src), "--heldout-clusters", "summarization", "-o", str(tmp_path / "out")]
    )
    assert res.exit_code == 0, res.output
    assert {e.task for e in read_examples(tmp_path / "out" / "heldout.jsonl")} == {"xsum_DOC_tldr"}
    assert {e.task for e in read_examples(tmp_path / "out" / "train.jsonl")} == {"glue_qqp_answer"}
    bad = CliRunner().invoke(
        app, ["data", "t0-split", str(src), "--heldout-clusters", "nope", "-o", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and "heldout_clusters" in bad.output
