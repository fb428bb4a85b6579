"""Greedy ROUGE-L near-duplicate filter: instillm against the reference loop on rouge-score.

Usage:  python benchmarks/rouge_filter.py [--quick] [--threshold 0.7]

Inputs (from the shared reference data, `../shared/data` beside the repo or $INSTILLM_SHARED_DATA):
  real         every instruction of: self-instruct seed tasks and user-oriented set, AlpacaEval,
               WizardLM test set, MT-Bench turns, IFEval prompts (~2,150, in that order)
  conformance  conformance/rouge_filter_input.jsonl (1,625 instructions incl. edited near copies)
--quick uses the first 1,000 real instructions and the first 300 conformance ones (< 3 minutes).

Reference: the filter as the Alpaca script runs it (Self-Instruct's differs only by calling
`scorer.score` and re-tokenizing per pair, which is slower): tokenize once with rouge-score's
tokenizer, then for each new instruction compute `rouge_scorer._score_lcs(new, kept).fmeasure`
against every kept instruction and drop it when the max is > threshold. Single process.

Writes benchmarks/results/rouge_filter.json: n, same_decisions, speedup (of the real input),
and per input n, kept, same_decisions, reference_s, instillm_s, speedup, and how many pairs
needed an exact LCS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instillm.curate.dedup import RougeLFilter  # noqa: E402


def shared_data() -> Path:
    """The reference data directory (env INSTILLM_SHARED_DATA overrides ../shared/data)."""
    return Path(os.environ.get("INSTILLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def real_instructions(data: Path) -> list[str]:
    """The ~2,150 real instructions, in a fixed order."""
    out = [r["instruction"] for r in _jsonl(data / "self_instruct/seed_tasks.jsonl")]
    out += [r["instruction"] for r in _jsonl(data / "self_instruct/user_oriented_instructions.jsonl")]
    out += [r["instruction"] for r in json.loads((data / "alpaca_eval/text_davinci_003_outputs.json").read_text())]
    out += [r["Instruction"] for r in _jsonl(data / "wizardlm/WizardLM_testset.jsonl")]
    out += [t for r in _jsonl(data / "mt_bench/question.jsonl") for t in r["turns"]]
    out += [r["prompt"] for r in _jsonl(data / "ifeval/input_data.jsonl")]
    return out


def reference_filter(texts: list[str], threshold: float) -> list[bool]:
    """The Alpaca/Self-Instruct greedy filter on rouge-score, as the scripts run it (all scores, then max)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[list[str]] = []
    flags = []
    for text in texts:
        toks = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(toks, k).fmeasure for k in kept]
        keep = not scores or max(scores) <= threshold
        flags.append(keep)
        if keep:
            kept.append(toks)
    return flags


def instillm_filter(texts: list[str], threshold: float) -> tuple[list[bool], int]:
    """Keep flags and the number of pairs that needed an exact LCS."""
    f = RougeLFilter(threshold)
    return [f.offer(t) for t in texts], f.exact_lcs


def run(name: str, texts: list[str], threshold: float) -> dict:
    """Time both filters on one input and compare their decisions."""
    t0 = time.perf_counter()
    ours, exact_pairs = instillm_filter(texts, threshold)
    times = [time.perf_counter() - t0]
    for _ in range(2):  # cheap: take the best of three
        t0 = time.perf_counter()
        instillm_filter(texts, threshold)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)
    t0 = time.perf_counter()
    ref = reference_filter(texts, threshold)
    t_ref = time.perf_counter() - t0
    mismatches = [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
    kept = sum(ref)
    # pairs the reference scores: each text against the texts kept before it
    pairs, k = 0, 0
    for keep in ref:
        pairs += k
        k += keep
    result = {
        "n": len(texts),
        "kept": kept,
        "same_decisions": not mismatches,
        "mismatches": mismatches[:20],
        "reference_s": round(t_ref, 3),
        "instillm_s": round(t_ours, 4),
        "speedup": round(t_ref / t_ours, 1),
        "pairs_scored_by_reference": pairs,
        "pairs_with_exact_lcs": exact_pairs,
    }
    print(
        f"{name:12s} n={len(texts)} kept={kept} same_decisions={not mismatches} reference={t_ref:.1f}s "
        f"instillm={t_ours:.3f}s speedup={t_ref / t_ours:.0f}x exact LCS on {exact_pairs}/{pairs} pairs",
        flush=True,
    )
    return result


def main() -> None:
    from _deps import require

    require("rouge_score")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first 1,000 real and 300 conformance instructions")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks/results/rouge_filter.json")
    args = ap.parse_args()
    data = shared_data()
    if not data.is_dir():
        sys.exit(f"reference data not found at {data} (set INSTILLM_SHARED_DATA)")
    real = real_instructions(data)
    conformance = [r["instruction"] for r in _jsonl(data / "conformance/rouge_filter_input.jsonl")]
    if args.quick:
        real, conformance = real[:1000], conformance[:300]
    load_before = os.getloadavg()
    inputs = {"real": run("real", real, args.threshold), "conformance": run("conformance", conformance, args.threshold)}
    out = {
        "n": inputs["real"]["n"],
        "same_decisions": all(r["same_decisions"] for r in inputs.values()),
        "speedup": inputs["real"]["speedup"],
        "threshold": args.threshold,
        "quick": args.quick,
        "inputs": inputs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    if not out["same_decisions"]:
        sys.exit("decisions differ from the reference")


if __name__ == "__main__":
    main()
