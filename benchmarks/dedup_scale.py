"""Exact + MinHash-LSH dedup at scale: time, rows/s, peak memory, and recall of planted duplicates.

Usage:  python benchmarks/dedup_scale.py [--rows N | --quick] [--threshold 0.8] [--workdir DIR]

Generates N synthetic canonical rows (default 1,000,000; --quick: 100,000) into a temp JSONL,
streaming (Zipf-distributed words from a 20,000-word vocabulary; instruction 8-25 words,
response 30-90 words). Planted among them:
  - exact duplicates (2%): a copy of an earlier original row with case, punctuation and
    whitespace changed (same normalized key);
  - near duplicates (2%): a copy of an earlier original row with one response word replaced
    (word-5-gram Jaccard with the original: 0.85-0.98, computed for each planted pair).
Then runs `dedup_file(exact=True, minhash=threshold)` on the file and checks that every planted
exact duplicate is rejected as `exact_duplicate`, how many planted near duplicates are rejected
(overall and for Jaccard >= 0.9), against the recall the LSH S-curve predicts
(mean of 1 - (1 - J^rows)^bands), and how many original rows were wrongly rejected.
Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of this process (generation streams, so
it is the dedup's). Writes benchmarks/results/dedup_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instillm.curate.dedup import MinHasher, dedup_file, lsh_params  # noqa: E402

EXACT_RATE = 0.02
NEAR_RATE = 0.02
RECENT = 20_000  # originals a planted copy may be taken from


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def _row(i: int, user: str, answer: str) -> str:
    return json.dumps(
        {
            "id": f"syn-{i}",
            "source": "synthetic",
            "task": "synthetic",
            "category": "",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "meta": {},
        }
    )


def _vary(text: str, rng: random.Random) -> str:
    """Same normalized text: change case, add punctuation and whitespace."""
    words = text.split()
    out = [w.upper() if rng.random() < 0.3 else w for w in words]
    out[-1] += rng.choice(["!", "?", "...", "."])
    return "  ".join(out) if rng.random() < 0.5 else "\n".join(out)


def jaccard(a: tuple[str, str], b: tuple[str, str], hasher: MinHasher) -> float:
    """Word-5-gram Jaccard of two conversations, on the text MinHash dedup sees."""
    x, y = set(hasher.shingles("\n".join(a))), set(hasher.shingles("\n".join(b)))
    return len(x & y) / len(x | y)


def generate(path: Path, n: int, seed: int = 0) -> tuple[set[int], dict[int, float]]:
    """Write n rows to path; return the lines of planted exact duplicates and {line: Jaccard} of near ones."""
    rng = random.Random(seed)
    vocab = [f"{rng.choice('bcdfghklmnprstvz')}{rng.choice('aeiou')}{i:x}" for i in range(20_000)]
    cum = []
    total = 0.0
    for r in range(1, len(vocab) + 1):
        total += 1.0 / r
        cum.append(total)
    recent: list[tuple[str, str]] = []
    exact: set[int] = set()
    near: dict[int, float] = {}
    hasher = MinHasher()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, n + 1):
            u = rng.random()
            if recent and u < EXACT_RATE:
                user, answer = rng.choice(recent)
                user, answer = _vary(user, rng), _vary(answer, rng)
                exact.add(i)
            elif recent and u < EXACT_RATE + NEAR_RATE:
                orig = rng.choice(recent)
                user, words = orig[0], orig[1].split()
                words[rng.randrange(len(words))] = "zzchanged"
                answer = " ".join(words)
                near[i] = jaccard(orig, (user, answer), hasher)
            else:
                user = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(8, 25)))
                answer = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(40, 120)))
                if len(recent) < RECENT:
                    recent.append((user, answer))
                else:
                    recent[rng.randrange(RECENT)] = (user, answer)
            f.write(_row(i, user, answer) + "\n")
    return exact, near


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--threshold", type=float, default=0.8, help="MinHash Jaccard threshold")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temp files go (default: system temp)")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks/results/dedup_scale.json")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.rows
    tmp = Path(tempfile.mkdtemp(prefix="dedup_scale_", dir=args.workdir))
    try:
        inp, out = tmp / "rows.jsonl", tmp / "dedup.jsonl"
        t0 = time.perf_counter()
        exact, near = generate(inp, n)
        t_gen = time.perf_counter() - t0
        rss_before = _peak_rss_mib()
        print(
            f"generated {n} rows ({len(exact)} exact, {len(near)} near duplicates planted) in {t_gen:.1f}s, "
            f"{inp.stat().st_size / 2**20:.0f} MiB",
            flush=True,
        )
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        s = dedup_file(inp, out, exact=True, minhash=args.threshold)
        t_dedup = time.perf_counter() - t0
        peak = _peak_rss_mib()
        rejected: dict[int, str] = {}
        with open(s.rejects_path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rejected[r["line"]] = r["reason"]
        exact_found = sum(1 for i in exact if rejected.get(i) == "exact_duplicate")
        near_found = sum(1 for i in near if i in rejected)
        high = [i for i, j in near.items() if j >= 0.9]
        high_found = sum(1 for i in high if i in rejected)
        false_pos = sum(1 for i in rejected if i not in exact and i not in near)
        bands, rows = lsh_params(args.threshold, 128)
        predicted = sum(1 - (1 - j**rows) ** bands for j in near.values()) / max(len(near), 1)
        result = {
            "rows": n,
            "quick": args.quick,
            "threshold": args.threshold,
            "lsh_bands_rows": [bands, rows],
            "kept": s.n_kept,
            "rejected_by_reason": s.rejected_by_reason,
            "accounted": s.n_kept + s.n_rejected == n,
            "planted_exact": len(exact),
            "exact_found": exact_found,
            "planted_near": len(near),
            "near_found": near_found,
            "near_recall": round(near_found / max(len(near), 1), 4),
            "near_recall_predicted": round(predicted, 4),
            "near_jaccard_min_mean_max": [
                round(min(near.values()), 3),
                round(sum(near.values()) / len(near), 3),
                round(max(near.values()), 3),
            ]
            if near
            else [],
            "planted_near_jaccard_ge_0_9": len(high),
            "near_recall_jaccard_ge_0_9": round(high_found / max(len(high), 1), 4),
            "false_positives": false_pos,
            "dedup_s": round(t_dedup, 1),
            "rows_per_s": round(n / t_dedup),
            "generate_s": round(t_gen, 1),
            "peak_rss_mib": round(peak),
            "rss_before_dedup_mib": round(rss_before),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["accounted"]
        and exact_found == len(exact)
        and result["near_recall_jaccard_ge_0_9"] >= 0.9
        and abs(result["near_recall"] - predicted) < 0.05
        and false_pos <= n * 1e-4
    )
    if not ok:
        sys.exit("planted duplicates were missed or originals wrongly removed")


if __name__ == "__main__":
    main()
