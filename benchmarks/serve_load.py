"""Load test of `instillm serve`: requests/s and tokens/s at 1, 8 and 32 concurrent clients.

    .venv/bin/python benchmarks/serve_load.py --quick
    .venv/bin/python benchmarks/serve_load.py [--model DIR] [--preset small] [--max-tokens 32]
        [--requests-per-client 4] [--concurrency 1 8 32] [--threads 1]

Builds the `small` preset (random weights, ~28M parameters) in a temporary directory unless
`--model` is given (`--quick`: the `tiny` preset, 16 new tokens, 3 requests per client). For each
server mode it starts `instillm serve` in a subprocess (so the client threads do not share the
server's GIL), with `OMP_NUM_THREADS=--threads`:

  batched  --max-batch-size 32 (concurrent requests decoded together)
  serial   --max-batch-size 1  (one request at a time)

and for each concurrency level c, c client threads (httpx) each send `--requests-per-client`
greedy chat requests (max_tokens fixed, different instructions) back to back. requests/s is
finished requests over wall time; tokens/s counts `usage.completion_tokens`; latencies are per
request. `identical_outputs` is true when both modes gave every request the same text (greedy
batched == one at a time). Results, with the load average (the machine may be shared), go to
benchmarks/results/serve_load.json (`--quick`: serve_load_quick.json).

    .venv/bin/python benchmarks/serve_load.py --hostile [--quick] [--clients 4] [--requests-per-client 40]

    .venv/bin/python benchmarks/serve_load.py --mixed [--quick] [--clients 32] [--requests-per-client 3]
        [--priority-rows N] [--repeats N]

`--mixed` compares the schedulers: the same workload (32 clients sending requests back to back,
max_tokens drawn from 8-256, a quarter of them short (<= 32), temperatures 0/0.7/1.0, seeded) on
a `--scheduler continuous` server, with `--priority-rows N` also a `--scheduler continuous
--priority-rows N` one, and a `--scheduler static` server. Reported: `throughput_ratio`
(continuous / static requests/s), `short_p50_ratio` (the short requests' p50 latency under
load / the same requests one at a time on a fresh, idle server of the same options, whose prefix
cache has not seen them; targets >= 2 and <= 1.5;
`steady_short_p50_ratio` leaves out each client's first request, which all 32 send at once) and
whether greedy requests got the same text from both. `--repeats N` runs each continuous server N
times (a fresh server each time) and reports medians, each ratio taken within its repeat (the
static server, the slow baseline, runs once). Results go to
benchmarks/results/serve_load_mixed.json (`--quick`: serve_load_mixed_quick.json).

`--hostile` measures instead what one hostile client does to everybody else. One batched server
(default limits: 4 MiB bodies, 256 rows); `--clients` threads send small greedy chat requests
(`--max-tokens`) back to back, first alone ("quiet"), then while one hostile thread loops over:
a maximum-size chat body (refused from its length, untokenized), a maximum-size completions body
(256 prompts that are each short enough to be tokenized, then refused for their token count),
and a maximum-size stream (n=128, max_tokens up to the context) abandoned at its first text.
Reported: the small requests' p50/p99 latency in both phases and p99 hostile / quiet (the
target: within 2x), and what the hostile client got. Results go to
benchmarks/results/serve_load_hostile.json (`--quick`: serve_load_hostile_quick.json).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "serve_load.json"
RESULTS_QUICK = REPO / "benchmarks" / "results" / "serve_load_quick.json"
RESULTS_HOSTILE = REPO / "benchmarks" / "results" / "serve_load_hostile.json"
RESULTS_HOSTILE_QUICK = REPO / "benchmarks" / "results" / "serve_load_hostile_quick.json"
RESULTS_MIXED = REPO / "benchmarks" / "results" / "serve_load_mixed.json"
RESULTS_MIXED_QUICK = REPO / "benchmarks" / "results" / "serve_load_mixed_quick.json"
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the server's default --max-request-bytes
MAX_ROWS = 256  # and --max-rows
MODES = {"batched": 32, "serial": 1}

TOPICS = [
    "the ocean",
    "bread",
    "a binary search",
    "autumn rain",
    "Python tuples",
    "the moon",
    "chess",
    "a bakery",
    "volcanoes",
    "trains",
    "coffee",
    "gardening",
    "jazz",
    "glaciers",
    "bicycles",
    "owls",
]
ASKS = [
    "Write a sentence about {}.",
    "Give three facts about {}.",
    "Explain {} to a child.",
    "Write a haiku about {}.",
    "What is interesting about {}?",
]


def instruction(i: int) -> str:
    """The i-th benchmark instruction (different words and lengths)."""
    return ASKS[i % len(ASKS)].format(TOPICS[(i * 7) % len(TOPICS)]) + " Please." * (i % 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: Path, max_batch_size: int, threads: int, log: Path, *extra: str
) -> tuple[subprocess.Popen, str]:
    """`instillm serve` in a subprocess (its output to `log`); it and its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "instillm.cli",
        "serve",
        str(model),
        "--port",
        str(port),
        "--model-name",
        "bench",
        "--max-batch-size",
        str(max_batch_size),
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(url + "/models", timeout=2).raise_for_status()
            return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start within 180 s")


@contextlib.contextmanager
def serving(
    model: Path, max_batch_size: int, threads: int, log: Path, warm_up: Callable[[httpx.Client, str], Any], *extra: str
) -> Iterator[str]:
    """`start_server`'s server for the block, after `warm_up(client, url)`: its base URL; terminated after."""
    proc, url = start_server(model, max_batch_size, threads, log, *extra)
    try:
        with httpx.Client() as client:
            warm_up(client, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def warm_up_small(max_tokens: int, client: httpx.Client, url: str) -> None:
    """Two small greedy requests outside the measured ones."""
    for i in range(2):
        one_request(client, url, 10_000 + i, max_tokens)


def one_request(client: httpx.Client, url: str, i: int, max_tokens: int) -> tuple[float, int, str]:
    """(latency s, completion tokens, text) of one greedy chat request."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": instruction(i)}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    t0 = time.perf_counter()
    r = client.post(url + "/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    data = r.json()
    return time.perf_counter() - t0, data["usage"]["completion_tokens"], data["choices"][0]["message"]["content"]


def closed_loop(clients: int, per_client: int, request: Callable[[httpx.Client, int], Any]) -> tuple[dict, float]:
    """`clients` threads each sending `per_client` requests back to back, request i = client * per_client + k
    (`request(http_client, i)`); returns the results by i and the wall seconds from the common start."""
    results: dict[int, Any] = {}
    barrier = threading.Barrier(clients + 1)

    def client_loop(c: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            for k in range(per_client):
                results[c * per_client + k] = request(client, c * per_client + k)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(results) != clients * per_client:
        raise SystemExit(f"only {len(results)} of {clients * per_client} requests succeeded")
    return results, wall


def load(url: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    """`concurrency` threads each sending `per_client` requests back to back."""
    results, wall = closed_loop(concurrency, per_client, lambda client, i: one_request(client, url, i, max_tokens))
    n = len(results)
    lat = sorted(r[0] for r in results.values())
    tokens = sum(r[1] for r in results.values())
    return {
        "concurrency": concurrency,
        "requests": n,
        "seconds": round(wall, 3),
        "requests_per_s": round(n / wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "p50_latency_s": round(statistics.median(lat), 3),
        "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "texts": {i: results[i][2] for i in sorted(results)},
    }


def run_mode(model: Path, mode: str, args: argparse.Namespace, log: Path) -> list[dict]:
    warm_up = functools.partial(warm_up_small, args.max_tokens)
    with serving(model, MODES[mode], args.threads, log, warm_up, "--device", args.device) as url:
        rows = []
        for c in args.concurrency:
            measured = load(url, c, args.requests_per_client, args.max_tokens)
            row = {"mode": mode, "max_batch_size": MODES[mode], **measured}
            print(
                f"  {mode:8s} c={c:<3d} {row['requests_per_s']:8.2f} req/s {row['tokens_per_s']:9.1f} tok/s", flush=True
            )
            rows.append(row)
        return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'mode':8s} {'batch':>5s} {'clients':>7s} {'requests':>8s} {'req/s':>8s} {'tok/s':>9s} "
        f"{'p50 s':>7s} {'p95 s':>7s}"
    )
    for r in rows:
        print(
            f"{r['mode']:8s} {r['max_batch_size']:5d} {r['concurrency']:7d} {r['requests']:8d} "
            f"{r['requests_per_s']:8.2f} {r['tokens_per_s']:9.1f} {r['p50_latency_s']:7.3f} "
            f"{r['p95_latency_s']:7.3f}"
        )


# --------------------------------------------------------------------------------------------
# --hostile


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def small_latencies(url: str, clients: int, per_client: int, max_tokens: int) -> list[float]:
    """Latencies of `clients` threads each sending `per_client` small chat requests back to back."""
    results, _ = closed_loop(clients, per_client, lambda client, i: one_request(client, url, i, max_tokens)[0])
    return list(results.values())


def summary(lat: list[float]) -> dict:
    return {
        "requests": len(lat),
        "p50_latency_s": round(percentile(lat, 0.5), 3),
        "p99_latency_s": round(percentile(lat, 0.99), 3),
        "max_latency_s": round(max(lat), 3),
    }


def big_chat_body() -> bytes:
    """A chat request of MAX_REQUEST_BYTES: one message far longer than any context."""

    def body(text: str) -> bytes:
        return json.dumps({"model": "bench", "messages": [{"role": "user", "content": text}], "max_tokens": 8}).encode()

    room, unit = MAX_REQUEST_BYTES - len(body("")), "All work and no play makes a dull server. "
    return body((unit * (room // len(unit) + 1))[:room])


def big_prompts_body() -> bytes:
    """A completions request of about MAX_REQUEST_BYTES: MAX_ROWS prompts of ~16k characters each."""
    prompt = "the quick brown fox jumps over the lazy dog " * ((MAX_REQUEST_BYTES - 4096) // MAX_ROWS // 44)
    return json.dumps({"model": "bench", "prompt": [prompt] * MAX_ROWS, "max_tokens": 8}).encode()


class Hostile:
    """One client looping over maximum-size bodies and abandoned maximum-size streams until stopped."""

    def __init__(self, url: str, context: int) -> None:
        self.url, self.context = url, context
        self.bodies = {"chat": big_chat_body(), "prompts": big_prompts_body()}
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}
        self.first_text_s: list[float] = []

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def post_big(self, client: httpx.Client, kind: str) -> None:
        path = "/chat/completions" if kind == "chat" else "/completions"
        r = client.post(
            self.url + path, content=self.bodies[kind], headers={"Content-Type": "application/json"}, timeout=120
        )
        self.count(f"{kind}_body_{r.status_code}")

    def abandon_stream(self, client: httpx.Client) -> None:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": "Write a long story."}],
            "n": 128,
            "max_tokens": self.context - 64,
            "temperature": 0,
            "stream": True,
        }
        t0 = time.perf_counter()
        with client.stream("POST", self.url + "/chat/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next((x for x in lines if '"content": "' in x and '"content": ""' not in x), None)
            self.first_text_s.append(time.perf_counter() - t0)
        self.count(f"stream_{r.status_code}_abandoned")

    def run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                for step in (
                    lambda: self.post_big(client, "chat"),
                    lambda: self.post_big(client, "prompts"),
                    lambda: self.abandon_stream(client),
                ):
                    if not self.stop.is_set():
                        step()


def hostile_phase(url: str, args: argparse.Namespace) -> tuple[list[float], Hostile]:
    """Small requests' latencies while a Hostile client runs beside them."""
    context = httpx.get(url + "/models", timeout=10).json()["data"][0]["max_model_len"]
    hostile = Hostile(url, context)
    thread = threading.Thread(target=hostile.run, daemon=True)
    thread.start()
    time.sleep(1.0)  # let it get going
    lat = small_latencies(url, args.clients, args.requests_per_client, args.max_tokens)
    hostile.stop.set()
    thread.join(300)
    return lat, hostile


def run_hostile(model: Path, args: argparse.Namespace, log: Path) -> dict:
    """Quiet, then hostile; the small requests' latencies of both."""
    warm_up = functools.partial(warm_up_small, args.max_tokens)
    with serving(model, MODES["batched"], args.threads, log, warm_up, "--device", args.device) as url:
        quiet = small_latencies(url, args.clients, args.requests_per_client, args.max_tokens)
        loud, hostile = hostile_phase(url, args)
    ratio = percentile(loud, 0.99) / percentile(quiet, 0.99)
    return {
        "quiet": summary(quiet),
        "hostile": summary(loud),
        "p99_ratio": round(ratio, 2),
        "target_met": ratio <= 2.0,
        "hostile_client": hostile.counts,
        "hostile_stream_first_text_s": round(statistics.median(hostile.first_text_s), 3)
        if hostile.first_text_s
        else None,
    }


def print_hostile(res: dict) -> None:
    for phase in ("quiet", "hostile"):
        r = res[phase]
        print(
            f"{phase:8s} {r['requests']:4d} small requests  p50 {r['p50_latency_s']:7.3f} s  "
            f"p99 {r['p99_latency_s']:7.3f} s  max {r['max_latency_s']:7.3f} s"
        )
    print(f"p99 hostile / quiet: {res['p99_ratio']} (target <= 2: {'met' if res['target_met'] else 'NOT met'})")
    print(f"hostile client: {res['hostile_client']}")


def gpu_name(device: str) -> str | None:
    """The CUDA card's name when the servers run on one, else None."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0)


def on_device(path: Path, device: str) -> Path:
    """A default results file, with `_cuda` before its suffix when the servers run on a CUDA card."""
    return path.with_name(f"{path.stem}_cuda{path.suffix}") if device == "cuda" else path


def machine(load_before: tuple, device: str = "cpu") -> dict:
    from _machine import cpu_name

    return {
        "cpu": cpu_name(),
        "device": device,
        "gpu": gpu_name(device),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def main_hostile(args: argparse.Namespace, model: Path, tmp: Path, load_before: tuple) -> None:
    res = run_hostile(model, args, tmp / "serve-hostile.log")
    print_hostile(res)
    path = args.out or on_device(RESULTS_HOSTILE_QUICK if args.quick else RESULTS_HOSTILE, args.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "benchmark": "serve_load_hostile",
                "quick": args.quick,
                "model": str(args.model or f"preset:{args.preset}"),
                "max_tokens": args.max_tokens,
                "clients": args.clients,
                "requests_per_client": args.requests_per_client,
                "server_threads": args.threads,
                "max_request_bytes": MAX_REQUEST_BYTES,
                "max_rows": MAX_ROWS,
                **res,
                "machine": machine(load_before, args.device),
            },
            indent=1,
        )
    )
    print(f"→ {path}")


# --------------------------------------------------------------------------------------------
# --mixed

SHORT = 32  # a request with max_tokens <= SHORT is "short"


def mixed_request(i: int) -> dict:
    """Request i of the mixed workload: max_tokens 8-256 (a quarter of them short), mixed temperatures."""
    import random

    rng = random.Random(i)
    max_tokens = rng.randint(8, SHORT) if i % 4 == 0 else rng.randint(8, 256)
    temperature = (0.0, 0.0, 0.7, 1.0)[rng.randrange(4)]
    return {
        "model": "bench",
        "messages": [{"role": "user", "content": instruction(i)}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": i,
    }


def send(client: httpx.Client, url: str, body: dict) -> tuple[float, str]:
    """(latency s, text) of one chat request."""
    t0 = time.perf_counter()
    r = client.post(url + "/chat/completions", json=body, timeout=1200)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["choices"][0]["message"]["content"]


def mixed_load(url: str, clients: int, per_client: int) -> dict:
    """`clients` threads each sending `per_client` mixed requests back to back: req/s and per-request results."""
    results, wall = closed_loop(clients, per_client, lambda client, i: send(client, url, mixed_request(i)))
    return {"seconds": wall, "requests_per_s": len(results) / wall, "results": results}


def idle_short_latencies(url: str, indices: list[int]) -> list[float]:
    """The short requests of the workload, one at a time on an idle server."""
    with httpx.Client() as client:
        return [send(client, url, mixed_request(i))[0] for i in indices]


def mixed_servers(args: argparse.Namespace) -> dict[str, list[str]]:
    """The servers --mixed compares, by name: their `instillm serve` options."""
    servers = {"continuous": ["--scheduler", "continuous"]}
    if args.priority_rows:
        servers["priority"] = ["--scheduler", "continuous", "--priority-rows", str(args.priority_rows)]
    servers["static"] = ["--scheduler", "static"]
    return servers


def run_mixed_scheduler(model: Path, name: str, options: list[str], args: argparse.Namespace, log: Path) -> dict:
    """The mixed workload on one server; for a continuous one also the short requests idle.

    Their idle latency is measured on a fresh server (its prefix cache cold, as for a request it
    has not seen): the loaded server has every prompt of the workload cached, so there the short
    requests skip their prefill (`short_idle_warm_p50_s`, recorded beside it).
    """
    with serving(model, 32, args.threads, log, warm_up_mixed, *options, "--device", args.device) as url:
        loaded = mixed_load(url, args.clients, args.requests_per_client)
        short = [i for i in loaded["results"] if mixed_request(i)["max_tokens"] <= SHORT]
        steady = [i for i in short if i % args.requests_per_client]
        out = {
            "scheduler": name,
            "options": " ".join(options),
            "requests_per_s": round(loaded["requests_per_s"], 3),
            "seconds": round(loaded["seconds"], 2),
            "short_requests": len(short),
            "short_p50_s": p50(loaded["results"][i][0] for i in short),
            "steady_short_requests": len(steady),
            "steady_short_p50_s": p50(loaded["results"][i][0] for i in steady),
            "texts": {i: loaded["results"][i][1] for i in sorted(loaded["results"])},
        }
        if name != "static":
            warm = dict(zip(short, idle_short_latencies(url, short)))
            out["short_idle_warm_p50_s"] = p50(warm.values())
            out["steady_short_idle_warm_p50_s"] = p50(warm[i] for i in steady)
    if name != "static":
        idle_log = log.with_suffix(".idle.log")
        with serving(model, 32, args.threads, idle_log, warm_up_mixed, *options, "--device", args.device) as url:
            idle = dict(zip(short, idle_short_latencies(url, short)))
        out["short_idle_p50_s"], out["steady_short_idle_p50_s"] = p50(idle.values()), p50(idle[i] for i in steady)
    print(f"  {name:10s} {out['requests_per_s']:.3f} req/s, short p50 {out['short_p50_s']} s", flush=True)
    return out


def warm_up_mixed(client: httpx.Client, url: str) -> None:
    """One request outside the mixed workload."""
    send(client, url, mixed_request(10_000))


def p50(values: Iterable[float]) -> float:
    return round(percentile(list(values), 0.5), 3)


def compare(new: dict, old: dict) -> dict:
    """Server `new` against the static server `old`: the ratios and whether greedy texts agree."""
    greedy = [i for i in new["texts"] if mixed_request(i)["temperature"] == 0]
    return {
        "throughput_ratio": round(new["requests_per_s"] / old["requests_per_s"], 3),
        "short_p50_ratio": round(new["short_p50_s"] / new["short_idle_p50_s"], 3),
        "steady_short_p50_ratio": round(new["steady_short_p50_s"] / new["steady_short_idle_p50_s"], 3),
        # against the idle latency with the prompts already in the prefix cache (how runs before session 8 measured)
        "short_p50_ratio_warm_idle": round(new["short_p50_s"] / new["short_idle_warm_p50_s"], 3),
        "identical_greedy_outputs": all(new["texts"][i] == old["texts"][i] for i in greedy),
        "greedy_requests": len(greedy),
        "sampled_requests_identical": sum(new["texts"][i] == old["texts"][i] for i in new["texts"] if i not in greedy),
    }


def combine(runs: list[dict], old: dict) -> tuple[dict, dict]:
    """A continuous server's repeats against the static server: the median of every figure and
    ratio over the repeats (each ratio taken within its repeat), their lists under `runs`; and
    the combined ratios alone."""
    ratios = [compare(r, old) for r in runs]
    figures = [{k: v for k, v in r.items() if k != "texts"} for r in runs]
    out: dict = {}
    for k, v in figures[0].items():
        out[k] = round(statistics.median(f[k] for f in figures), 3) if isinstance(v, float) else v
    combined: dict = {}
    for k in ratios[0]:
        values = [r[k] for r in ratios]
        combined[k] = all(values) if isinstance(values[0], bool) else round(statistics.median(values), 3)
    combined["sampled_requests_identical"] = min(r["sampled_requests_identical"] for r in ratios)
    out.update(combined)
    if len(runs) > 1:
        out["runs"] = [{**f, **r} for f, r in zip(figures, ratios)]
    return out, combined


def run_mixed(model: Path, args: argparse.Namespace, tmp: Path) -> dict:
    """Continuous (and with --priority-rows) vs static on one workload: throughput, short requests' latency.

    Each continuous server runs `--repeats` times (a fresh server each time), the static one once.
    """
    res = {}
    for name, options in mixed_servers(args).items():
        repeats = 1 if name == "static" else args.repeats
        res[name] = [run_mixed_scheduler(model, name, options, args, tmp / f"serve-{name}.log") for _ in range(repeats)]
    static = res.pop("static")[0]
    out = {name: combine(runs, static) for name, runs in res.items()}
    static.pop("texts")
    continuous, ratios = out["continuous"]
    result = {"continuous": continuous, "static": static, **ratios}
    if "priority" in out:
        result["priority"] = {**out["priority"][0], "priority_rows": args.priority_rows}
    return result


def print_mixed(res: dict) -> None:
    head = ("req/s", "short p50 s", "throughput_ratio", "short_p50_ratio", "steady_short_p50_ratio", "vs warm idle")
    print(f"\n{'server':10s} " + " ".join(f"{h:>{max(len(h), 8)}s}" for h in head))
    for name, r in (("continuous", {**res["continuous"], **res}), ("priority", res.get("priority"))):
        if r is not None:
            print(
                f"{name:10s} {r['requests_per_s']:8.3f} {r['short_p50_s']:11.3f} {r['throughput_ratio']:16.3f} "
                f"{r['short_p50_ratio']:15.3f} {r['steady_short_p50_ratio']:22.3f} "
                f"{r['short_p50_ratio_warm_idle']:12.3f}"
            )
    print(f"{'static':10s} {res['static']['requests_per_s']:8.3f} {res['static']['short_p50_s']:11.3f}")
    print(
        "targets: throughput_ratio >= 2, short_p50_ratio (loaded / idle) <= 1.5 (steady: without each client's "
        f"first request, sent together at the start); identical greedy outputs: {res['identical_greedy_outputs']}"
    )


def main_mixed(args: argparse.Namespace, model: Path, tmp: Path, load_before: tuple) -> None:
    res = run_mixed(model, args, tmp)
    print_mixed(res)
    path = args.out or on_device(RESULTS_MIXED_QUICK if args.quick else RESULTS_MIXED, args.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "serve_load_mixed",
        "quick": args.quick,
        "model": str(args.model or f"preset:{args.preset}"),
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "max_tokens_range": [8, 256],
        "short_max_tokens": SHORT,
        "server_threads": args.threads,
        "repeats": args.repeats,
        **res,
        "machine": machine(load_before, args.device),
    }
    path.write_text(json.dumps(record, indent=1))
    print(f"→ {path}")


# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a saved model directory (default: build --preset)")
    p.add_argument("--preset", default=None, help="tiny or small (default small; --quick: tiny)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 32; --quick 16)")
    p.add_argument("--requests-per-client", type=int, default=None, help="default 4; --quick 3")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    p.add_argument("--quick", action="store_true", help="tiny preset, fewer and shorter requests (~1-2 min)")
    p.add_argument("--hostile", action="store_true", help="small requests' latency beside a hostile client")
    p.add_argument("--mixed", action="store_true", help="continuous vs static batching on a mixed workload")
    p.add_argument(
        "--priority-rows",
        type=int,
        default=0,
        help="--mixed: also a continuous server with --priority-rows N (short requests first; 0: not run)",
    )
    p.add_argument(
        "--clients", type=int, default=None, help="--hostile: small-request clients (default 4; --quick 2); --mixed: 32"
    )
    p.add_argument("--repeats", type=int, default=1, help="--mixed: runs of each continuous server (medians reported)")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where the servers run their model (auto: CUDA when available; `_cuda` then ends the default file)",
    )
    p.add_argument("--out", type=Path, default=None, help="the results file (default: by mode, under results/)")
    args = p.parse_args()
    from instillm.models.loading import resolve_device

    args.device = resolve_device(args.device)
    args.preset = args.preset or ("tiny" if args.quick else "small")
    args.max_tokens = args.max_tokens or (16 if args.quick else 32)
    per_client = (25, 40) if args.hostile else (2, 3) if args.mixed else (3, 4)
    args.requests_per_client = args.requests_per_client or per_client[0 if args.quick else 1]
    args.clients = args.clients or (32 if args.mixed else 2 if args.quick else 4)
    return args


def build_model(args: argparse.Namespace, tmp: Path) -> Path:
    """--model, or the --preset built (random weights) in `tmp`."""
    if args.model is not None:
        return args.model
    import torch

    from instillm.models.factory import init_model

    torch.set_num_threads(args.threads)
    init_model(preset=args.preset, output_dir=tmp / args.preset, seed=0)
    return tmp / args.preset


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args, Path(tmp))
        if args.hostile:
            return main_hostile(args, model, Path(tmp), load_before)
        if args.mixed:
            return main_mixed(args, model, Path(tmp), load_before)
        rows = [r for mode in MODES for r in run_mode(model, mode, args, Path(tmp) / f"serve-{mode}.log")]
    by_mode = {m: [r for r in rows if r["mode"] == m] for m in MODES}
    identical = all(a["texts"] == b["texts"] for a, b in zip(by_mode["batched"], by_mode["serial"]))
    for r in rows:
        r.pop("texts")
    print_table(rows)
    print(f"identical_outputs (batched == serial, greedy): {identical}")
    path = args.out or on_device(RESULTS_QUICK if args.quick else RESULTS, args.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "benchmark": "serve_load",
                "quick": args.quick,
                "model": str(args.model or f"preset:{args.preset}"),
                "max_tokens": args.max_tokens,
                "requests_per_client": args.requests_per_client,
                "server_threads": args.threads,
                "identical_outputs": identical,
                "results": rows,
                "machine": machine(load_before, args.device),
            },
            indent=1,
        )
    )
    print(f"→ {path}")


if __name__ == "__main__":
    main()
