"""Attention over packed rows: block-diagonal mask vs one example at a time (`packed_attention`).

    .venv/bin/python benchmarks/packed_attention.py [--threads 1] [--repeats 5]
        [--device cpu|cuda] [--tokens 1536] [--heads 8] [--kv-heads 4] [--data JSONL] [--out FILE]

One decoder layer's attention, forward + backward, bf16, the `small` preset's heads (8 query heads,
4 key/value heads, head_dim 64), on packed rows built by instillm's own best-fit-decreasing
packing from the example lengths of the training benchmark's data (T0 sample from ../shared/data,
chatml, ≤512 tokens; the skills suite when ../shared is absent). For each row length (512, the
training benchmark's max_length, and 1024/2048, common fine-tuning settings) it times the first
rows, drawn at random from all the bins, that reach 1,536 real tokens together:

- `mask`: sdpa with the additive (B, 1, L, L) block-diagonal mask (`packed_attention: mask`);
- `segments`: `instillm.train.attention` on each example alone (`packed_attention: segments`).

- `varlen` (on CUDA, where torch has `torch.nn.attention.varlen`): every example of the rows in one
  call of torch's flash varlen kernel (`packed_attention: varlen`).

All get the same q, k, v and output gradient; the outputs are compared too (bf16 rounding only).
`--device cuda` runs them on the card (`benchmarks/gpu_check.sh`: SmolLM2's 9 query and 3 key/value
heads, more tokens a call, the T0 sample from `--data`). Prints a table and writes
benchmarks/results/packed_attention.json (on CUDA, packed_attention_cuda.json).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def example_lengths(data: Path | None = None) -> tuple[list[int], str]:
    """Token lengths of the training benchmark's examples (same data, template and max_length), or of
    the canonical JSONL `data` (`train_throughput.py --save-data` writes that sample)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput as tt

    from instillm.models.factory import init_model
    from instillm.models.loading import load_tokenizer
    from instillm.train.loop import prepare_data

    with tempfile.TemporaryDirectory(prefix="packed-attention-") as tmp:
        work = Path(tmp)
        model_dir = init_model("small", work / "model", seed=tt.SEED)
        source = str(data)
        if data is None:
            data, info = tt.build_data(work, 4)
            source = info["source"]
        cfg = tt.instillm_config(model_dir, data, work / "probe", "bf16", False, False, 8, 1)
        items = prepare_data(cfg, load_tokenizer(model_dir)).train
    return [len(r) for r in items], source


def rows_for(lengths: list[int], row_length: int, rng: random.Random, tokens: int = TOKENS) -> torch.Tensor:
    """(B, row_length) segment ids of random packed rows holding about `tokens` real tokens."""
    from instillm.data.pack import pack_lengths

    bins = pack_lengths(lengths, row_length)
    rng.shuffle(bins)
    chosen, total = [], 0
    for b in bins:
        if total >= tokens:
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
    """Median milliseconds of forward + backward (a CUDA device synchronised around each)."""
    sync = torch.cuda.synchronize if grad.is_cuda else (lambda: None)
    for _ in range(2):
        fn().backward(grad)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn().backward(grad)
        sync()
        times.append(time.perf_counter() - t)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def has_varlen(device: str) -> bool:
    """torch's flash varlen kernel can run here: CUDA, and a torch that has it."""
    return device == "cuda" and importlib.util.find_spec("torch.nn.attention.varlen") is not None


def measure(seg: torch.Tensor, repeats: int, device: str = "cpu", heads: tuple[int, int] = (HEADS, KV_HEADS)):
    """One row length: each method's forward + backward time, and its outputs against the mask's."""
    from instillm.train.attention import segment_lengths, segments_attention_forward, varlen_attention_forward
    from instillm.train.batching import packed_attention_mask

    batch, length = seg.shape
    seg = seg.to(device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, h, length, HEAD_DIM, generator=g).bfloat16().to(device).requires_grad_()
        for h in (heads[0], heads[1], heads[1])
    )
    grad = torch.randn(batch, length, heads[0], HEAD_DIM, generator=g).bfloat16().to(device)
    mask = packed_attention_mask(seg, torch.bfloat16)
    pieces = segment_lengths(seg)
    methods = {
        "mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2),
        "segments": lambda: segments_attention_forward(None, q, k, v, None, segment_lengths=pieces)[0],
    }
    if has_varlen(device):
        methods["varlen"] = lambda: varlen_attention_forward(None, q, k, v, None, segment_lengths=pieces)[0]
    row: dict[str, Any] = {
        "row_length": length,
        "rows": batch,
        "examples": sum(int(n) for n in seg.max(dim=1).values),
        "real_tokens": int((seg > 0).sum()),
    }
    with torch.no_grad():
        real = (seg > 0)[..., None, None]
        want = methods["mask"]().float()
        for name in list(methods)[1:]:
            row[f"{name}_max_abs_output_diff"] = float(((methods[name]().float() - want).abs() * real).max())
    for name, fn in methods.items():
        row[f"{name}_ms"] = time_call(fn, grad, repeats)
    row["speedup"] = round(row["mask_ms"] / row["segments_ms"], 2)
    row["max_abs_output_diff"] = row["segments_max_abs_output_diff"]  # the key of earlier results
    if "varlen" in methods:
        row["varlen_speedup_vs_mask"] = round(row["mask_ms"] / row["varlen_ms"], 2)
        row["varlen_speedup_vs_segments"] = round(row["segments_ms"] / row["varlen_ms"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tokens", type=int, default=TOKENS, help=f"real tokens a call (default {TOKENS})")
    ap.add_argument("--heads", type=int, default=HEADS, help=f"query heads (default {HEADS}; SmolLM2: 9)")
    ap.add_argument("--kv-heads", type=int, default=KV_HEADS, help=f"key/value heads (default {KV_HEADS}; SmolLM2: 3)")
    ap.add_argument("--data", type=Path, default=None, help="a canonical JSONL to take the example lengths from")
    ap.add_argument("--out", default=None, help="default results/packed_attention.json (CUDA: _cuda)")
    args = ap.parse_args(argv)
    out = Path(
        args.out or RESULTS / ("packed_attention_cuda.json" if args.device == "cuda" else "packed_attention.json")
    )
    if args.data is not None:
        from instillm.data.importer import refuse_overwrite

        refuse_overwrite([args.data], {f"--out {out}": out})
    torch.set_num_threads(args.threads)
    lengths, source = example_lengths(args.data)
    rng = random.Random("packed-attention-0")
    heads = (args.heads, args.kv_heads)
    rows = [
        measure(rows_for(lengths, n, rng, args.tokens), args.repeats, args.device, heads) for n in (512, 1024, 2048)
    ]
    result = {
        "command": "python " + " ".join(["benchmarks/packed_attention.py", *sys.argv[1:]]),
        "threads": args.threads,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "data": source,
        "examples": len(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "torch": torch.__version__,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": HEAD_DIM,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_rows(rows)
    print(f"\nwrote {out}")
    return 0


def print_rows(rows: list[dict[str, Any]]) -> None:
    varlen = "varlen_ms" in rows[0]
    print(
        "| row length | rows | examples | real tokens | mask ms | segments ms | speedup |"
        + (" varlen ms |" if varlen else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if varlen else ""))
    for r in rows:
        print(
            f"| {r['row_length']} | {r['rows']} | {r['examples']} | {r['real_tokens']} | {r['mask_ms']} "
            f"| {r['segments_ms']} | {r['speedup']}x |" + (f" {r['varlen_ms']} |" if varlen else "")
        )


if __name__ == "__main__":
    from instillm.errors import InstillmError

    try:
        raise SystemExit(main())
    except InstillmError as e:  # a bad --data, or --out over it: one line naming it, no traceback
        sys.exit(f"packed_attention: {e}")
