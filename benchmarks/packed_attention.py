"""Attention over packed rows: block-diagonal mask vs one example at a time (`packed_attention`).

    .venv/bin/python benchmarks/packed_attention.py [--threads 1] [--repeats 5]

One decoder layer's attention, forward + backward, bf16, the `small` preset's heads (8 query heads,
4 key/value heads, head_dim 64), on packed rows built by instillm's own best-fit-decreasing
packing from the example lengths of the training benchmark's data (T0 sample from ../shared/data,
chatml, ≤512 tokens; the skills suite when ../shared is absent). For each row length (512, the
training benchmark's max_length, and 1024/2048, common fine-tuning settings) it times the first
rows, drawn at random from all the bins, that reach 1,536 real tokens together:

- `mask`: sdpa with the additive (B, 1, L, L) block-diagonal mask (`packed_attention: mask`);
- `segments`: `instillm.train.attention` on each example alone (`packed_attention: segments`).

Both get the same q, k, v and output gradient; the outputs are compared too (bf16 rounding only).
Prints a table and writes benchmarks/results/packed_attention.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
HEADS, KV_HEADS, HEAD_DIM = 8, 4, 64
TOKENS = 1536  # real tokens per measured call, as one optimizer step of the training benchmark


def example_lengths() -> tuple[list[int], str]:
    """Token lengths of the training benchmark's examples (same data, template and max_length)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    from instillm.models.factory import init_model
    from instillm.models.loading import load_tokenizer
    from instillm.train.loop import prepare_data

    with tempfile.TemporaryDirectory(prefix="packed-attention-") as tmp:
        work = Path(tmp)
        model_dir = init_model("small", work / "model", seed=tt.SEED)
        data, info = tt.build_data(work, 4)
        cfg = tt.instillm_config(model_dir, data, work / "probe", "bf16", False, False, 8, 1)
        items = prepare_data(cfg, load_tokenizer(model_dir)).train
    return [len(r) for r in items], info["source"]


def rows_for(lengths: list[int], row_length: int, rng: random.Random) -> torch.Tensor:
    """(B, row_length) segment ids of random packed rows holding about TOKENS real tokens."""
    from instillm.data.pack import pack_lengths

    bins = pack_lengths(lengths, row_length)
    rng.shuffle(bins)
    chosen, total = [], 0
    for b in bins:
        if total >= TOKENS:
            break
        chosen.append(b)
        total += sum(lengths[i] for i in b)
    seg = torch.zeros(len(chosen), row_length, dtype=torch.long)
    for r, b in enumerate(chosen):
        start = 0
        for k, i in enumerate(b, start=1):
            seg[r, start : start + lengths[i]] = k
            start += lengths[i]
    return seg


def time_call(fn: Any, grad: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of forward + backward."""
    for _ in range(2):
        fn().backward(grad)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn().backward(grad)
        times.append(time.perf_counter() - t)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def measure(seg: torch.Tensor, repeats: int) -> dict[str, Any]:
    from instillm.train.attention import segment_lengths, segments_attention_forward
    from instillm.train.batching import packed_attention_mask

    batch, length = seg.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, h, length, HEAD_DIM, generator=g).bfloat16().requires_grad_()
        for h in (HEADS, KV_HEADS, KV_HEADS)
    )
    grad = torch.randn(batch, length, HEADS, HEAD_DIM, generator=g).bfloat16()
    mask = packed_attention_mask(seg, torch.bfloat16)
    pieces = segment_lengths(seg)

    def masked() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)

    def segments() -> torch.Tensor:
        return segments_attention_forward(None, q, k, v, None, segment_lengths=pieces)[0]

    with torch.no_grad():
        real = (seg > 0)[..., None, None]
        diff = float(((masked().float() - segments().float()).abs() * real).max())
    mask_ms, seg_ms = time_call(masked, grad, repeats), time_call(segments, grad, repeats)
    sizes = [int(n) for n in (seg.max(dim=1).values)]
    return {
        "row_length": length,
        "rows": batch,
        "examples": sum(sizes),
        "real_tokens": int((seg > 0).sum()),
        "mask_ms": mask_ms,
        "segments_ms": seg_ms,
        "speedup": round(mask_ms / seg_ms, 2),
        "max_abs_output_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "packed_attention.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths, source = example_lengths()
    rng = random.Random("packed-attention-0")
    rows = [measure(rows_for(lengths, n, rng), args.repeats) for n in (512, 1024, 2048)]
    result = {
        "command": "python " + " ".join(["benchmarks/packed_attention.py", *sys.argv[1:]]),
        "threads": args.threads,
        "data": source,
        "examples": len(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "torch": torch.__version__,
        "heads": HEADS,
        "kv_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("| row length | rows | examples | real tokens | mask ms | segments ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['row_length']} | {r['rows']} | {r['examples']} | {r['real_tokens']} | {r['mask_ms']} "
            f"| {r['segments_ms']} | {r['speedup']}x |"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
