"""Generation throughput: naive per-prompt `model.generate` vs batched `generate` vs instillm.

    .venv/bin/python benchmarks/generation_throughput.py --quick
    .venv/bin/python benchmarks/generation_throughput.py [--model DIR] [--n-prompts 64]
        [--max-new-tokens 64] [--batch-size 64] [--repeats 5] [--ablations] [--dtype float32|bfloat16|best]

Builds the `small` preset (about 28M parameters, random weights) in a temporary directory unless
`--model` is given, renders the same instruction-like chat prompts for every method (lengths
spread like AlpacaEval's: mostly 20-80 tokens, a few long ones with an input passage) and
decodes greedily with the same stop tokens (EOS / end-of-turn) for:

  naive       `model.generate(do_sample=False)` one prompt at a time, no padding
  hf_batched  transformers' `model.generate` on left-padded batches of `--batch-size`
  instillm    `instillm.llm.generation.Generator.generate_texts` at the same batch size
  instillm_torch_products  the same with torch's own linear products, where instillm's default
              computes decode steps' products transposed (fp32 on AMD CPUs: `instillm.llm.products`)
  instillm_model_decode  the same with decode steps through the model's modules (transposed
              products), where instillm's default runs them feature-major (`instillm.llm.feature_major`)

Tokens/s counts generated tokens (up to and including a stop token; padding and anything after a
stop are not counted) divided by wall time. Every method runs once untimed (warm-up: the naive
loop on 2 prompts), then `--repeats` timed runs interleaved (naive, batched, instillm, naive, ...)
so that a load spike hits all of them; the median is reported. `identical_outputs` is true when
instillm's greedy tokens equal the naive ones for every prompt (in the same dtype: `--dtype best`
runs every method in fp32 and in bf16 and headlines each in its fastest). Results go to
benchmarks/results/generation_throughput.json (`--model real`: generation_throughput_real.json;
with machine info and the load average, since a busy machine changes the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from instillm.llm.generation import GenerateOptions, Generator  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "generation_throughput.json"
RESULTS_REAL = REPO / "benchmarks" / "results" / "generation_throughput_real.json"  # --model real
RESULTS_PREFIX = REPO / "benchmarks" / "results" / "generation_prefix.json"
RESULTS_PREFIX_REAL = REPO / "benchmarks" / "results" / "generation_prefix_real.json"  # --prefix --model real
REAL_MODEL = REPO / ".cache" / "smollm2-135m-instruct"  # `make real-model`
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

SYSTEM = "You are a helpful assistant. Answer accurately and concisely."

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn rain.",
    "How do I wrap a present neatly?",
    "Explain what a binary search does and when it is faster than a linear scan.",
    "Name five animals that live in the ocean and one fact about each of them.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the main differences between a list and a tuple in Python?",
    "Write a short, polite email asking my manager for a day off next Friday.",
    "Suggest a name for a bakery that specializes in sourdough bread.",
    "Convert 72 degrees Fahrenheit to Celsius and show the formula you used.",
    "Why is the sky blue? Keep the explanation simple enough for a ten-year-old.",
    "List the steps to make a cup of green tea.",
    "Rewrite the following sentence in the passive voice: The committee approved the new budget.",
    "What is the difference between weather and climate? Give an example of each.",
    "Write a function in JavaScript that returns the largest number in an array.",
    "I have eggs, spinach, cheese and bread. What can I cook for breakfast in fifteen minutes?",
    "Describe the water cycle, including evaporation, condensation, precipitation and collection.",
    "Create a weekly workout plan for a beginner who can exercise three days a week for thirty "
    "minutes, with no equipment at home.",
    "Compare electric cars and gasoline cars in terms of cost, maintenance, range and environmental "
    "impact. Present the answer as a short table followed by a recommendation.",
    "Explain compound interest with a worked example: 1000 dollars at 5 percent per year for three "
    "years, compounded yearly.",
    "You are planning a three-day trip to Rome on a budget. Suggest an itinerary with two sights per "
    "day, one cheap local restaurant per day, and tips for using public transport.",
    "Write a product description for a reusable water bottle that keeps drinks cold for 24 hours.",
]

PASSAGES = [
    "The city council met on Tuesday to discuss the new bicycle lanes on Main Street. Supporters "
    "said the lanes would reduce traffic and make the street safer for children walking to school. "
    "Shop owners worried that removing parking spaces would hurt their business, especially on "
    "weekends. After two hours of debate the council voted five to two to build the lanes as a "
    "one-year trial and to review sales and accident data at the end of the year.",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light energy "
    "into chemical energy. Using sunlight, water and carbon dioxide, they produce glucose and release "
    "oxygen as a by-product. The process takes place mainly in the chloroplasts of leaf cells, which "
    "contain the pigment chlorophyll. Photosynthesis is the basis of almost every food chain on "
    "Earth and it also keeps the oxygen level of the atmosphere stable over long periods of time.",
]

WITH_INPUT = [
    "Summarize the following text in one sentence.",
    "List the arguments for and against the decision described below.",
    "Write three quiz questions, with answers, about the passage below.",
]


def conversations(n: int) -> list[list[dict]]:
    """`n` deterministic instruction conversations of varied length (cycled with a suffix past 32)."""
    base: list[list[dict]] = []
    for i, text in enumerate(INSTRUCTIONS):
        msgs = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
        base.append(msgs + [{"role": "user", "content": text}])
    for i, text in enumerate(WITH_INPUT):
        base.append([{"role": "user", "content": f"{text}\n\n{PASSAGES[i % len(PASSAGES)]}"}])
    base.append(
        [
            {"role": "user", "content": "What is a prime number?"},
            {"role": "assistant", "content": "A whole number greater than 1 whose only divisors are 1 and itself."},
            {"role": "user", "content": "List the prime numbers below 30."},
        ]
    )
    base.append(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Recommend a classic novel."},
            {"role": "assistant", "content": "Pride and Prejudice by Jane Austen."},
            {"role": "user", "content": "Why is it considered a classic, and who would enjoy it?"},
        ]
    )
    base.append(
        [
            {
                "role": "user",
                "content": "Proofread this text and list every correction:\n\n"
                + PASSAGES[0].replace("council", "counsil").replace("their", "there"),
            }
        ]
    )
    base.append([{"role": "user", "content": "Hi!"}])
    base.append([{"role": "user", "content": "Write a limerick about a cat who learns to code."}])
    assert len(base) >= 32
    out = []
    for i in range(n):
        conv = [dict(m) for m in base[i % len(base)]]
        if i >= len(base):
            conv[-1]["content"] += f" (Version {i // len(base) + 1}.)"
        out.append(conv)
    return out


# --------------------------------------------------------------------------------------------
# the three methods; each returns the generated token ids per prompt (stop token included)


def _cut(ids: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


def run_naive(model, tok, prompts, max_new, eos, limit=None):
    out = []
    for p in prompts[:limit]:
        enc = tok(p, add_special_tokens=False, return_tensors="pt")
        seq = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=tok.pad_token_id
        )
        out.append(seq[0, enc["input_ids"].shape[1] :].tolist())
    return out


def run_hf_batched(model, tok, prompts, max_new, eos, batch_size):
    out = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for b in range(0, len(prompts), batch_size):
            enc = tok(prompts[b : b + batch_size], add_special_tokens=False, return_tensors="pt", padding=True)
            seq = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=tok.pad_token_id
            )
            # rows that stopped are padded after their stop token: cut there, count no padding
            out += [_cut(row, set(eos)) for row in seq[:, enc["input_ids"].shape[1] :].tolist()]
    finally:
        tok.padding_side = side
    return out


def run_instillm(gen, prompts, options):
    return [
        o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else [])
        for o in gen.generate_texts(prompts, options)
    ]


def default_out(prefix: bool, real: bool) -> Path:
    """Where results go without --out: --prefix and --model real runs have their own files."""
    if prefix:
        return RESULTS_PREFIX_REAL if real else RESULTS_PREFIX
    return RESULTS_REAL if real else RESULTS


def naive_of(name: str) -> str:
    """The naive loop's key in the same dtype as method `name` ("instillm@bfloat16" -> "naive@bfloat16")."""
    return "naive" + name[name.index("@") :] if "@" in name else "naive"


def command_of(argv: list[str] | None) -> str:
    """The command line of this run, as written to the results."""
    return "python benchmarks/generation_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])


def fastest(tps: dict[str, float], base: str) -> str:
    """The key of method `base`'s fastest dtype."""
    return max((k for k in tps if k.partition("@")[0] == base), key=tps.__getitem__)


# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import transformers
    from _machine import cpu_name

    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


def cpu_idle_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of CPU time idle over `seconds` (Linux /proc/stat), None elsewhere."""

    def read():
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return v[3] + v[4], sum(v)

    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s: float, threshold: float = 0.9) -> float | None:
    """Wait (at most `limit_s`) until other processes leave the CPUs idle; the idle fraction seen."""
    deadline = time.monotonic() + limit_s
    while True:
        idle = cpu_idle_fraction(1.0)
        if idle is None or idle >= threshold or time.monotonic() >= deadline:
            return idle


def timed(fn):
    """Result, wall seconds and CPU seconds (all threads of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 repeats: about 3 min with 2 threads, 4 with one (64 prompts)"
    )
    ap.add_argument("--model", type=Path, help="a model directory (default: build the `small` preset)")
    ap.add_argument("--n-prompts", type=int, default=64, help="prompts (the 32 base ones, then with a suffix)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 5, --quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument(
        "--ablations", action="store_true", help="also time instillm variants (prefill chunking, no shared prefixes)"
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each repeat wait up to S seconds for other processes to leave the CPUs idle",
    )
    ap.add_argument(
        "--prefix",
        action="store_true",
        help="shared-prefix reuse: Self-Instruct's prompts, the static generator and continuous batching, "
        "each with and without reuse",
    )
    ap.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "best"),
        default="float32",
        help="the weights' dtype for every method; best: both, each method headlined in its fastest "
        "(identical outputs are compared within a dtype)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.model is not None and str(args.model) == "real":
        args.model = REAL_MODEL
    if args.dtype == "best" and (args.ablations or args.prefix):
        ap.error("--ablations and --prefix run in one --dtype")
    args.out = args.out or default_out(args.prefix, args.model == REAL_MODEL)
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.no_grad():  # and the caller's grad mode stays as it was
        return measure(args, argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The prompts, the methods, their timed repeats and the results file."""
    models, tok = load_models(args)
    gens = {d: Generator(m, tok) for d, m in models.items()}
    gen = next(iter(gens.values()))  # the first dtype's
    if args.prefix:
        return main_prefix(args, gen, args.repeats, argv)
    prompts = gen.render_prompts(conversations(args.n_prompts))
    lens = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    n_params = sum(p.numel() for p in gen.model.parameters())
    print(
        f"model: {args.model or 'small preset (random init)'}, {n_params / 1e6:.1f}M parameters; "
        f"{len(prompts)} prompts, {min(lens)}-{max(lens)} tokens (median {statistics.median(lens):.0f}); "
        f"{args.max_new_tokens} new tokens, batch size {args.batch_size}, {torch.get_num_threads()} threads",
        flush=True,
    )
    eos = sorted(gen.end_ids)
    methods = generation_methods(args, models, gens, tok, prompts, eos)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    # warm-up (untimed): allocator, kernels, lazy imports
    for m in models.values():
        run_naive(m, tok, prompts, args.max_new_tokens, eos, limit=2)
    for name, fn in methods.items():
        if not name.startswith("naive"):
            fn()
    timing = time_repeats(methods, args.repeats, args.wait_idle)
    result = throughput_result(args, timing, list(models), n_params, lens, eos)
    result["machine"] = {
        **machine_info(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_idle_before_repeats": [None if x is None else round(x, 2) for x in timing.idle_seen],
    }
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["command"] = command_of(argv)
    print_throughput(result, timing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


def load_models(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The model in each dtype asked (--model, or the `small` preset built in a temporary directory)
    with SDPA attention, and its tokenizer."""
    from instillm.models.loading import load_model, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="instillm-bench-") as tmp:
        model_dir = args.model
        if model_dir is None:
            from instillm.models.factory import init_model

            model_dir = init_model(preset="small", output_dir=Path(tmp) / "small", seed=0)
        dtypes = list(DTYPES) if args.dtype == "best" else [args.dtype]
        models = {d: load_model(model_dir, dtype=DTYPES[d], attn_implementation="sdpa") for d in dtypes}
        return models, load_tokenizer(model_dir)


def generation_methods(
    args: argparse.Namespace,
    models: dict[str, Any],
    gens: dict[str, Generator],
    tok: Any,
    prompts: list[str],
    eos: list[int],
) -> dict[str, Callable[[], list[list[int]]]]:
    """The timed methods: naive, HF batched and instillm in each dtype (one dtype: today's keys), instillm's
    variants (torch's own products, decode through the model's modules) and with --ablations its options;
    `eos`: the stop token ids the naive loop and HF's generate stop at."""
    opts = GenerateOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    new, bs = args.max_new_tokens, args.batch_size
    methods: dict[str, Callable[[], list[list[int]]]] = {}
    for d, m in models.items():
        at = "" if len(models) == 1 else f"@{d}"
        methods[f"naive{at}"] = lambda m=m: run_naive(m, tok, prompts, new, eos)
        methods[f"hf_batched{at}"] = lambda m=m: run_hf_batched(m, tok, prompts, new, eos, bs)
        methods[f"instillm{at}"] = lambda g=gens[d]: run_instillm(g, prompts, opts)
    if len(models) > 1:
        return methods
    model, gen = next(iter(models.values())), next(iter(gens.values()))
    if gen.transposed_products:  # the default here: also time torch's own products
        plain = Generator(model, tok, transposed_products=False)
        methods["instillm_torch_products"] = lambda: run_instillm(plain, prompts, opts)
    if gen.feature_major:  # likewise: also time decode steps through the model's modules
        modules = Generator(model, tok, feature_major=False)
        methods["instillm_model_decode"] = lambda: run_instillm(modules, prompts, opts)
    if args.ablations:
        for name, option in (
            ("instillm_padded_prefill", {"prefill_tokens": 1 << 30}),
            ("instillm_no_shared_prefix", {"min_shared_prefix": 0}),
            ("instillm_prefill_1_prompt", {"prefill_tokens": 1}),
        ):
            variant = GenerateOptions(max_new_tokens=new, batch_size=bs, **option)
            methods[name] = lambda v=variant: run_instillm(gen, prompts, v)
    return methods


@dataclass
class Timing:
    """The timed repeats: each method's outputs (the same in every repeat), wall and CPU seconds."""

    outputs: dict[str, list] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)
    idle_seen: list[float | None] = field(default_factory=list)

    def tokens(self, name: str) -> int:
        return sum(len(x) for x in self.outputs[name])

    def tokens_per_s(self) -> dict[str, float]:
        return {name: self.tokens(name) / statistics.median(self.seconds[name]) for name in self.seconds}

    def identical_to_naive(self) -> dict[str, bool]:
        """Each method's greedy outputs against the naive loop's in the same dtype."""
        return {name: self.outputs[name] == self.outputs[naive_of(name)] for name in self.seconds}

    def best_of_each(self) -> dict[str, str]:
        """naive, hf_batched, instillm: the key of each one's fastest dtype."""
        tps = self.tokens_per_s()
        return {base: fastest(tps, base) for base in ("naive", "hf_batched", "instillm")}


def time_repeats(methods: dict[str, Callable[[], list[list[int]]]], repeats: int, wait_idle_s: float) -> Timing:
    """Each method once per repeat, in turn; greedy outputs must not change between repeats."""
    t = Timing(seconds={name: [] for name in methods}, cpu_seconds={name: [] for name in methods})
    for r in range(repeats):
        t.idle_seen.append(wait_idle(wait_idle_s) if wait_idle_s else cpu_idle_fraction(0.5))
        for name, fn in methods.items():
            out, dt, cpu = timed(fn)
            t.seconds[name].append(dt)
            t.cpu_seconds[name].append(cpu)
            if name in t.outputs and t.outputs[name] != out:
                raise SystemExit(f"{name}: greedy outputs changed between repeats")
            t.outputs[name] = out
        idle = f" (CPU idle before: {t.idle_seen[-1]:.0%})" if t.idle_seen[-1] is not None else ""
        print(
            f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in t.seconds.items()) + idle,
            flush=True,
        )
    return t


def throughput_result(
    args: argparse.Namespace, t: Timing, dtypes: list[str], n_params: int, lens: list[int], eos: list[int]
) -> dict[str, Any]:
    """The results' keys: each method headlined in its fastest dtype, identical outputs within a dtype."""
    methods, tps, same, best = list(t.seconds), t.tokens_per_s(), t.identical_to_naive(), t.best_of_each()
    opts = GenerateOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    result: dict[str, Any] = {
        "naive_tokens_per_s": round(tps[best["naive"]], 1),
        "hf_batched_tokens_per_s": round(tps[best["hf_batched"]], 1),
        "instillm_tokens_per_s": round(tps[best["instillm"]], 1),
        "speedup_vs_naive": round(tps[best["instillm"]] / tps[best["naive"]], 2),
        "speedup_vs_hf_batched": round(tps[best["instillm"]] / tps[best["hf_batched"]], 2),
        "hf_batched_speedup_vs_naive": round(tps[best["hf_batched"]] / tps[best["naive"]], 2),
        # greedy tokens equal the naive loop's in the same dtype (every dtype measured)
        "identical_outputs": all(same[k] for k in methods if k.partition("@")[0] == "instillm"),
        "hf_batched_identical_outputs": all(same[k] for k in methods if k.partition("@")[0] == "hf_batched"),
        "dtype_of": {base: key.partition("@")[2] or dtypes[0] for base, key in best.items()},
        "tokens_per_s_by_method": {k: round(v, 1) for k, v in tps.items()},
        "generated_tokens": {k: t.tokens(k) for k in methods},
        "tokens_per_cpu_s": {k: round(t.tokens(k) / statistics.median(t.cpu_seconds[k]), 1) for k in methods},
        "n_stopped_early": sum(len(x) < args.max_new_tokens for x in t.outputs[best["naive"]]),
        "seconds": {k: [round(x, 3) for x in v] for k, v in t.seconds.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in t.cpu_seconds.items()},
        "settings": {
            "model": str(args.model) if args.model else "small preset, seed 0 (random init)",
            "n_params": n_params,
            "dtype": args.dtype,
            "attn_implementation": "sdpa",
            "n_prompts": len(lens),
            "prompt_tokens": {
                "min": min(lens),
                "median": statistics.median(lens),
                "max": max(lens),
                "total": sum(lens),
            },
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "stop_token_ids": eos,
            "repeats": args.repeats,
            "statistic": "median of the timed repeats (warm-up excluded)",
            "quick": args.quick,
            "instillm_options": dict(vars(opts)),
        },
    }
    for name in methods:
        if name.startswith("instillm_"):
            result[f"{name}_tokens_per_s"] = round(tps[name], 1)
            result[f"{name}_identical_outputs"] = same[name]
    return result


def print_throughput(result: dict[str, Any], t: Timing) -> None:
    tps, best, same = t.tokens_per_s(), t.best_of_each(), t.identical_to_naive()
    print()
    print(f"{'method':<28}{'tokens/s':>10}{'median s':>10}{'CPU s':>8}{'vs naive':>10}  identical to naive")
    for name in t.seconds:
        med, cpu = statistics.median(t.seconds[name]), statistics.median(t.cpu_seconds[name])
        vs = tps[name] / tps[best["naive"]]
        print(f"{name:<28}{tps[name]:>10.1f}{med:>10.2f}{cpu:>8.2f}{vs:>9.2f}x  {'yes' if same[name] else 'NO'}")
    print(f"fastest of each: {best}")
    print(
        f"\ninstillm vs HF batched generate: {result['speedup_vs_hf_batched']:.2f}x; "
        f"load average before/after: {result['machine']['loadavg_before'][0]} / {result['machine']['loadavg_after'][0]}"
    )


# --------------------------------------------------------------------------------------------
# --prefix


def self_instruct_prompts(gen: Generator, n: int, room: int) -> list[list[int]]:
    """Token ids of the Self-Instruct pipeline's own prompts for its seed instructions: stage 2
    (is it classification?) and stage 3 (instances), each a long fixed few-shot template + the
    instruction; those that leave `room` tokens for the answer."""
    from instillm.synth.self_instruct import clf_prompt, instance_prompt, load_seed_tasks

    tasks = load_seed_tasks()
    texts = [f(t.instruction) for t in tasks for f in (clf_prompt, lambda i: instance_prompt(i, False))]
    ids = [list(x) for x in gen.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    fitting = [x for x in ids if len(x) + room <= gen.max_length]
    return fitting[::2][: n // 2] + fitting[1::2][: n - n // 2] if len(fitting) > n else fitting


def run_continuous(gen: Generator, prompts: list[list[int]], opts: GenerateOptions, batch: int, reuse: bool):
    """Continuous batching of `prompts`, with or without the prefix cache: (tokens per prompt, tokens prefilled)."""
    from instillm.llm.continuous import DecodeRow, PrefixCache, decode_all

    rows = [DecodeRow(i, p, 0, options=opts) for i, p in enumerate(prompts)]
    done = decode_all(gen, rows, batch, PrefixCache(max_tokens=16384) if reuse else None)
    out = [r.output for r in rows]
    return [o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else []) for o in out], done


def run_static(gen: Generator, prompts: list[list[int]], opts: GenerateOptions):
    """The static generator on `prompts`: (tokens per prompt, a record of the prompt tokens it prefilled)."""
    before = gen.prefilled_tokens
    out = run_instillm_ids(gen, prompts, opts)
    return out, SimpleNamespace(prefilled_tokens=gen.prefilled_tokens - before)


def main_prefix(args: argparse.Namespace, gen: Generator, repeats: int, argv: list[str] | None = None) -> dict:
    """Self-Instruct prompts decoded with and without shared-prefix reuse: tokens/s and identical outputs."""
    n = args.n_prompts if args.n_prompts != 64 else 32
    prompts = self_instruct_prompts(gen, n, args.max_new_tokens)
    if not prompts:
        sys.exit(
            f"generation_throughput: no Self-Instruct prompt and {args.max_new_tokens} new tokens fit the model's "
            f"{gen.max_length} positions: lower --max-new-tokens or use a model with a longer context"
        )
    opts = GenerateOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    lens = [len(p) for p in prompts]
    print(f"{len(prompts)} Self-Instruct prompts, {min(lens)}-{max(lens)} tokens; {args.max_new_tokens} new tokens")
    unshared = GenerateOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, min_shared_prefix=0)
    methods = {
        "static": lambda: run_static(gen, prompts, opts),
        "static_no_shared_prefix": lambda: run_static(gen, prompts, unshared),
        "continuous": lambda: run_continuous(gen, prompts, opts, args.batch_size, reuse=False),
        "continuous_prefix": lambda: run_continuous(gen, prompts, opts, args.batch_size, reuse=True),
    }
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {k: [] for k in methods}
    outputs: dict[str, list] = {}
    prefilled: dict[str, int] = {}
    for r in range(repeats):
        for name, fn in methods.items():
            (out, batch), dt, _ = timed(fn)
            seconds[name].append(dt)
            outputs[name] = out
            if batch is not None:
                prefilled[name] = batch.prefilled_tokens
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()), flush=True)
    tokens = {k: sum(len(x) for x in v) for k, v in outputs.items()}
    tps = {k: tokens[k] / statistics.median(seconds[k]) for k in methods}
    result = {
        "speedup": round(tps["continuous_prefix"] / tps["continuous"], 2),
        "speedup_vs_static": round(tps["continuous_prefix"] / tps["static"], 2),
        "static_speedup": round(tps["static"] / tps["static_no_shared_prefix"], 2),
        "identical_outputs": all(out == outputs["continuous"] for out in outputs.values()),
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "prompt_tokens_prefilled": {**prefilled, "all": sum(lens)},
        "seconds": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "settings": {
            "model": str(args.model) if args.model else "small preset, seed 0 (random init)",
            "prompts": len(prompts),
            "prompt_tokens": {"min": min(lens), "median": statistics.median(lens), "max": max(lens)},
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "repeats": repeats,
        },
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "command": command_of(argv),
    }
    print(f"\n{'method':<26}{'tokens/s':>10}{'prefilled':>11}")
    for k in methods:
        print(f"{k:<26}{tps[k]:>10.1f}{prefilled[k]:>11d}")
    print(f"speedup (prefix reuse): {result['speedup']}x; identical outputs: {result['identical_outputs']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


def run_instillm_ids(gen: Generator, prompts: list[list[int]], opts: GenerateOptions) -> list[list[int]]:
    """The static generator on token ids (tokens per prompt, a stop token included)."""
    return [
        o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else [])
        for o in gen.generate_ids(prompts, opts)
    ]


if __name__ == "__main__":
    main()
