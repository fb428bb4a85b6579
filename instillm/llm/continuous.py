"""Continuous batching: rows join a running decode batch at any step and leave at the step they end.

`ContinuousBatch` holds the rows being decoded together, each with its own `GenerateOptions`
(token budget, greedy or sampled with its temperature/top-k/top-p, stop strings, stop tokens),
its own sampling seed and callbacks. `add(rows)` prefills new rows and puts them in the batch;
`step()` picks one token for every row, ends the rows that are done (returned, with their
output) and runs one forward pass for the rest. A caller (the server's engine, a backend)
interleaves the two as requests come and go, so a short request never waits for a long one.

The KV cache is one buffer per layer, `[rows, kv_heads, slots, head_dim]`, a row's keys from
slot 0 (left-aligned); each row writes its next key at its own length and attends to its own
slots (a boolean mask). The buffer is rebuilt (rows dropped, rows appended, sized to what the
rows can still need) only when rows join or leave.

A decode step goes through `Generator.decode_step`: feature-major where the generator has that
step (`instillm.llm.feature_major`, which writes the new keys through the same cache layers),
else through the model's modules. Measured on SmolLM2-135M, fp32, AMD EPYC (2 cores), 64 prompts
of 64 new tokens at 32 rows: 24.0-24.2 s through the modules, 22.0-22.1 s feature-major, the same
tokens.

`PrefixCache` keeps the keys/values of recently prefilled prompts: `n` samples of one prompt,
a repeated prompt, or prompts sharing a long prefix (a few-shot header, a judge template, a
system prompt) compute the shared part once. Greedy rows give the tokens they give alone
(`Generator.generate_ids`, one prompt at a time); a sampled row draws from its own generator,
seeded as `generate_ids` seeds it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from instillm.errors import DataError
from instillm.llm.generation import GenerateOptions, GenerationOutput, Generator, Row, common_prefix, row_seed

# on_token(token id or None for an end token, finish reason or None while the row runs)
RowEvent = Callable[[int | None, str | None], None]


@dataclass
class DecodeRow(Row):
    """One prompt in a continuous batch: its options, seed and callbacks, and its state.

    `owner` is the caller's (the engine keeps the request there); `output` is set when the row
    ends. `should_stop()` is asked before the prefill and at every step: True ends the row
    (finish_reason "length", the tokens so far).
    """

    options: GenerateOptions = field(default_factory=GenerateOptions)
    on_token: RowEvent | None = None
    should_stop: Callable[[], bool] | None = None
    owner: Any = None
    steps: int = 0  # tokens picked, an end token included
    waited: int = 0  # steps this row has sat out in a row (`ContinuousBatch.step(limit)`)
    gen: torch.Generator | None = None
    end_ids: frozenset[int] = frozenset()
    output: GenerationOutput | None = None


@dataclass
class Prefill:
    """A prompt's keys and values per layer (`[kv_heads, tokens, head_dim]`) and its last logits."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.keys[0].shape[1])


class PrefixCache:
    """Prefills of recent prompts, least recently used first out, at most `max_tokens` tokens in all.

    A lookup reuses the longest cached prefix of at least `min_reuse` tokens (any length for the
    whole prompt: its logits come along).
    """

    def __init__(self, max_tokens: int = 4096, min_reuse: int = 8) -> None:
        self.max_tokens, self.min_reuse = max_tokens, min_reuse
        self._entries: OrderedDict[tuple[int, ...], Prefill] = OrderedDict()
        self._tokens = 0

    def lookup(self, ids: tuple[int, ...]) -> tuple[int, Prefill | None]:
        """(tokens reusable, the entry holding them); (0, None) when nothing worth reusing is cached."""
        best, hit = 0, None
        for key in self._entries:
            n = common_prefix(key, ids)
            if n == len(ids) and len(key) != n:
                n -= 1  # a longer prompt's keys, but not the logits at our last position
            if n > best:
                best, hit = n, key
        if hit is None or (best < self.min_reuse and best < len(ids)):
            return 0, None
        self._entries.move_to_end(hit)
        return best, self._entries[hit]

    def put(self, ids: tuple[int, ...], prefill: Prefill) -> None:
        """Keep `prefill` of prompt `ids`, dropping the least recently used entries over budget."""
        if len(ids) > self.max_tokens or ids in self._entries:
            return
        self._entries[ids] = prefill
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)


PACK_TOKENS = 512  # most prompt tokens prefilled together in one packed forward pass


def _chunks(prompts: list[tuple[int, ...]], budget: int) -> list[list[tuple[int, ...]]]:
    """Consecutive groups of at most `budget` tokens (a longer prompt alone)."""
    chunks: list[list[tuple[int, ...]]] = []
    size = budget
    for p in prompts:
        if size + len(p) > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(p)
        size += len(p)
    return chunks


def check_prompt(ids: Sequence[int], max_length: int, index: int = 0) -> None:
    """Raise DataError for a prompt the model cannot take (empty, or no room left for an answer)."""
    if not ids:
        raise DataError(f"prompt {index} is empty (0 tokens); a prompt needs at least one token")
    if len(ids) >= max_length:
        raise DataError(
            f"prompt {index} has {len(ids)} tokens: with the answer it exceeds "
            f"max_length={max_length} (the model's maximum positions); shorten the prompt"
        )


_ROW_CACHE = None


def _row_cache_class():
    """`_RowCache`, a `transformers.Cache` whose layers write each row's key at its own slot."""
    global _ROW_CACHE
    if _ROW_CACHE is not None:
        return _ROW_CACHE
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _RowLayer(CacheLayerMixin):
        """Layer `i` of the owning batch's buffers; decode steps only (one new key per row)."""

        is_sliding = False

        def __init__(self, owner: Any, i: int) -> None:
            super().__init__()
            self.owner, self.i = owner, i
            self.is_initialized = True

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            return None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            o = self.owner
            keys, values = o.keys[self.i], o.values[self.i]
            keys[o.rows, :, o.pos] = key_states[:, :, 0]
            values[o.rows, :, o.pos] = value_states[:, :, 0]
            n = o.rows.shape[0]
            return keys[:n, :, : o.read], values[:n, :, : o.read]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.owner.read, 0

        def get_seq_length(self) -> int:
            return self.owner.read

        def get_max_length(self) -> int:
            return int(self.owner.keys[self.i].shape[2])

        def reset(self) -> None:
            return None

    class _RowCache(Cache):
        """The decode-step view of a batch: `rows` (arange of live rows), `pos` (slot of each row's new key), `read`."""

        def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
            self.keys, self.values = keys, values
            self.rows = torch.arange(keys[0].shape[0], device=keys[0].device)
            self.pos = self.rows
            self.read = 0
            super().__init__(layers=[_RowLayer(self, i) for i in range(len(keys))])

    _ROW_CACHE = _RowCache
    return _RowCache


class ContinuousBatch:
    """The rows being decoded together by `generator`'s model (one thread uses it at a time).

    Rows live in slots `[0, len(self))` of buffers grown (at least doubled) when more rows join or
    a row needs more slots; a row that ends hands its slot to the last row (one row's keys are moved), so the
    live rows stay contiguous and nothing else is copied.
    """

    def __init__(self, generator: Generator, prefix_cache: PrefixCache | None = None) -> None:
        self.gen = generator
        self.prefix = prefix_cache
        self.rows: list[DecodeRow] = []
        self.keys: list[torch.Tensor] = []  # per layer [row slots, kv_heads, slots, head_dim]
        self.values: list[torch.Tensor] = []
        self.lens = torch.zeros(0, dtype=torch.long)
        self.logits: torch.Tensor | None = None
        self._cache: Any = None
        self.prefilled_tokens = 0  # prompt tokens run through the model
        self.reused_tokens = 0  # prompt tokens whose keys came from the prefix cache

    def __len__(self) -> int:
        return len(self.rows)

    # -- joining ----------------------------------------------------------------------------
    def add(self, rows: Sequence[DecodeRow]) -> list[DecodeRow]:
        """Prefill `rows` into the batch; returns those that ended before (their `should_stop`)."""
        ended, fresh = [], []
        for r in rows:
            check_prompt(r.ids, self.gen.max_length, r.index)
            self._prepare(r)
            if r.should_stop is not None and r.should_stop():
                r.output = self.gen.output_of(r, r.options)
                ended.append(r)
            else:
                fresh.append(r)
        if fresh:
            prefills = self._prefill_all(list(dict.fromkeys(tuple(r.ids) + tuple(r.tokens) for r in fresh)))
            self._append([(r, prefills[tuple(r.ids) + tuple(r.tokens)]) for r in fresh])
        return ended

    def _prepare(self, r: DecodeRow) -> None:
        """The row's token budget, end tokens and sampling generator."""
        opts = r.options
        r.budget = min(opts.max_new_tokens, self.gen.max_length - len(r.ids))
        r.end_ids = frozenset(self.gen.end_ids | set(opts.stop_token_ids))
        if opts.do_sample and r.gen is None:
            seed = row_seed(opts.seed, r.index) if r.seed is None else r.seed
            r.gen = torch.Generator(device=self.gen.device).manual_seed(seed)

    def _lookup(self, ids: tuple[int, ...]) -> tuple[int, Prefill | None]:
        return self.prefix.lookup(ids) if self.prefix is not None else (0, None)

    def _prefill_all(self, prompts: list[tuple[int, ...]]) -> dict[tuple[int, ...], Prefill]:
        """Prefills of distinct prompts: cached ones reused; fresh ones packed into few forward passes.

        A fresh prompt sharing a long prefix with another fresh one waits for it, then reuses its keys.
        """
        out: dict[tuple[int, ...], Prefill] = {}
        packed: list[tuple[int, ...]] = []
        later: list[tuple[int, ...]] = []
        min_reuse = self.prefix.min_reuse if self.prefix is not None else None
        for ids in prompts:
            reuse, hit = self._lookup(ids)
            if hit is not None:
                out[ids] = self._prefill(ids, reuse, hit)
            elif min_reuse is not None and any(common_prefix(ids, p) >= min_reuse for p in packed):
                later.append(ids)
            else:
                packed.append(ids)
        for chunk in _chunks(packed, PACK_TOKENS):
            out.update(self._prefill_packed(chunk))
        for ids in later:
            out[ids] = self._prefill(ids, *self._lookup(ids))
        return out

    def _prefill_packed(self, prompts: list[tuple[int, ...]]) -> dict[tuple[int, ...], Prefill]:
        """Prompts prefilled in one forward pass, packed in one row (each attends only to itself)."""
        from transformers.cache_utils import DynamicCache

        device = self.gen.device
        lens = torch.tensor([len(p) for p in prompts], device=device)
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)[None]
        seg = torch.repeat_interleave(torch.arange(len(prompts), device=device), lens)
        ends = lens.cumsum(0) - 1
        pos = torch.arange(ids.shape[1], device=device) - (ends - lens + 1)[seg]
        ar = torch.arange(ids.shape[1], device=device)
        mask = (seg[None, :] == seg[:, None]) & (ar[None, :] <= ar[:, None])
        cache = DynamicCache()
        logits = self.gen.forward_at(ids, pos[None], mask[None, None], cache, ends)
        self.prefilled_tokens += ids.shape[1]
        layers: list[Any] = list(cache.layers)
        out = {}
        for j, (p, end) in enumerate(zip(prompts, ends.tolist())):
            a = end + 1 - len(p)
            keys = [layer.keys[0, :, a : end + 1].clone() for layer in layers]
            values = [layer.values[0, :, a : end + 1].clone() for layer in layers]
            out[p] = Prefill(keys, values, logits[j])
            if self.prefix is not None:
                self.prefix.put(p, out[p])
        return out

    def _prefill(self, ids: tuple[int, ...], reuse: int, hit: Prefill | None) -> Prefill:
        """Keys, values and last logits of `ids`, the first `reuse` tokens' keys taken from `hit`."""
        self.reused_tokens += reuse
        if hit is not None and reuse == len(ids):
            return hit
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        if hit is not None:
            for i, (k, v) in enumerate(zip(hit.keys, hit.values)):
                cache.update(k[None, :, :reuse], v[None, :, :reuse], i)
        device = self.gen.device
        query = torch.arange(reuse, len(ids), device=device)
        mask = torch.arange(len(ids), device=device)[None, :] <= query[:, None]
        ids_t = torch.tensor(ids[reuse:], dtype=torch.long, device=device)[None]
        logits = self.gen.forward_last(ids_t, query[None], mask[None, None], cache)[0]
        self.prefilled_tokens += len(ids) - reuse
        layers: list[Any] = list(cache.layers)
        out = Prefill([layer.keys[0] for layer in layers], [layer.values[0] for layer in layers], logits)
        if self.prefix is not None:
            self.prefix.put(ids, out)
        return out

    def _append(self, fresh: list[tuple[DecodeRow, Prefill]]) -> None:
        """Write the `fresh` rows' keys/values into the next free slots (buffers grown as needed)."""
        n = len(self.rows)
        lens = self.lens.tolist() + [p.tokens for _, p in fresh]
        rows = self.rows + [r for r, _ in fresh]
        self._reserve(len(rows), max(lens) + 1, fresh[0][1])
        for i in range(len(self.keys)):
            for j, (_, p) in enumerate(fresh):
                self.keys[i][n + j, :, : p.tokens] = p.keys[i]
                self.values[i][n + j, :, : p.tokens] = p.values[i]
        logits = torch.stack([p.logits for _, p in fresh])
        self.logits = logits if self.logits is None or n == 0 else torch.cat([self.logits, logits])
        self.rows, self.lens = rows, torch.tensor(lens, dtype=torch.long, device=logits.device)

    def _reserve(self, rows: int, slots: int, like: Prefill | None = None) -> None:
        """Buffers with room for `rows` rows of `slots` slots (reallocated, at least doubled, when short).

        Slots grow with what the rows have written, not with their budgets: a request asking for
        the whole context costs memory only as it gets there.
        """
        have_rows, have_slots = (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)
        if rows <= have_rows and slots <= have_slots:
            return
        rows = max(rows, 2 * have_rows if rows > have_rows else have_rows)
        slots = min(max(slots, 2 * have_slots if slots > have_slots else have_slots), self.gen.max_length)
        used, n = int(self.lens.max()) if len(self.rows) else 0, len(self.rows)
        shapes = (
            zip(like.keys, like.values) if like is not None else ((k[0], v[0]) for k, v in zip(self.keys, self.values))
        )
        for i, (k, v) in enumerate(list(shapes)):
            new_k = k.new_zeros((rows, k.shape[0], slots, k.shape[-1]))
            new_v = v.new_zeros((rows, v.shape[0], slots, v.shape[-1]))
            if n:
                new_k[:n, :, :used], new_v[:n, :, :used] = self.keys[i][:n, :, :used], self.values[i][:n, :, :used]
            if i < len(self.keys):
                self.keys[i], self.values[i] = new_k, new_v
            else:
                self.keys.append(new_k)
                self.values.append(new_v)
        self._cache = None

    # -- decoding ---------------------------------------------------------------------------
    def step(self, limit: int | None = None) -> list[DecodeRow]:
        """Pick a token for the first `limit` rows (all: None), end those that are done (returned), forward the others.

        Rows past `limit` wait, their next logits kept; `prioritize` chooses which rows come first.
        """
        if not self.rows or self.logits is None:
            return []
        n = len(self.rows) if limit is None else max(1, min(limit, len(self.rows)))
        for j, r in enumerate(self.rows):
            r.waited = 0 if j < n else r.waited + 1
        tok = self._next_tokens(self.logits[:n])
        done = [self._advance(r, t) for r, t in zip(self.rows, tok.tolist())]
        finished = [r for r, d in zip(self.rows, done) if d]
        for r in finished:
            r.output = self.gen.output_of(r, r.options)
        if finished:
            order = self._drop([j for j, d in enumerate(done) if d], n)
            n -= len(finished)
            tok = tok[order[:n]]
        if n:
            self._decode(tok, n)
        return finished

    def prioritize(self, key: Callable[[DecodeRow], Any], first: int) -> None:
        """Bring the `first` rows with the smallest `key` to the front (the rows `step(first)` decodes).

        Rows trade slots pairwise (two rows' keys/values copied per trade), so an order that changes
        little costs little.
        """
        first = min(first, len(self.rows))
        ranked = sorted(range(len(self.rows)), key=lambda j: (key(self.rows[j]), j))[:first]
        wanted = set(ranked)
        outside = [j for j in ranked if j >= first]
        holes = [j for j in range(first) if j not in wanted]
        for a, b in zip(holes, outside):
            self._swap(a, b)

    def _swap(self, a: int, b: int) -> None:
        """Rows in slots `a` and `b` trade slots (keys/values, length, pending logits)."""
        used = int(max(self.lens[a], self.lens[b]))
        both, back = [a, b], [b, a]
        for k, v in zip(self.keys, self.values):
            k[both, :, :used] = k[back, :, :used]
            v[both, :, :used] = v[back, :, :used]
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
        self.lens[both] = self.lens[back]
        if self.logits is not None:
            self.logits[both] = self.logits[back]

    def _next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax for greedy rows; sampled rows drawn group by group (same temperature/top-k/top-p)."""
        tok = logits.argmax(dim=-1)
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(self.rows[: logits.shape[0]]):
            o = r.options
            if o.do_sample:
                groups.setdefault((o.temperature, o.top_k, o.top_p), []).append(j)
        for idx in groups.values():
            opts, gens = self.rows[idx[0]].options, [self.rows[j].gen for j in idx]
            tok[idx] = Generator.select_tokens(logits[idx], opts, gens)
        return tok

    def _advance(self, r: DecodeRow, token: int) -> bool:
        """Take `token` into row `r`; whether the row is done (end token, budget, stop string, stopped)."""
        r.steps += 1
        if token in r.end_ids:
            r.finish_reason, r.stop_token_id = "stop", token
            done = True
        else:
            r.tokens.append(token)
            done = r.steps >= r.budget
            if r.options.stop_strings and self._stop_string(r):
                done = True
        if not done and r.should_stop is not None and r.should_stop():
            done = True
        if r.on_token is not None:
            r.on_token(None if r.stop_token_id is not None else token, r.finish_reason if done else None)
        return done

    def _stop_string(self, r: DecodeRow) -> bool:
        """Whether the row's recent text holds one of its stop strings (recorded on the row)."""
        stops = r.options.stop_strings
        window = max(len(s.encode("utf-8")) for s in stops) + 2
        tail = self.gen.tokenizer.decode(r.tokens[-window:], skip_special_tokens=r.options.skip_special_tokens)
        hit = next((s for s in stops if s in tail), None)
        if hit is not None:
            r.finish_reason, r.stop_string = "stop", hit
        return hit is not None

    def _drop(self, ended: list[int], stepped: int) -> list[int]:
        """Rows `ended` (all among the first `stepped`) leave. Returns the old index of each row now.

        The stepped rows that go on stay in front, contiguous: a row that ended takes the last of
        them, and the slots freed at the end of the stepped rows take the batch's last rows.
        """
        order, lens = list(range(len(self.rows))), self.lens.tolist()
        keep = stepped - len(ended)
        gone = set(ended)
        movers = [j for j in range(stepped - 1, keep - 1, -1) if j not in gone]
        for dst, src in zip([j for j in sorted(ended) if j < keep], movers):
            self._move_row(src, dst, order, lens)
        moved = min(stepped - keep, len(order) - stepped)  # waiting rows that fill the freed slots
        for k in range(moved):
            self._move_row(len(order) - 1 - k, keep + k, order, lens)
        order = order[: keep + moved] + order[stepped : len(order) - moved]
        self.rows = [self.rows[j] for j in order]
        idx = torch.tensor(order, dtype=torch.long, device=self.lens.device)
        self.lens = self.lens[idx]
        self.logits = None if self.logits is None or not order else self.logits[idx]
        return order

    def _move_row(self, src: int, dst: int, order: list[int], lens: list[int]) -> None:
        """Slot `src`'s row moves into slot `dst` (its keys/values copied; `order`, `lens` updated)."""
        used = lens[src]
        for k, v in zip(self.keys, self.values):
            k[dst, :, :used] = k[src, :, :used]
            v[dst, :, :used] = v[src, :, :used]
        order[dst], lens[dst] = order[src], lens[src]

    def _decode(self, tok: torch.Tensor, n: int) -> None:
        """One forward pass of the first `n` rows: each row's new token at its own position; their next logits."""
        lens = self.lens[:n]
        read = int(lens.max()) + 1
        self._reserve(len(self.rows), read)
        if self._cache is None:
            self._cache = _row_cache_class()(self.keys, self.values)
        cache = self._cache
        if cache.rows.shape[0] != n:
            cache.rows = torch.arange(n, device=lens.device)
        cache.pos, cache.read = lens, read
        mask = torch.arange(cache.read, device=lens.device)[None, :] <= lens[:, None]
        logits = self.gen.decode_step(tok, lens[:, None], mask[:, None, None, :], cache)
        if n == len(self.rows):
            self.logits, self.lens = logits, self.lens + 1
        else:
            assert self.logits is not None
            self.logits[:n] = logits
            self.lens[:n] += 1


def decode_all(
    generator: Generator,
    rows: Sequence[DecodeRow],
    max_rows: int,
    prefix_cache: PrefixCache | None = None,
    on_done: Callable[[DecodeRow], None] | None = None,
) -> ContinuousBatch:
    """Decode every row, at most `max_rows` at a time: a waiting row joins as soon as one ends.

    `on_done(row)` is called as each row ends (its `output` set). Returns the (empty) batch, whose
    counters say how many prompt tokens were prefilled and reused.
    """
    batch = ContinuousBatch(generator, prefix_cache)
    waiting = deque(rows)
    model = generator.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            while waiting or len(batch):
                take = [waiting.popleft() for _ in range(min(len(waiting), max_rows - len(batch)))]
                for r in batch.add(take) + batch.step():
                    if on_done is not None:
                        on_done(r)
    finally:
        model.train(was_training)
    return batch


__all__ = ["decode_all", "check_prompt", "ContinuousBatch", "DecodeRow", "Prefill", "PrefixCache", "common_prefix"]
