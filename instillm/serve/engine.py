"""The batching engine: one worker thread owns the model and decodes queued requests together.

Request handlers `submit` a `Job` (its rows: prompt token ids with one sampling seed each; `n`
samples of a prompt are `n` rows). The worker takes the first queued job, waits up to
`batch_wait_ms` for more (until `max_batch_size` rows), groups the jobs by `GenerateOptions`
and decodes each group in ONE `Generator.generate_ids` call. Rows carry their own seeds, so a
sampled answer does not depend on what else was in the batch, and greedy rows give the tokens
they give alone. A job's future resolves when the call it was decoded in returns.

A job whose client left is `cancel()`led: still queued, it is dropped (never decoded); being
decoded, its rows leave the batch at the next decode step (the generator's `should_stop`).

Streaming jobs get text deltas while the call runs (through the generator's `on_token`): the
text decoded so far, minus a hold-back that could still change (an incomplete UTF-8 character,
trailing spaces, a possible start of a stop string) and never past a stop string. The rest of
the text comes from the final output.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from instillm.llm.continuous import ContinuousBatch, DecodeRow, PrefixCache, check_prompt
from instillm.llm.generation import GenerateOptions, GenerationOutput, Generator, TokenCallback

logger = logging.getLogger(__name__)

Delta = Callable[[int, str], None]  # (row of the job, new text) — called from the worker thread
_STOP = object()


@dataclass
class Job:
    """One request's rows. `future` gets the outputs, one per row, in row order."""

    prompts: list[list[int]]
    seeds: list[int]
    options: GenerateOptions
    on_delta: Delta | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client left: drop the job if queued, stop its rows at the next decode step if running."""
        self.cancelled = True
        self.future.cancel()


@dataclass
class EngineStats:
    """What the worker did: `requests_per_call[k]` counts Generator calls that decoded k requests.

    `decoded_tokens` counts generated tokens (those of rows cancelled midway included),
    `cancelled_rows` the rows stopped early because their client left, `dropped_jobs` the jobs
    whose client left before they were decoded.
    """

    requests: int = 0
    rows: int = 0
    decoded_tokens: int = 0
    cancelled_rows: int = 0
    dropped_jobs: int = 0
    generate_calls: int = 0
    max_requests_per_call: int = 0
    requests_per_call: Counter = field(default_factory=Counter)
    steps: int = 0  # decode steps (continuous engine)
    priority_steps: int = 0  # of them, steps that left rows waiting for short requests' rows (priority_rows)
    max_rows_per_step: int = 0
    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens whose keys came from the prefix cache


class _TextStream:
    """Incremental detokenisation of one streamed row (worker thread only)."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], emit: Callable[[str], None]) -> None:
        self.tokenizer, self.stops, self.emit = tokenizer, stops, emit
        self.hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop string
        self.tokens: list[int] = []
        self.sent = 0  # characters emitted

    def add(self, token: int | None, finish: str | None) -> None:
        """Take one decode step's token; emit the text that can no longer change."""
        if token is not None:
            self.tokens.append(token)
        if finish is not None or token is None:
            return  # the final text (cut at a stop string) comes from the call's output
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        safe = len(text.rstrip("\ufffd "))
        for s in self.stops:
            i = text.find(s)
            if i >= 0:
                safe = min(safe, i)
        safe = min(safe, len(text) - self.hold)
        if safe > self.sent:
            self.emit(text[self.sent : safe])
            self.sent = safe


class _Worker:
    """A queue of jobs and the one thread that decodes them with `generator` (its `_run`)."""

    def __init__(self, generator: Generator, max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.stats = EngineStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="instillm-serve-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then end the worker thread; jobs sent after that fail."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Jobs the worker never took (queued after stop): each request hears that the engine stopped."""
        left = self._untaken()
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for job in left:
            if job is not _STOP and not job.future.done():
                job.future.set_exception(RuntimeError("the engine stopped before this request was decoded"))

    def _untaken(self) -> list:
        """Jobs taken from the queue but not yet decoded (none, unless a subclass holds some back)."""
        return []

    def submit(self, job: Job) -> Future:
        """Queue `job`; its future resolves to one GenerationOutput per row."""
        if self._thread is None:
            raise RuntimeError("the engine is not running (start() it first)")
        self._queue.put(job)
        return job.future


class BatchEngine(_Worker):
    """The static batcher: the worker decodes a collected batch to its end, then the next.

    Kept to compare against (`instillm serve --scheduler static`, benchmarks/serve_load.py --mixed).
    """

    def __init__(self, generator: Generator, max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        super().__init__(generator, max_batch_size, batch_wait_ms)
        self._held: deque[Job] = deque()  # taken from the queue but not fitting the last batch

    def _untaken(self) -> list:
        return list(self._held)

    # -- worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            jobs, stopping = self._collect()
            groups: dict[GenerateOptions, list[Job]] = {}
            for job in jobs:
                # False when the request was cancelled (client gone): nothing to decode then;
                # True makes the future uncancellable, so resolving it below cannot fail.
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(job.options, []).append(job)
                else:
                    self.stats.dropped_jobs += 1
            for options, group in groups.items():
                self._decode(options, group)
            if stopping:
                return

    def _next(self, timeout: float | None) -> Any:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _collect(self) -> tuple[list[Job], bool]:
        """The jobs of the next batch (up to max_batch_size rows) and whether to stop after it."""
        first = self._next(None)
        if first is _STOP:
            return [], True
        jobs, rows = [first], len(first.prompts)
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            job = self._next(max(0.0, deadline - time.monotonic()))
            if job is None:
                break
            if job is _STOP:
                return jobs, True
            if rows + len(job.prompts) > self.max_batch_size:
                self._held.appendleft(job)  # first in the next batch
                break
            jobs.append(job)
            rows += len(job.prompts)
        return jobs, False

    def _live(self, jobs: list[Job]) -> list[Job]:
        """`jobs` less those cancelled while an earlier group was decoded (resolved, dropped)."""
        for j in jobs:
            if j.cancelled:
                j.future.set_result([])
                self.stats.dropped_jobs += 1
        return [j for j in jobs if not j.cancelled]

    def _decode(self, options: GenerateOptions, jobs: list[Job]) -> None:
        """Decode the rows of `jobs` in one Generator call and resolve their futures."""
        jobs = self._live(jobs)
        if not jobs:
            return
        prompts = [p for j in jobs for p in j.prompts]
        seeds = [s for j in jobs for s in j.seeds]
        owners = [j for j in jobs for _ in j.prompts]
        try:
            outputs = self.generator.generate_ids(
                prompts,
                options,
                seeds=seeds,
                on_token=self._on_token(jobs, options.stop_strings),
                should_stop=lambda i: owners[i].cancelled,
            )
        except BaseException as e:  # every waiting request must hear of it
            logger.exception("generation failed for a batch of %d request(s)", len(jobs))
            for j in jobs:
                j.future.set_exception(e)
            return
        self._count(jobs, outputs)
        start = 0
        for j in jobs:
            j.future.set_result(outputs[start : start + len(j.prompts)])
            start += len(j.prompts)

    def _on_token(self, jobs: list[Job], stops: tuple[str, ...]) -> TokenCallback | None:
        """The generator's per-step callback feeding the text streams (None: nothing is streamed)."""
        streams = self._streams(jobs, stops)
        if all(s is None for s in streams):
            return None

        def on_token(index: int, token: int | None, finish: str | None) -> None:
            stream = streams[index]
            if stream is not None:
                stream.add(token, finish)

        return on_token

    def _streams(self, jobs: list[Job], stops: tuple[str, ...]) -> list[_TextStream | None]:
        """One text stream per row of the call (None for rows of non-streamed jobs)."""
        out: list[_TextStream | None] = []
        tokenizer = self.generator.tokenizer
        for j in jobs:
            for row in range(len(j.prompts)):
                emit = (lambda text, j=j, row=row: j.on_delta(row, text)) if j.on_delta else None
                out.append(_TextStream(tokenizer, stops, emit) if emit else None)
        return out

    def _count(self, jobs: list[Job], outputs: list[GenerationOutput]) -> None:
        s = self.stats
        s.requests += len(jobs)
        s.rows += len(outputs)
        s.decoded_tokens += sum(o.completion_tokens for o in outputs)
        s.cancelled_rows += sum(len(j.prompts) for j in jobs if j.cancelled)
        s.generate_calls += 1
        s.max_requests_per_call = max(s.max_requests_per_call, len(jobs))
        s.requests_per_call[len(jobs)] += 1


@dataclass
class _Pending:
    """A job in the continuous engine: its rows not yet admitted, those running, its outputs."""

    job: Job
    next: int = 0  # next row to admit
    live: int = 0  # rows in the batch
    done: int = 0
    outputs: list = field(default_factory=list)
    started: bool = False
    since: int = 0  # the engine's step count when the job was taken from the queue

    @property
    def rows(self) -> int:
        return len(self.job.prompts)


class Engine(_Worker):
    """Continuous batching: one worker thread, one running batch that requests join and leave at any step.

    A queued job's rows join the running batch at the next decode step (prefilled first, shared
    prompts once through the prefix cache), as long as it holds fewer than `max_batch_size` rows;
    jobs take free rows in turn, and one job holds at most `max_batch_size - reserve` rows alone
    and half of them beside other jobs, so a small request always finds room beside a large one
    and a large one does not slow the small ones' steps down by more than half a batch. A row
    leaves at the step it ends, and a job's future resolves as soon as its last row has.
    `batch_wait_ms` is waited only when the worker was idle (a burst of requests is prefilled
    together).

    `priority_rows` > 0 serves short requests first where a step costs more with more rows (a
    CPU). While a short request's row (at most `short_tokens` new tokens asked) is in the batch,
    a step decodes only the short requests' rows, and other rows up to `priority_rows` rows in
    all (fewest tokens to go first); the others wait, and long requests wait to join. A row or
    a queued request that has waited `4 * short_tokens` steps goes ahead anyway, so a flood of
    short requests slows long ones but never stops them. 0 (the default): every step decodes
    the whole batch.
    """

    def __init__(
        self,
        generator: Generator,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        prefix_cache_tokens: int = 4096,
        priority_rows: int = 0,
        short_tokens: int = 32,
    ) -> None:
        super().__init__(generator, max_batch_size, batch_wait_ms)
        self.priority_rows, self.short_tokens = priority_rows, short_tokens
        self.max_wait = 4 * short_tokens  # steps a row or request waits at most behind short ones
        self.reserve = max_batch_size // 8 if max_batch_size > 1 else 0
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self._waiting: deque[_Pending] = deque()
        self._admitting: list[DecodeRow] = []  # rows being prefilled (to fail them if that fails)
        self._period: set[int] = set()  # ids of the jobs served since the batch was last empty
        self._jobs = 0  # jobs with rows running or waiting, as of the last admission
        self._short_running = False  # a short request runs or waits (priority_rows), as of then

    # -- worker -------------------------------------------------------------------------
    def _run(self) -> None:
        batch = ContinuousBatch(self.generator, self.prefix_cache)
        self.generator.model.eval()
        stopping = False
        with torch.inference_mode():
            while not (stopping and not len(batch) and not self._waiting):
                idle = not len(batch) and not self._waiting
                stopping = self._take(idle and not stopping) or stopping
                try:
                    self._finish(self._admit(batch))
                    self._step(batch)
                except BaseException as e:  # every request in the batch must hear of it
                    logger.exception("generation failed for a batch of %d row(s)", len(batch))
                    self._fail(batch, e)
                    batch = ContinuousBatch(self.generator, self.prefix_cache)

    def _take(self, idle: bool) -> bool:
        """Move queued jobs to the waiting list; whether to stop. Idle: wait for one, then `batch_wait_ms` more."""
        rows, deadline = 0, 0.0
        while True:
            try:
                if idle and rows == 0:
                    item = self._queue.get()
                    deadline = time.monotonic() + self.batch_wait_s
                elif idle:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            self._waiting.append(_Pending(item, outputs=[None] * len(item.prompts), since=self.stats.steps))
            rows += len(item.prompts)
            if idle and rows >= self.max_batch_size:
                return False

    def _admit(self, batch: ContinuousBatch) -> list[DecodeRow]:
        """Prefill waiting rows into free rows of the batch, one per job in turn; rows that ended at once."""
        rows: list[DecodeRow] = []
        free = self.max_batch_size - len(batch)
        self._jobs = len({id(r.owner) for r in batch.rows} | {id(p) for p in self._waiting})
        self._short_running = self.priority_rows > 0 and (
            any(self._short(r.options) for r in batch.rows) or any(self._short(p.job.options) for p in self._waiting)
        )
        while free > 0 and self._waiting:
            took = False
            for p in list(self._waiting):
                if free > 0 and self._admissible(p):
                    rows.append(self._row(p))
                    free, took = free - 1, True
                if p.next == p.rows or p.job.cancelled:
                    self._retire(p)
            if not took:
                break
        self._admitting = rows
        ended = batch.add(rows) if rows else []
        self._admitting = []
        return ended

    def _admissible(self, p: _Pending) -> bool:
        """Whether job `p` may put one more row in the batch now (starting it if it has not started)."""
        if p.job.cancelled or p.next == p.rows or self._held_back(p):
            return False
        if not p.started:
            if not p.job.future.set_running_or_notify_cancel():
                p.job.cancelled = True  # its client left while it was queued
                return False
            p.started = True
            try:
                for i, ids in enumerate(p.job.prompts):
                    check_prompt(ids, self.generator.max_length, i)
            except Exception as e:
                p.next = p.rows
                p.job.future.set_exception(e)
                return False
        return p.live < self._share()

    def _share(self) -> int:
        """Most rows one job may hold: all but `reserve` alone, half the batch beside other jobs."""
        if self._jobs > 1:
            return max(1, self.max_batch_size // 2)
        return max(1, self.max_batch_size - self.reserve)

    def _row(self, p: _Pending) -> DecodeRow:
        """The next row of job `p`, with its seed, stream and cancel check."""
        i, job = p.next, p.job
        p.next, p.live = i + 1, p.live + 1
        self._period.add(id(job))
        stream = None
        if job.on_delta is not None:
            on_delta = job.on_delta
            stream = _TextStream(self.generator.tokenizer, job.options.stop_strings, lambda text: on_delta(i, text))
        return DecodeRow(
            i,
            list(job.prompts[i]),
            0,
            seed=job.seeds[i],
            options=job.options,
            on_token=stream.add if stream is not None else None,
            should_stop=lambda: job.cancelled,
            owner=p,
        )

    def _retire(self, p: _Pending) -> None:
        """Job `p` leaves the waiting list: all its rows are admitted, or its client left."""
        if p in self._waiting:
            self._waiting.remove(p)
        if not p.started:
            self.stats.dropped_jobs += 1
            p.job.future.cancel()
        elif p.job.cancelled and p.live == 0 and not p.job.future.done():
            self._resolve(p)

    def _step(self, batch: ContinuousBatch) -> None:
        """One decode step of the running batch."""
        if not len(batch):
            return
        s = self.stats
        s.steps += 1
        limit = self._limit(batch)
        if limit is not None:
            batch.prioritize(self._urgency, limit)
            s.priority_steps += 1
        s.max_rows_per_step = max(s.max_rows_per_step, min(len(batch), limit or len(batch)))
        self._finish(batch.step(limit))
        s.prefilled_tokens, s.reused_tokens = batch.prefilled_tokens, batch.reused_tokens
        if not len(batch) and not self._waiting:
            self._end_period()

    def _short(self, options: GenerateOptions) -> bool:
        """Whether a request with `options` is short (priority_rows): at most `short_tokens` new tokens."""
        return options.max_new_tokens <= self.short_tokens

    def _held_back(self, p: _Pending) -> bool:
        """Whether long job `p` waits to join (priority_rows: a short request runs, and `p` has not waited long)."""
        if not self._short_running or self._short(p.job.options):
            return False
        return self.stats.steps - p.since < self.max_wait

    def _limit(self, batch: ContinuousBatch) -> int | None:
        """How many rows the next step decodes: while a short request's row runs, its rows, the long
        waiters' and others up to `priority_rows` in all; else all (None)."""
        if not self.priority_rows or not any(self._short(r.options) for r in batch.rows):
            return None
        limit = max(self.priority_rows, sum(1 for r in batch.rows if self._urgency(r)[0] < 2))
        return limit if limit < len(batch) else None

    def _urgency(self, r: DecodeRow) -> tuple[int, int]:
        """Sort key of a row in a priority step: long waiters first, then short requests, then fewest tokens to go."""
        if r.waited >= self.max_wait:
            return (0, 0)
        return (1 if self._short(r.options) else 2, r.budget - r.steps)

    def _finish(self, rows: list[DecodeRow]) -> None:
        """Record ended rows; resolve each job whose rows have all ended."""
        for r in rows:
            p = r.owner
            p.outputs[r.index] = r.output
            p.live, p.done = p.live - 1, p.done + 1
            if p.live == 0 and (p.done == p.rows or p.job.cancelled) and p not in self._waiting:
                self._resolve(p)

    def _resolve(self, p: _Pending) -> None:
        """Give job `p` its outputs (rows never decoded, of a client that left, are empty)."""
        outputs = [o if o is not None else _empty(p.job.prompts[i]) for i, o in enumerate(p.outputs)]
        s = self.stats
        s.requests += 1
        s.rows += len(outputs)
        s.decoded_tokens += sum(o.completion_tokens for o in outputs)
        s.cancelled_rows += len(outputs) if p.job.cancelled else 0
        p.job.future.set_result(outputs)

    def _end_period(self) -> None:
        """The batch ran dry: count the requests it served since it was last empty."""
        if self._period:
            s = self.stats
            s.generate_calls += 1
            s.max_requests_per_call = max(s.max_requests_per_call, len(self._period))
            s.requests_per_call[len(self._period)] += 1
            self._period = set()

    def _fail(self, batch: ContinuousBatch, error: BaseException) -> None:
        """Every started job that has rows in the batch gets `error`."""
        for p in {id(r.owner): r.owner for r in batch.rows + self._admitting}.values():
            if not p.job.future.done():
                p.job.future.set_exception(error)
            if p in self._waiting:
                self._waiting.remove(p)


def _empty(prompt: list[int]) -> GenerationOutput:
    """The output of a row whose client left before it was decoded."""
    return GenerationOutput("", [], "length", len(prompt), 0)


__all__ = ["Engine", "BatchEngine", "EngineStats", "Job", "GenerationOutput"]
