"""T0 task clusters: which dataset (and so which task cluster) each prompt-template file belongs to.

Files of the T0 training mixture are named `<dataset>_<template>.jsonl`, where both parts may hold
underscores (`cnn_dailymail_3_0_0_tldr_summary`, `duorc_SelfRC_title_generation`). The dataset is
found as the longest known dataset prefix followed by `_`; the rest is the template name. A
"dataset" is a promptsource dataset with its subset (`adversarial_qa_dbert`, `glue_mrpc`), the
unit T0 reports medians over (it reports ANLI R1/R2/R3 apart, likewise).

`DATASET_CLUSTERS` is the grouping of Figure 2 of the T0 paper (Sanh et al., 2022, "Multitask
Prompted Training Enables Zero-Shot Task Generalization"): eight training clusters plus T0's four
held-out evaluation clusters (NLI, coreference, sentence completion, word sense), whose datasets
are not in `../shared/data/t0_multitask` but are listed so such files are recognised. A file
whose name starts with no known dataset is in the explicit cluster `unknown` (each such file is
its own dataset), never dropped.

Datasets found in ../shared/data/t0_multitask (294 files, 37 datasets): every key of the first
eight clusters below. Of its 18 `trec_*` files, 11 are empty and 7 hold only empty completions
(the importer rejects those rows), so `trec` contributes no scorable row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from instillm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from instillm.data.importer import ImportSummary
    from instillm.data.schema import Example

UNKNOWN = "unknown"

# cluster -> datasets (promptsource name with subset, as in the file names), from T0's Figure 2.
CLUSTER_DATASETS: dict[str, tuple[str, ...]] = {
    "multiple_choice_qa": (
        "commonsense_qa",
        "cosmos_qa",
        "dream",
        "qasc",
        "quail",
        "quarel",
        "quartz",
        "sciq",
        "social_i_qa",
        "wiki_hop_original",
        "wiqa",
    ),
    "extractive_qa": (
        "adversarial_qa_dbert",
        "adversarial_qa_dbidaf",
        "adversarial_qa_droberta",
        "duorc_ParaphraseRC",
        "duorc_SelfRC",
        "quoref",
        "ropes",
    ),
    "closed_book_qa": ("kilt_tasks_hotpotqa", "wiki_qa"),
    "structure_to_text": ("common_gen", "wiki_bio"),
    "sentiment": ("amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full"),
    "summarization": ("cnn_dailymail_3_0_0", "gigaword", "multi_news", "samsum", "xsum"),
    "topic_classification": ("ag_news", "dbpedia_14", "trec"),
    "paraphrase_identification": ("glue_mrpc", "glue_qqp", "paws_labeled_final"),
    # T0's held-out evaluation clusters (not in the shared training-mixture sample).
    "natural_language_inference": ("anli", "super_glue_cb", "super_glue_rte"),
    "coreference": ("super_glue_wsc.fixed", "winogrande_winogrande_xl"),
    "sentence_completion": ("super_glue_copa", "hellaswag", "story_cloze_2016"),
    "word_sense": ("super_glue_wic",),
}
CLUSTERS: tuple[str, ...] = (*CLUSTER_DATASETS, UNKNOWN)
DATASET_CLUSTERS: dict[str, str] = {d: c for c, ds in CLUSTER_DATASETS.items() for d in ds}
# Longest first, so `adversarial_qa_dbert` wins over a shorter prefix and `wiki_qa` never eats `wiki_hop`.
_PREFIXES = sorted(DATASET_CLUSTERS, key=len, reverse=True)


@dataclass(frozen=True)
class TemplateFile:
    """One prompt-template file: its path, template name (file stem), dataset and cluster."""

    path: Path
    template: str
    dataset: str
    cluster: str


def parse_template_name(stem: str) -> tuple[str, str]:
    """(dataset, template part) of a file stem; an unknown stem is its own dataset with template ''."""
    for prefix in _PREFIXES:
        if stem.startswith(prefix + "_") and len(stem) > len(prefix) + 1:
            return prefix, stem[len(prefix) + 1 :]
    return stem, ""


def describe(path: str | Path) -> TemplateFile:
    """Dataset and cluster of one template file."""
    p = Path(path)
    stem = p.name.removesuffix(".jsonl")
    dataset, _ = parse_template_name(stem)
    return TemplateFile(p, stem, dataset, DATASET_CLUSTERS.get(dataset, UNKNOWN))


def template_files(source: str | Path | Sequence[str | Path]) -> list[TemplateFile]:
    """The template files of a directory (its *.jsonl, sorted) or of a list of files."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = sorted(Path(source).glob("*.jsonl"))
        if not paths:
            raise DataError(f"{source}: no *.jsonl template file in this directory")
    else:
        paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"template file(s) not found: {missing}")
    return [describe(p) for p in paths]


def parse_clusters(value: str | Iterable[str]) -> tuple[str, ...]:
    """Cluster names from `a,b` or a list; ConfigError naming an unknown one and the choices."""
    names = [v.strip() for v in (re.split(r"[,\s]+", value) if isinstance(value, str) else value)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in CLUSTERS]
    if bad:
        raise ConfigError(f"heldout_clusters: {bad} unknown; choose from {list(CLUSTERS)}")
    return tuple(dict.fromkeys(names))


def split_clusters(
    files: Sequence[TemplateFile | str | Path], heldout: str | Iterable[str]
) -> tuple[list[TemplateFile], list[TemplateFile]]:
    """(train files, held-out files): a file is held out when its cluster is in `heldout`."""
    clusters = set(parse_clusters(heldout))
    if not clusters:
        raise ConfigError("heldout_clusters: give at least one cluster to hold out")
    described = [f if isinstance(f, TemplateFile) else describe(f) for f in files]
    train = [f for f in described if f.cluster not in clusters]
    held = [f for f in described if f.cluster in clusters]
    if not held:
        raise DataError(f"no template file is in the held-out cluster(s) {sorted(clusters)}")
    if not train:
        raise DataError(f"every template file is in the held-out cluster(s) {sorted(clusters)}; nothing to train on")
    return train, held


def write_cluster_split(
    source: str | Path | Sequence[str | Path], output_dir: str | Path, heldout: str | Iterable[str]
) -> dict[str, ImportSummary]:
    """Import train and held-out files into OUT/train.jsonl and OUT/heldout.jsonl (category = cluster).

    Rows go through the prompt/completion importer (so `<|endoftext|>` is removed and empty
    completions are rejected into OUT/<split>.rejects.jsonl); each example's `category` is its
    cluster and `meta` holds its dataset, so `eval heldout` reports per cluster.
    Returns the ImportSummary of each split.
    """
    from instillm.data.importer import import_files, read_examples, write_examples

    train, held = split_clusters(template_files(source), heldout)
    out = Path(output_dir)
    summaries = {}
    for name, files in (("train", train), ("heldout", held)):
        path = out / f"{name}.jsonl"
        summaries[name] = import_files([str(f.path) for f in files], path, format="prompt_completion")
        by_stem = {f.template: f for f in files}
        examples = [_label(ex, by_stem) for ex in read_examples(path)]
        write_examples(examples, path)
    return summaries


def _label(example: Example, by_stem: dict[str, TemplateFile]) -> Example:
    """The example with category = its cluster and meta.dataset / meta.cluster set."""
    f = by_stem[example.task]
    return replace(example, category=f.cluster, meta={**example.meta, "dataset": f.dataset, "cluster": f.cluster})
