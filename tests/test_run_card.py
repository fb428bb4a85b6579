"""`instillm run`'s data card: near-duplicate clusters and overlap with the run's own eval splits, where the
skills suite's shared phrasings (template text) are not overlap and an eval example copied into training is."""

from __future__ import annotations

from pathlib import Path

import pytest

from instillm.curate.decontaminate import EvalIndex
from instillm.data.importer import read_examples, write_examples
from instillm.data.skills import SuiteConfig, build_suite, write_suite
from instillm.run import load_eval_splits, training_data_card

FAMILIES = ("even_odd", "sign", "larger_number", "word_add", "word_multiply", "extract_number")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The quickstart's kind of data, small: trained and held-out families, 150 training inputs per family."""
    config = SuiteConfig(
        seed=0, n_train_per_family=150, n_eval_per_family=20, families=FAMILIES, heldout_families=("extract_number",)
    )
    return write_suite(build_suite(config), tmp_path_factory.mktemp("suite"))


def eval_splits(paths: dict[str, Path]) -> dict[str, list]:
    return load_eval_splits({k: p for k, p in paths.items() if k != "train"}, None)


def test_the_suites_shared_phrasings_are_not_overlap(suite):
    splits = eval_splits(suite)
    plain = EvalIndex()
    for name, examples in splits.items():
        plain.add_examples(name, examples)
    train = list(read_examples(suite["train"]))
    assert sum(plain.find_example(ex) is not None for ex in train) > 20  # plain 13-grams: template text
    card = training_data_card([suite["train"]], splits)
    ov, nd = card["eval_overlap"], card["near_duplicates"]
    assert ov["n_rows"] == 0 and ov["by_set"] == {} and nd is not None
    assert [name for name, _ in ov["eval_sets"]] == ["heldout_instances", "heldout_phrasings", "heldout_families"]
    assert "5-token window found in more than 7 of the 750 rows (max(5, 1% of the rows))" in ov["rule"]


def test_an_eval_example_copied_into_training_is_overlap(suite, tmp_path):
    splits = eval_splits(suite)
    leaked = splits["heldout_instances"][3]
    train = write_examples([*read_examples(suite["train"]), leaked], tmp_path / "train.jsonl")
    card = training_data_card([train], splits)
    [row] = card["eval_overlap"]["rows"]
    assert (row["id"], row["row"], row["eval_set"]) == (leaked.id, 751, "heldout_instances")
    assert row["match"].startswith("same prompt: ")


def test_without_eval_splits_the_card_still_clusters_near_duplicates(suite):
    card = training_data_card([suite["train"]], {})
    assert card["eval_overlap"] is None and card["near_duplicates"]["n_rows"] >= 0
