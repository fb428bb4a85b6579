"""Decode-step time with torch's linear products against instillm's transposed ones, by rows.

    .venv/bin/python benchmarks/decode_products.py [--model real|DIR] [--rows 1 2 4 8 16 32 64]
        [--repeats 3] [--steps 12] [--dtype float32|bfloat16] [--unpadded] [--out PATH]

For each row count: prefill that many 100-token prompts (random ids, seeded), then time `--steps`
decode steps of the model (`transformers`' own forward and `DynamicCache`, greedy), once with
torch's `nn.Linear` and once inside `instillm.llm.products.TransposedProducts.active` (every
linear layer as `(W @ x.T).T`), alternating, `--repeats` times; reported: the fastest repeat of
each, in ms per step. The logits of both agree to fp32 rounding (`max_abs_logit_diff`). Default
model: the `small` preset (random weights); `--model real`: SmolLM2-135M-Instruct
(`make real-model`). Results go to benchmarks/results/decode_products.json with the CPU.

`--generator N [N ...]`: also instillm's own `Generator` (grouped attention, its KV cache), on the
first N prompts of `generation_throughput.py` in one batch, 64 greedy new tokens: decode seconds
(the 64-token call minus a 1-token call, which is the prefill) with `transposed_products` False
and True, alternating, fastest of `--repeats`, and whether both gave the same tokens.

`--unpadded`: a third side, the transposed products without padding the rows to whole blocks of 8
(`products.padded_rows`); `padding_speedup` is its time over the padded one's (try odd rows: 23 31).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from generation_throughput import REAL_MODEL, conversations, machine_info  # noqa: E402

from instillm.llm.generation import GenerateOptions, Generator  # noqa: E402
from instillm.llm.products import TransposedProducts  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "decode_products.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def decode_ms(model, rows: int, steps: int, transposed: TransposedProducts | None) -> tuple[float, torch.Tensor]:
    """ms per decode step for `rows` rows (after a 100-token prefill), and the last step's logits."""
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (rows, 100), generator=torch.Generator().manual_seed(rows))
    cache = DynamicCache()
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(steps):
        with contextlib.nullcontext() if transposed is None else transposed.active(rows):
            out = model(input_ids=tok, cache=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / steps * 1e3, out.logits[:, -1].float()


def fastest_of_each(times: dict[str, list[float]], unit: str, name: str | None = None) -> dict:
    """torch_<name> and transposed_<name> (default name: the unit): the fastest repeat of each; their
    speedup; all_<unit>: every repeat."""
    a, b = min(times["torch"]), min(times["transposed"])
    name = name or unit
    return {
        f"torch_{name}": round(a, 2),
        f"transposed_{name}": round(b, 2),
        "speedup": round(a / b, 2),
        f"all_{unit}": {k: [round(x, 2) for x in v] for k, v in times.items()},
    }


@torch.inference_mode()
def measure(model, rows: int, steps: int, repeats: int, unpadded: bool = False) -> dict:
    """ms per step with torch's products and transposed ones (and, `unpadded`, transposed ones without padding)."""
    sides: dict[str, TransposedProducts | None] = {"torch": None, "transposed": TransposedProducts(model)}
    if unpadded:
        sides["unpadded"] = TransposedProducts(model, padded=False)
    times: dict[str, list[float]] = {k: [] for k in sides}
    logits = {}
    for _ in range(repeats):
        for name, tp in sides.items():
            ms, logits[name] = decode_ms(model, rows, steps, tp)
            times[name].append(ms)
    out = {
        "rows": rows,
        **fastest_of_each(times, "ms"),
        "max_abs_logit_diff": float((logits["torch"] - logits["transposed"]).abs().max()),
    }
    if unpadded:
        out["unpadded_ms"] = round(min(times["unpadded"]), 2)
        out["padding_speedup"] = round(out["unpadded_ms"] / out["transposed_ms"], 2)
    return out


def generator_decode(model, tok, n: int, repeats: int, new_tokens: int = 64) -> dict:
    """Decode seconds of `Generator` on n prompts in one batch, torch's products against transposed ones."""
    gens = {"torch": Generator(model, tok, transposed_products=False), "transposed": Generator(model, tok, True)}
    prompts = gens["torch"].render_prompts(conversations(n))
    full, one = (
        GenerateOptions(max_new_tokens=new_tokens, batch_size=n),
        GenerateOptions(max_new_tokens=1, batch_size=n),
    )
    decode: dict[str, list[float]] = {k: [] for k in gens}
    tokens = {}
    for _ in range(repeats):
        for name, gen in gens.items():
            start = time.perf_counter()
            gen.generate_texts(prompts, one)
            mid = time.perf_counter()
            tokens[name] = [o.token_ids for o in gen.generate_texts(prompts, full)]
            decode[name].append(time.perf_counter() - mid - (mid - start))
    return {
        "prompts": n,
        **fastest_of_each(decode, "s", "decode_s"),
        "identical_outputs": tokens["torch"] == tokens["transposed"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="real, or a model directory (default: the small preset)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument(
        "--generator", type=int, nargs="*", default=[], metavar="N", help="also time Generator on N prompts"
    )
    ap.add_argument(
        "--unpadded", action="store_true", help="also transposed products without padding rows to whole blocks"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from instillm.models.loading import load_model, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="instillm-bench-") as tmp:
        path = REAL_MODEL if args.model == "real" else args.model
        if path is None:
            from instillm.models.factory import init_model

            path = init_model(preset="small", output_dir=Path(tmp) / "small", seed=0)
        model = load_model(path, dtype=DTYPES[args.dtype], attn_implementation="sdpa").eval()
        tok = load_tokenizer(path)
    print(f"model {args.model or 'small preset'}, {args.dtype}, {torch.get_num_threads()} threads", flush=True)
    print(f"{'rows':>5} {'torch ms':>9} {'transposed ms':>14} {'speedup':>8}")
    table = []
    for rows in args.rows:
        r = measure(model, rows, args.steps, args.repeats, args.unpadded)
        table.append(r)
        unpadded = f"   unpadded {r['unpadded_ms']:.1f} ms ({r['padding_speedup']:.2f}x)" if args.unpadded else ""
        print(
            f"{rows:>5} {r['torch_ms']:>9.1f} {r['transposed_ms']:>14.1f} {r['speedup']:>7.2f}x{unpadded}", flush=True
        )
    generator = []
    for n in args.generator:
        g = generator_decode(model, tok, n, args.repeats)
        generator.append(g)
        print(
            f"Generator, {n} prompts: decode {g['torch_decode_s']:.2f} s with torch's products, "
            f"{g['transposed_decode_s']:.2f} s transposed ({g['speedup']:.2f}x), same tokens: {g['identical_outputs']}",
            flush=True,
        )
    result = {
        "benchmark": "decode_products",
        "model": str(args.model or "preset:small"),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "statistic": "fastest repeat, ms per decode step",
        "by_rows": table,
        "generator": generator,
        "machine": machine_info(),
        "command": "python benchmarks/decode_products.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
