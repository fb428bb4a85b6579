"""Batched, KV-cached text generation with exactly the prompt template used for training.

`Generator.generate_chat` renders conversations with `instillm.data.render.Renderer` (the same
template, BOS included, as training) and `Generator.generate_texts` generates from prompt strings
that are already rendered. Greedy decoding gives the same tokens as Hugging Face's
`model.generate(do_sample=False)` run one prompt at a time without padding.

How it is fast (on a CPU as on a GPU):

- **Length buckets**: prompts are sorted by token length and neighbours are batched together
  (`batch_size` rows), so little padding is computed; results come back in input order.
- **Padding-free prefill**: inside a decode batch, prompts are prefilled in small chunks of
  similar length (at most `prefill_tokens` padded tokens each, usually one prompt), and their
  keys/values are written straight into the batch's cache, left-padded (right-aligned).
- **Shared prefixes once**: prompts of one batch that start alike (a system prompt, a few-shot
  header: `shared_prefixes`, at least `min_shared_prefix` tokens) have that prefix run through
  the model once; its keys/values are copied into each of their rows, and only the rest of each
  prompt is prefilled (a prefill chunk writes no slot of a row's shared prefix).
- **Preallocated KV cache** (`_SlotCache`, a `transformers.Cache`): one buffer per layer,
  `[rows, kv_heads, prompt_len + max_new_tokens, head_dim]`, written in place. Nothing is
  concatenated per step (`DynamicCache` copies the whole cache at every step), and attention only
  reads the filled part (unlike `StaticCache`, which attends over the full buffer).
- **No per-step mask building**: the 4D boolean attention mask of a decode step is a view of one
  preallocated `[rows, slots]` tensor, passed as is (transformers uses a 4D mask unchanged);
  position ids are `prompt_len + step` per row, so left padding changes nothing.
- **Grouped decode attention**: rows of one batch still differ in prompt length, and with left
  padding every row would read as many cache slots as the longest. At decode steps the rows are
  split into contiguous groups (`plan_kv_groups`, an exact DP trading cache reads against the
  cost of one more attention call) and each group attends only to its own slots, through
  transformers' `AttentionInterface` (`instillm_grouped_sdpa`, SDPA per group).
- **Finished rows are dropped**: when a row stops (EOS / end-of-turn token, stop string or its
  token budget) its cache rows are removed, so later steps only compute live rows.
- Logits only for the last position (`logits_to_keep=1`), `torch.inference_mode`.
- **Decode products the fast way round**: where MKL is slow at few-row products (fp32 on AMD
  CPUs), decode steps compute their linear layers as `(W @ x.T).T` (`instillm.llm.products`),
  and for Llama-family models the whole step runs feature-major, `[features, rows]`, with no
  transposes between the products and no trip through the model's modules
  (`instillm.llm.feature_major`).

Sampling (temperature, top-k, top-p) draws its noise from one `torch.Generator` per prompt,
seeded from (`seed`, prompt index): results are reproducible and do not depend on
`batch_size` or on which other prompts are in the call. `generate_ids(seeds=...)` gives each
prompt its own seed instead (the server batches unrelated requests), and `on_token` reports each
decode step as it happens (the server streams from it).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from instillm.config import Config, check_min, check_min_int, check_range, one_or_many
from instillm.errors import ConfigError, DataError, ModelError
from instillm.llm.attention import DECODE_ATTENTION_ROWS, attend_in_groups, decode_attention
from instillm.llm.feature_major import FeatureMajorStep, unsupported
from instillm.llm.products import MAX_ROWS, products_for

FINISH_REASONS = ("stop", "length")

# on_token(prompt index, token id or None for an end token, finish reason or None while running)
TokenCallback = Callable[[int, "int | None", "str | None"], None]


# --------------------------------------------------------------------------------------------
# options and outputs


@dataclass(frozen=True)
class GenerateOptions(Config):
    """How to generate. Greedy by default; `do_sample` turns on temperature/top-k/top-p sampling.

    - `max_new_tokens`: at most this many generated tokens per prompt (also capped by the
      model's maximum positions).
    - `top_k` 0 and `top_p` 1.0 disable those filters.
    - `seed`: sampling noise comes from a generator per prompt seeded from (seed, prompt index).
    - `stop_strings`: generation of a prompt stops when its text contains one of them; the text
      is cut before it (the tokens that produced it stay in `token_ids`).
    - `stop_token_ids`: token ids that end a completion in addition to EOS and the end-of-turn
      tokens of the tokenizer / the model's generation config.
    - `batch_size`: rows decoded together; `prefill_tokens`: padded tokens per prefill chunk.
    - `skip_special_tokens`: drop special tokens (e.g. a stray `<s>`) from `text`.
    - `min_shared_prefix`: prompts of one batch that share at least this many leading tokens
      (a system prompt, a few-shot header) prefill them once; 0 turns this off.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop_strings: tuple[str, ...] = one_or_many()
    batch_size: int = 32
    stop_token_ids: tuple[int, ...] = one_or_many()
    prefill_tokens: int = 512
    skip_special_tokens: bool = True
    min_shared_prefix: int = 16

    @classmethod
    def sampling(cls, temperature: float, top_p: float = 1.0, greedy_at: float = 0.0, **kwargs: Any) -> GenerateOptions:
        """Options for an API-style temperature: greedy at or below `greedy_at` (0: temperature 0), else sampled."""
        if temperature <= greedy_at:
            return cls(do_sample=False, **kwargs)
        return cls(do_sample=True, temperature=float(temperature), top_p=float(top_p), **kwargs)

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for name in ("max_new_tokens", "batch_size", "prefill_tokens"):
            check_min_int(problems, name, v[name])
        check_min_int(problems, "min_shared_prefix", v["min_shared_prefix"], 0)
        check_min(problems, "top_k", v["top_k"], 0, note=" (0 disables it)")
        check_range(problems, "top_p", v["top_p"], 0, 1, "(]", note=" (1 disables it)")
        check_min(problems, "temperature", v["temperature"], 0, strict=True)
        if not all(v["stop_strings"]):
            problems.append(f"stop_strings: must be non-empty strings, got {v['stop_strings']!r}")
        if not all(t >= 0 for t in v["stop_token_ids"]):
            problems.append(f"stop_token_ids: must be token ids (integers >= 0), got {v['stop_token_ids']!r}")
        return problems


@dataclass(frozen=True)
class GenerationOutput:
    """One completion.

    `text` and `token_ids` exclude the token that stopped generation (EOS / end-of-turn, kept in
    `stop_token_id`); `completion_tokens` counts every token the model generated, that one
    included. `finish_reason` is "stop" (stop token or stop string) or "length".
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stop_token_id: int | None = None
    stop_string: str | None = None


# --------------------------------------------------------------------------------------------
# KV cache


_CACHE_CLASS = None


def _slot_cache_class():
    """`_SlotCache`, a `transformers.Cache` of `_SlotLayer`s (built on first use: no import cost)."""
    global _CACHE_CLASS
    if _CACHE_CLASS is not None:
        return _CACHE_CLASS
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _SlotLayer(CacheLayerMixin):
        """Keys/values of one layer in a preallocated `[rows, heads, slots, dim]` buffer.

        What is written and read is set on the owning cache: `rows` (a slice or index tensor: the
        prefill chunk, or all rows), `write` and `read` (slot ranges [start, end)), and `keep`
        (None, or a `[rows, 1, written slots, 1]` mask of the slots a prefill chunk may write).
        """

        is_sliding = False

        def __init__(self, owner: Any) -> None:
            super().__init__()
            self.owner = owner

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            o = self.owner
            h, dk, dv = key_states.shape[1], key_states.shape[-1], value_states.shape[-1]
            dtype, device = key_states.dtype, key_states.device
            # Zeros, not empty: masked slots get attention weight 0, and 0 * NaN garbage is NaN.
            self.keys = torch.zeros((o.batch, h, o.capacity, dk), dtype=dtype, device=device)
            self.values = torch.zeros((o.batch, h, o.capacity, dv), dtype=dtype, device=device)
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            o = self.owner
            (w0, w1), (r0, r1), rows = o.write, o.read, o.rows
            keys, values = self._buffers()
            if o.keep is not None:  # slots of a row's shared prefix keep their keys (`keep` False there)
                key_states = torch.where(o.keep, key_states, keys[rows, :, w0:w1])
                value_states = torch.where(o.keep, value_states, values[rows, :, w0:w1])
            keys[rows, :, w0:w1] = key_states
            values[rows, :, w0:w1] = value_states
            return keys[rows, :, r0:r1], values[rows, :, r0:r1]

        def put_prefix(
            self, other: Any, source: tuple[int, int, int], rows: torch.Tensor, starts: torch.Tensor
        ) -> None:
            """Copy `other`'s keys/values of `source` (row, first slot, slots) to `rows`, at slots from `starts` on."""
            if not self.is_initialized:
                self.lazy_initialization(other.keys, other.values)
            keys, values = self._buffers()
            row, first, n = source
            slots = starts[:, None] + torch.arange(n, device=starts.device)[None, :]  # [rows, n]
            # advanced indices around a slice: the indexed view is [rows, n, heads, dim]
            keys[rows[:, None], :, slots] = other.keys[row, :, first : first + n].transpose(0, 1)
            values[rows[:, None], :, slots] = other.values[row, :, first : first + n].transpose(0, 1)

        def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
            """The key and value buffers (allocated by lazy_initialization)."""
            if self.keys is None or self.values is None:
                raise RuntimeError("_SlotLayer buffers are used before lazy_initialization")
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            r0, r1 = self.owner.read
            return r1 - r0, r0

        def get_seq_length(self) -> int:
            return self.owner.read[1]

        def get_max_length(self) -> int:
            return self.owner.capacity

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                keys, values = self._buffers()
                self.keys, self.values = keys.index_select(0, indices), values.index_select(0, indices)

        def reset(self) -> None:
            self.keys = self.values = None
            self.is_initialized = False

    class _SlotCache(Cache):
        """Preallocated cache of one decode batch: rows x (prompt slots + generated slots)."""

        def __init__(self, n_layers: int, batch: int, capacity: int) -> None:
            self.batch, self.capacity = batch, capacity
            self.rows: slice | torch.Tensor = slice(None)
            self.write = (0, 0)
            self.read = (0, 0)
            self.keep: torch.Tensor | None = None
            self.slot_layers = [_SlotLayer(self) for _ in range(n_layers)]  # also in `layers`, typed as _SlotLayer
            super().__init__(layers=list(self.slot_layers))

        def select_rows(self, indices: torch.Tensor) -> None:
            """Keep only rows `indices` (finished rows leave the batch)."""
            for layer in self.slot_layers:
                layer.batch_select_indices(indices)
            self.batch = int(indices.numel())

        def put_prefix(
            self, other: Any, source: tuple[int, int, int], rows: torch.Tensor, starts: torch.Tensor
        ) -> None:
            """Copy the keys/values of `source` (row, first slot, slots) of cache `other` into `rows`, from `starts`."""
            for mine, theirs in zip(self.slot_layers, other.slot_layers):
                mine.put_prefix(theirs, source, rows, starts)

    _CACHE_CLASS = _SlotCache
    return _SlotCache


def _make_cache(n_layers: int, batch: int, capacity: int):
    return _slot_cache_class()(n_layers, batch, capacity)


# --------------------------------------------------------------------------------------------
# grouped decode attention

_GROUPED_SDPA = "instillm_grouped_sdpa"


def _grouped_sdpa(module, query, key, value, attention_mask, *args, instillm_kv_groups=None, **kwargs):
    """SDPA where, at a decode step, each group of rows reads only its own part of the cache.

    Rows are sorted by prompt length and left-padded to the longest, so a batch mixing 20- and
    200-token prompts would read ~200 cache slots for every row. `instillm_kv_groups` is a list
    of (first row, end row, first key) and each group attends to keys [first key:] only (the
    keys before are padding for all its rows). A prefill is plain SDPA; a decode step's group of
    8 or more rows attends with `decode_attention` (faster there than SDPA on a CPU).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or args or not _plain(kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)

    def attend(q, k, v, mask):
        return _attend(module, q, k, v, mask, kwargs)

    return attend_in_groups(attend, query, key, value, attention_mask, instillm_kv_groups), None


def _plain(kwargs: dict[str, Any]) -> bool:
    """Whether an attention call is plain softmax attention (no dropout, position bias or softcap)."""
    return not kwargs.get("dropout") and kwargs.get("position_bias") is None and kwargs.get("softcap") is None


def _attend(module, query, key, value, mask, kwargs: dict[str, Any]) -> torch.Tensor:
    """A decode step's attention, [rows, 1, heads, dim]: `decode_attention` for 8+ rows on a CPU, else SDPA
    (on a GPU SDPA's fused kernels stay: `decode_attention` was measured faster on CPUs only)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[0] >= DECODE_ATTENTION_ROWS and query.device.type == "cpu":
        return decode_attention(query, key, value, mask, kwargs.get("scaling"))
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)[0]


_REGISTERED = False


def _register_grouped_sdpa() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_GROUPED_SDPA, _grouped_sdpa)
    AttentionMaskInterface.register(_GROUPED_SDPA, sdpa_mask)
    _REGISTERED = True


# Cost of one more attention call, in "row x cache slot" reads (measured on a CPU: ~50 us of
# Python and kernel launch per group and layer vs ~0.2 us per row-slot).
GROUP_COST = 256


def plan_kv_groups(lengths: Sequence[int], extra: int, group_cost: int = GROUP_COST) -> list[tuple[int, int, int]]:
    """Split rows sorted by length into contiguous groups minimising cache reads + a cost per group.

    `lengths` are the prompt lengths of the rows (non-decreasing), `extra` the cache slots each
    row will read on top (generated tokens). Returns (first row, end row, first key) with keys
    counted from the start of the longest row. Exact dynamic programme, O(rows^2).
    """
    n = len(lengths)
    if n == 0:
        return []
    longest = lengths[-1]
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[j - 1] + extra
        for i in range(j):
            c = best[i] + (j - i) * width + group_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append((i, j, longest - lengths[j - 1]))
        j = i
    return groups[::-1]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# What computing a shared prefix apart costs beyond its own tokens, in prompt tokens of a prefill
# chunk (CPU, SmolLM2-135M: a one-row pass of 24 tokens took 0.1 s, ~60 chunked prompt tokens).
SHARED_PREFIX_COST = 48


def shared_prefixes(
    prompts: Sequence[Sequence[int]], min_tokens: int, cost: int = SHARED_PREFIX_COST
) -> list[tuple[list[int], int]]:
    """Groups of prompts to prefill a shared prefix of (at least `min_tokens` tokens) once: (positions, tokens).

    Prompts sorted by their tokens are neighbours when they share a prefix; a group is a run of
    neighbours and shares the shortest prefix between two of them. The runs are chosen by an
    exact DP to skip the most prompt tokens, each group counting `cost` tokens against it (one
    prompt with a long few-shot header and another with only the system prompt are not tied to
    the shorter prefix when that saves less). A prompt's last token is never shared (its logits
    are needed). Prompts in no group are left out.
    """
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    links = [
        min(common_prefix(prompts[a], prompts[b]), len(prompts[a]) - 1, len(prompts[b]) - 1)
        for a, b in zip(order, order[1:])
    ]
    n = len(order)
    best, cut, shared = [0] * (n + 1), [0] * (n + 1), [0] * (n + 1)  # best of order[:j]; where its last run starts
    for j in range(1, n + 1):
        best[j], cut[j], p = best[j - 1], j - 1, math.inf
        for i in range(j - 2, -1, -1):  # the run order[i:j], joined by links[i:j - 1]
            p = min(p, links[i])
            if p < min_tokens:
                break
            gain = best[i] + (j - i - 1) * int(p) - cost
            if gain > best[j]:
                best[j], cut[j], shared[j] = gain, i, int(p)
    groups: list[tuple[list[int], int]] = []
    j = n
    while j > 0:
        if j - cut[j] >= 2:
            groups.append((sorted(order[cut[j] : j]), shared[j]))
        j = cut[j]
    return groups[::-1]


def _prefill_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive positions of `lengths` (non-decreasing) in chunks of at most `budget` padded tokens (>= 1 each)."""
    chunks: list[list[int]] = []
    for j, n in enumerate(lengths):
        if chunks and (len(chunks[-1]) + 1) * n <= budget:
            chunks[-1].append(j)
        else:
            chunks.append([j])
    return chunks


def _chunk_positions_and_mask(q_slot: torch.Tensor, k_slot: torch.Tensor, lengths: torch.Tensor):
    """Position ids `[n, queries]` and boolean mask `[n, queries, keys]` of a prefill chunk.

    Rows end at the same slot (right-aligned); row i's prompt takes the last `lengths[i]` slots.
    `q_slot`/`k_slot` are the slots of the chunk's queries and of the keys they read (a suffix of them).
    """
    first = (k_slot[-1] + 1 - lengths)[:, None]  # [n, 1] each row's first slot
    position_ids = (q_slot[None, :] - first).clamp_min(0)
    causal = k_slot[None, :] <= q_slot[:, None]  # [queries, keys]
    # Pad queries attend to themselves only: finite values, never seen by real tokens.
    mask = (causal[None] & (k_slot[None, None, :] >= first[:, :, None])) | (k_slot[None, :] == q_slot[:, None])
    return position_ids, mask


# --------------------------------------------------------------------------------------------
# the generator


def _eos_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, torch.Tensor):
        return {int(x) for x in value.flatten().tolist()}
    return {int(x) for x in value if x is not None}


def sample_seed(seed: int | None, index: int) -> int:
    """The sampling seed of sample `index` of a request with `seed` (None: a fresh random one).

    The server and the local backend both seed sample i this way, so a seeded request samples the
    same text in-process and over HTTP.
    """
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"instillm-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_seed(seed: int, index: int) -> int:
    """The sampling seed `generate_ids` gives prompt `index` of a call with options.seed `seed`."""
    digest = hashlib.sha256(f"instillm-generate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Row:
    """Bookkeeping of one prompt during generation."""

    index: int
    ids: list[int]
    budget: int
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    stop_token_id: int | None = None
    stop_string: str | None = None
    seed: int | None = None  # sampling seed of this row; None: derived from (options.seed, index)


class Generator:
    """Generate completions for prompts with a causal LM and its tokenizer.

    `renderer` (an `instillm.data.render.Renderer`) renders conversations for `generate_chat`;
    by default one is built from the tokenizer's chat template, as training does.
    `max_length` caps prompt + completion tokens; default: the model's `max_position_embeddings`.
    `transposed_products`: compute decode steps' linear layers as `(W @ x.T).T`
    (`instillm.llm.products`); None decides by `products.wanted` (fp32 on an AMD CPU).
    `feature_major`: run decode steps feature-major (`instillm.llm.feature_major`; Llama, Mistral
    and Qwen2 models); None: where the products are transposed and the model is supported.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        renderer: Any = None,
        max_length: int | None = None,
        group_attention: bool = True,
        transposed_products: bool | None = None,
        feature_major: bool | None = None,
    ) -> None:
        from instillm.data.render import end_token_ids

        self.model = model
        self.tokenizer = tokenizer
        self._renderer = renderer
        config = model.config
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            raise ModelError(
                f"the generator supports attn_implementation 'sdpa' or 'eager', not {impl!r}; "
                "load the model with attn_implementation='sdpa'"
            )
        self._float_mask = impl == "eager"
        # Grouped decode attention goes through transformers' AttentionInterface (sdpa models).
        self.group_attention = bool(group_attention) and impl == "sdpa"
        layer_types = getattr(config, "layer_types", None)
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise ModelError(
                f"the generator supports full-attention models only; this one has layers {sorted(set(layer_types))}"
            )
        model_max = getattr(config, "max_position_embeddings", None)
        self.max_length = int(max_length if max_length is not None else (model_max or 2048))
        self.n_layers = int(config.num_hidden_layers)
        self.end_ids = set(end_token_ids(tokenizer)) | _eos_ids(
            getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        )
        self.end_ids.discard(None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs on
        forward_params = inspect.signature(base.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward_params
        # transformers >= 5.2x names the KV cache `cache` (`past_key_values` is deprecated there)
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        # decode steps' linear layers as (W @ x.T).T where that is faster (None: products.wanted)
        self._products = products_for(model, transposed_products)
        self._step = _feature_major_step(model, feature_major, self._products is not None)
        self._on_token: TokenCallback | None = None  # set by generate_ids for its call
        self._should_stop: Callable[[int], bool] | None = None  # likewise
        self.prefilled_tokens = 0  # prompt tokens run through the model (a shared prefix once)
        self.shared_prefix_tokens = 0  # prompt tokens whose keys came from a prefix shared in the batch

    @property
    def renderer(self):
        if self._renderer is None:
            from instillm.data.render import Renderer

            self._renderer = Renderer(self.tokenizer)
        return self._renderer

    @property
    def transposed_products(self) -> bool:
        """Whether decode steps compute their linear layers as `(W @ x.T).T` (`instillm.llm.products`)."""
        return self._products is not None

    @property
    def feature_major(self) -> bool:
        """Whether decode steps run feature-major (`instillm.llm.feature_major`)."""
        return self._step is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- public API -------------------------------------------------------------------------
    def generate_chat(
        self, conversations: Sequence[Sequence[Any]], options: GenerateOptions | None = None
    ) -> list[GenerationOutput]:
        """Render each conversation as an inference prompt (training template) and generate."""
        return self.generate_texts(self.render_prompts(conversations), options)

    def render_prompts(self, conversations: Sequence[Sequence[Any]]) -> list[str]:
        """The prompt strings `generate_chat` generates from: `Renderer.prompt_text` of each."""
        return [self.renderer.prompt_text(c) for c in conversations]

    def generate_texts(self, prompts: Sequence[str], options: GenerateOptions | None = None) -> list[GenerationOutput]:
        """Generate from rendered prompt strings (tokenized without adding special tokens)."""
        prompts = list(prompts)
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise DataError(f"prompt {i}: expected a string, got {type(p).__name__}")
        ids = self.tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
        return self.generate_ids([list(x) for x in ids], options)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        options: GenerateOptions | None = None,
        seeds: Sequence[int] | None = None,
        on_token: TokenCallback | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[GenerationOutput]:
        """Generate from token ids (what `generate_texts` does after tokenizing).

        `seeds`: one sampling seed per prompt instead of (options.seed, prompt index), so a prompt
        samples the same whatever else is in the call. `on_token(index, token_id, finish_reason)`
        is called at every decode step for every live prompt, after the stop checks: token_id is
        None for an end token (not part of the text), finish_reason None until the prompt ends.
        `should_stop(index)` is asked before a prompt is prefilled and at every decode step: True
        ends it there (finish_reason "length", the tokens so far) and drops it from the batch.
        """
        opts = options or GenerateOptions()
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ConfigError(f"seeds: {len(seeds)} given for {len(prompt_ids)} prompts; give one per prompt")
        rows = []
        for i, ids in enumerate(prompt_ids):
            ids = [int(x) for x in ids]
            if not ids:
                raise DataError(f"prompt {i} is empty (0 tokens); a prompt needs at least one token")
            if len(ids) >= self.max_length:
                raise DataError(
                    f"prompt {i} has {len(ids)} tokens: with the answer it exceeds max_length={self.max_length} "
                    "(the model's maximum positions); shorten the prompt"
                )
            seed = None if seeds is None else int(seeds[i])
            rows.append(Row(i, ids, min(opts.max_new_tokens, self.max_length - len(ids)), seed=seed))
        if not rows:
            return []
        # Length buckets: sort by length, batch neighbours; outputs go back by `index`.
        order = sorted(rows, key=lambda r: (len(r.ids), r.index))
        was_training = self.model.training
        config = self.model.config
        impl = config._attn_implementation
        self.model.eval()
        self._on_token = on_token  # for the duration of the call, like the attention setting
        self._should_stop = should_stop
        try:
            if self.group_attention:
                # for the duration of the call only; restored below
                _register_grouped_sdpa()
                config._attn_implementation = _GROUPED_SDPA
            with torch.inference_mode():
                for b in range(0, len(order), opts.batch_size):
                    self._generate_batch(order[b : b + opts.batch_size], opts)
        finally:
            self._on_token = self._should_stop = None
            config._attn_implementation = impl
            if was_training:
                self.model.train()
        return [self.output_of(r, opts) for r in rows]

    # -- internals --------------------------------------------------------------------------
    def output_of(self, r: Row, opts: GenerateOptions) -> GenerationOutput:
        """The output of a finished row: its text (cut at a stop string), tokens and counts."""
        text = self.tokenizer.decode(r.tokens, skip_special_tokens=opts.skip_special_tokens)
        if r.stop_string is not None:
            text = text[: text.find(r.stop_string)] if r.stop_string in text else text
        return GenerationOutput(
            text=text,
            token_ids=list(r.tokens),
            finish_reason=r.finish_reason,
            prompt_tokens=len(r.ids),
            completion_tokens=len(r.tokens) + (r.stop_token_id is not None),
            stop_token_id=r.stop_token_id,
            stop_string=r.stop_string,
        )

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A boolean `[b, 1, q, k]` mask as the attention implementation wants it."""
        if not self._float_mask:
            return mask
        dtype = next(self.model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)

    def _call(self, input_ids, position_ids, mask, kwargs: dict[str, Any]) -> Any:
        """One model call (boolean 4D `mask`), with the transposed products if this generator uses them."""
        products = contextlib.nullcontext() if self._products is None else self._products.active(input_ids.numel())
        with products:
            return self.model(
                input_ids=input_ids,
                attention_mask=self._mask(mask),
                position_ids=position_ids,
                use_cache=True,
                **kwargs,
            )

    def forward_last(self, input_ids, position_ids, mask, cache, groups=None) -> torch.Tensor:
        """One model call with `cache` and a boolean 4D `mask`; the logits of each row's last position."""
        kwargs = {"logits_to_keep": 1} if self._logits_to_keep else {}
        kwargs[self._cache_kwarg] = cache
        if groups is not None:
            kwargs["instillm_kv_groups"] = groups
        return self._call(input_ids, position_ids, mask, kwargs).logits[:, -1, :]

    def forward_at(self, input_ids, position_ids, mask, cache, positions: torch.Tensor) -> torch.Tensor:
        """One model call over a single (packed) row; the logits at `positions` of it, `[len(positions), vocab]`."""
        kwargs: dict[str, Any] = {"logits_to_keep": positions} if self._logits_to_keep else {}
        kwargs[self._cache_kwarg] = cache
        out = self._call(input_ids, position_ids, mask, kwargs)
        return out.logits[0] if self._logits_to_keep else out.logits[0, positions]

    def _prefill(self, rows: list[Row], cache, width: int, budget: int, min_shared: int = 0) -> torch.Tensor:
        """Prefill rows (right-aligned at `width`): prefixes shared by `min_shared`+ tokens once
        (`_prefill_shared`), then the rest in chunks of similar length, at most `budget` padded
        tokens each; the logits at each row's last position."""
        skips = self._prefill_shared(rows, cache, width, budget, min_shared)
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids) - skips[i], i))
        logits = None
        for chunk in _prefill_chunks([len(rows[i].ids) - skips[i] for i in order], budget):
            idx = [order[j] for j in chunk]
            out = self._prefill_chunk(rows, idx, skips, cache, width)
            if logits is None:
                logits = out.new_empty((len(rows), out.shape[-1]))
            logits[idx] = out
        cache.rows, cache.keep = slice(None), None
        if logits is None:
            raise ValueError("_prefill needs at least one row")
        return logits

    def _prefill_shared(self, rows: list[Row], cache, width: int, budget: int, min_shared: int) -> list[int]:
        """Prefill the prefixes `shared_prefixes` finds, together, and copy each to its rows; tokens skipped per row."""
        skips = [0] * len(rows)
        groups = shared_prefixes([r.ids for r in rows], min_shared) if min_shared > 0 else []
        if not groups:
            return skips
        heads = [Row(-1, rows[members[0]].ids[:n], 0) for members, n in groups]
        longest = max(n for _, n in groups)
        prefixes = _make_cache(self.n_layers, len(heads), longest)
        self._prefill(heads, prefixes, longest, budget)
        device = self.device
        for g, (members, n) in enumerate(groups):
            starts = torch.tensor([width - len(rows[i].ids) for i in members], device=device)
            cache.put_prefix(prefixes, (g, longest - n, n), torch.tensor(members, device=device), starts)
            for i in members:
                skips[i] = n
        self.shared_prefix_tokens += sum(skips)
        return skips

    def _prefill_chunk(self, rows: list[Row], idx: list[int], skips: list[int], cache, width: int) -> torch.Tensor:
        """Prefill rows `idx` past their `skips` (right-aligned at `width`); their last-position logits."""
        device = self.device
        full = torch.tensor([len(rows[i].ids) for i in idx], device=device)
        tails = [rows[i].ids[skips[i] :] for i in idx]
        news = torch.tensor([len(t) for t in tails], device=device)
        lc, lk = int(news.max()), int(full.max())  # query slots; key slots read
        ids = torch.full((len(idx), lc), self.pad_id, dtype=torch.long)
        for j, t in enumerate(tails):
            ids[j, lc - len(t) :] = torch.tensor(t, dtype=torch.long)
        q_slot = torch.arange(width - lc, width, device=device)
        position_ids, mask = _chunk_positions_and_mask(q_slot, torch.arange(width - lk, width, device=device), full)
        keep = (q_slot[None, :] >= width - news[:, None])[:, None, :, None] if any(skips[i] for i in idx) else None
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        cache.rows = slice(idx[0], idx[-1] + 1) if contiguous else torch.tensor(idx, device=device)
        cache.write, cache.read, cache.keep = (width - lc, width), (width - lk, width), keep
        self.prefilled_tokens += int(news.sum())
        return self.forward_last(ids.to(device), position_ids, mask[:, None], cache)

    def _generate_batch(self, rows: list[Row], opts: GenerateOptions) -> None:
        if self._should_stop is not None:  # stopped rows are not even prefilled
            rows = [r for r in rows if not self._should_stop(r.index)]
            if not rows:
                return
        device = self.device
        width = max(len(r.ids) for r in rows)  # prompt slots; rows are right-aligned at `width`
        steps = max(r.budget for r in rows)
        cache = _make_cache(self.n_layers, len(rows), width + steps)
        logits = self._prefill(rows, cache, width, opts.prefill_tokens, opts.min_shared_prefix)

        lens = torch.tensor([len(r.ids) for r in rows], device=device)
        ar = torch.arange(width + steps, device=device)
        valid = ar[None, :] >= (width - lens)[:, None]  # [rows, slots]: prompt tokens and all generated
        pos0 = lens[:, None]  # position of the first generated token
        budget = torch.tensor([r.budget for r in rows], device=device)
        end_ids = torch.tensor(sorted(self.end_ids | set(opts.stop_token_ids)), device=device)
        gens = None
        if opts.do_sample:
            seeds = [row_seed(opts.seed, r.index) if r.seed is None else r.seed for r in rows]
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        window = max((len(s.encode("utf-8")) for s in opts.stop_strings), default=0) + 2
        live = list(rows)
        kv_lo = width - int(lens.max())
        groups = self._groups(live, steps)

        for t in range(steps):
            tok = self.select_tokens(logits, opts, gens)
            is_end = torch.isin(tok, end_ids)
            done = is_end | (budget <= t + 1)
            self._record(live, tok, is_end)
            stopped = self._stop_string_hits(live, opts, window) + self._stopped_by_caller(live)
            if stopped:
                done[stopped] = True
            if self._on_token is not None:
                self._report(live, done, self._on_token)
            if bool(done.all()) or t + 1 == steps:
                break
            if bool(done.any()):  # drop finished rows from the batch and the cache
                keep = (~done).nonzero().squeeze(1)
                keep_list = keep.tolist()
                cache.select_rows(keep)
                live = [live[j] for j in keep_list]
                if gens is not None:
                    gens = [gens[j] for j in keep_list]
                valid, pos0, budget, tok = valid[keep], pos0[keep], budget[keep], tok[keep]
                lens = lens[keep]
                kv_lo = width - int(lens.max())
                groups = self._groups(live, steps - t - 1)
            slot = width + t
            cache.write, cache.read = (slot, slot + 1), (kv_lo, slot + 1)
            logits = self.decode_step(tok, pos0 + t, valid[:, None, None, kv_lo : slot + 1], cache, groups)

    def decode_step(self, tok, positions, mask, cache, groups=None) -> torch.Tensor:
        """One decode step of a batch: feature-major where this generator has that step (up to
        `products.MAX_ROWS` rows), else through the model; the logits `[rows, vocab]`.

        `tok` `[rows]` are the new tokens, `positions` `[rows, 1]` their positions, `mask` the
        boolean `[rows, 1, 1, keys]` of the keys each row attends to; `cache` writes the new keys
        through its layers' `update` (this generator's slot cache, or `ContinuousBatch`'s).
        `groups`: decode-attention groups (`plan_kv_groups`), None for one."""
        if self._step is not None and tok.shape[0] <= MAX_ROWS:
            return self._step(tok, positions, mask, cache, groups)
        return self.forward_last(tok[:, None], positions, mask, cache, groups)

    @staticmethod
    def _record(live: list[Row], tok: torch.Tensor, is_end: torch.Tensor) -> None:
        """Append each live row's new token, or end the row where the token is an end token."""
        tok_list = tok.tolist()
        end_list = is_end.tolist() if bool(is_end.any()) else None
        for j, r in enumerate(live):
            if end_list is not None and end_list[j]:
                r.finish_reason, r.stop_token_id = "stop", tok_list[j]
            else:
                r.tokens.append(tok_list[j])

    def _stop_string_hits(self, live: list[Row], opts: GenerateOptions, window: int) -> list[int]:
        """Positions in `live` of rows whose last `window` tokens now contain a stop string (those rows end)."""
        hits: list[int] = []
        if not opts.stop_strings:
            return hits
        for j, r in enumerate(live):
            if r.stop_token_id is not None:
                continue
            tail = self.tokenizer.decode(r.tokens[-window:], skip_special_tokens=opts.skip_special_tokens)
            hit = next((s for s in opts.stop_strings if s in tail), None)
            if hit is not None:
                r.finish_reason, r.stop_string = "stop", hit
                hits.append(j)
        return hits

    def _stopped_by_caller(self, live: list[Row]) -> list[int]:
        """Positions in `live` of rows that `should_stop` ends now."""
        if self._should_stop is None:
            return []
        return [j for j, r in enumerate(live) if self._should_stop(r.index)]

    @staticmethod
    def _report(live: list[Row], done: torch.Tensor, on_token: TokenCallback) -> None:
        """Tell `on_token` what each live row produced this step (and whether it finished)."""
        for r, d in zip(live, done.tolist()):
            token = None if r.stop_token_id is not None else r.tokens[-1]
            on_token(r.index, token, r.finish_reason if d else None)

    def _groups(self, live: list[Row], remaining: int) -> list[tuple[int, int, int]] | None:
        """Row groups for grouped decode attention (None: one group, plain SDPA)."""
        if not self.group_attention or len(live) < 2:
            return None
        groups = plan_kv_groups([len(r.ids) for r in live], remaining // 2 + 1, GROUP_COST)
        return groups if len(groups) > 1 else None

    @staticmethod
    def select_tokens(logits: torch.Tensor, opts: GenerateOptions, gens: list | None) -> torch.Tensor:
        """Next token per row: argmax, or a sample from the filtered, tempered distribution."""
        if not opts.do_sample:
            return logits.argmax(dim=-1)
        if gens is None:
            raise ValueError("sampling needs one torch.Generator per row")
        scores = logits.float() / opts.temperature
        vocab = scores.shape[-1]
        if 0 < opts.top_k < vocab:
            kth = torch.topk(scores, opts.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if opts.top_p < 1.0:
            sorted_scores, sorted_idx = torch.sort(scores, dim=-1, descending=True)
            probs = sorted_scores.softmax(dim=-1)
            # drop a token when the tokens before it already reach top_p (the first always stays)
            remove = (probs.cumsum(dim=-1) - probs) >= opts.top_p
            remove[:, 0] = False
            scores = scores.scatter(-1, sorted_idx, sorted_scores.masked_fill(remove, float("-inf")))
        logp = scores.log_softmax(dim=-1)
        # Exponential race (= Gumbel-max): argmax(log p - log E), E ~ Exp(1), one generator per row.
        tiny = torch.finfo(torch.float32).tiny
        u = torch.stack([torch.rand(vocab, generator=g, device=logp.device) for g in gens])
        e = -torch.log(u.clamp_(min=tiny))
        return (logp - torch.log(e.clamp_(min=tiny))).argmax(dim=-1)


def _feature_major_step(model: Any, enabled: bool | None, transposed: bool) -> FeatureMajorStep | None:
    """The model's `FeatureMajorStep` if `enabled` (None: where products are transposed and the model
    is supported); asking for it on a model it cannot run raises `ModelError` with the reason."""
    if enabled is None:
        enabled = transposed and unsupported(model) is None
    return FeatureMajorStep(model) if enabled else None


# --------------------------------------------------------------------------------------------
# functional API


def generate_texts(
    model: Any, tokenizer: Any, prompts: Sequence[str], options: GenerateOptions | None = None
) -> list[GenerationOutput]:
    """`Generator(model, tokenizer).generate_texts(prompts, options)`."""
    return Generator(model, tokenizer).generate_texts(prompts, options)


def generate_chat(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Any]],
    options: GenerateOptions | None = None,
    renderer: Any = None,
) -> list[GenerationOutput]:
    """`Generator(model, tokenizer, renderer).generate_chat(conversations, options)`."""
    return Generator(model, tokenizer, renderer).generate_chat(conversations, options)


__all__ = [
    "GenerateOptions",
    "GenerationOutput",
    "Generator",
    "generate_texts",
    "generate_chat",
    "sample_seed",
    "FINISH_REASONS",
]
