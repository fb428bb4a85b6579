"""Attention over packed rows one example at a time (`packed_attention: segments`).

A packed row holds several examples; each must attend only to itself. The additive
block-diagonal mask (`packed_attention: mask`) gets that right, but with sdpa or eager the kernel
still computes every (query, key) pair of the row, masked or not: (L, L) per row for L = max_length.
This backend cuts the rows into their examples (and the padding tail) and runs causal attention on
each piece alone, so the work is the sum of (length²) over the examples.

On a CPU, pieces up to `MATH_MAX_LENGTH` tokens use plain math attention (two bmm's and a softmax,
grouped-query heads without repeating keys): torch's CPU flash kernel has a slow backward, most of
all in bf16 on short pieces (~1 ms for 32 tokens × 8 heads, against ~0.2 ms in fp32); math
attention's backward is one fused softmax backward and four bmm's (measured in
benchmarks/README.md). Longer pieces, and every piece on other devices, use SDPA with
`is_causal=True`, whose memory stays linear in the length.

It is a transformers attention backend (`AttentionInterface`) named `SEGMENTS`. The piece lengths
come as the `segment_lengths` keyword of the decoder's forward; without it (evaluation's padded
batches, generation) the backend *is* sdpa, with sdpa's masks.

`VARLEN` (`packed_attention: varlen`) takes the same pieces to torch's flash varlen kernel
(`torch.nn.attention.varlen.varlen_attn`, CUDA, bf16/fp16) in one call per layer, where `SEGMENTS`
makes one call per piece: on a GPU a launch per example and layer would cost more than the attention.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from instillm.errors import ConfigError

SEGMENTS = "instillm_segments"
VARLEN = "instillm_varlen"
PIECE_BACKENDS = (SEGMENTS, VARLEN)  # the backends that take `segment_lengths`
MATH_MAX_LENGTH = 1024  # longest piece run as math attention on a CPU; its scores are (heads, L, L)

_causal_bias: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def register() -> None:
    """Make `SEGMENTS` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENTS, segments_attention_forward)
    AttentionMaskInterface.register(SEGMENTS, sdpa_mask)
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)


def segment_lengths(segment_ids: torch.Tensor) -> torch.Tensor:
    """Lengths (n_pieces,) of the runs of equal ids in each row of (B, L) segment_ids, row by row.

    Pieces never cross rows, so the lengths sum to B·L; the padding tail (id 0) is a piece too.
    """
    batch, length = segment_ids.shape
    flat = segment_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True  # a row's first token starts a piece even if the ids match the row above
    idx = starts.nonzero().squeeze(1)
    ends = torch.cat([idx[1:], idx.new_tensor([batch * length])])
    return ends - idx


def _piece_backend(attend: Any) -> Any:
    """A transformers attention backend: (B, H, L, D) query, (B, KV, L, D) key/value -> ((B, L, H, D), None),
    `attend(query, key, value, segment_lengths, scale, dropout)` on packed rows, sdpa without the lengths."""

    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        segment_lengths: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if segment_lengths is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return attend(query, key, value, segment_lengths, scale, dropout), None

    return forward


def _varlen_or_pieces(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, scale: float, dropout: float
) -> torch.Tensor:
    """Every piece in one call of the flash varlen kernel, or one piece at a time with dropout (it has none)."""
    if dropout > 0:
        return _pieces_attention(query, key, value, lengths, scale, dropout)
    return _varlen_attention(query, key, value, lengths, scale)


def _flattened(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> list[torch.Tensor]:
    """(B, heads, L, D) -> (B·L, heads, D), the tokens of all rows end to end, in autocast's dtype when it
    is on (as sdpa would run)."""
    batch, _, length, dim = query.shape
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    return [x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).to(dtype) for x in (query, key, value)]


@torch.compiler.disable  # the longest piece is data
def _varlen_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention within each piece of the flattened rows, in one kernel call; returns (B, L, H, D)."""
    batch, heads, length, dim = query.shape
    q, k, v = _flattened(query, key, value)
    with torch.autocast(query.device.type, enabled=False):
        starts = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        return varlen_causal(q, k, v, starts, int(lengths.max()), scale).view(batch, length, heads, dim)


def varlen_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor, longest: int, scale: float
) -> torch.Tensor:
    """Causal attention within each piece [starts[i], starts[i+1]) of (T, H, D) q and (T, KV, D) k/v, by
    `torch.nn.attention.varlen.varlen_attn` in whichever signature this torch has: causal as
    `window_size=(-1, 0)` or `is_causal`; grouped heads as `enable_gqa` or repeated; the scale folded into
    q where the function takes none."""
    from torch.nn.attention.varlen import varlen_attn

    params = _parameter_names(varlen_attn)
    kwargs: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    group = q.shape[1] // k.shape[1]
    if group > 1 and "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale != q.shape[-1] ** -0.5:  # its default scale is 1/sqrt(D)
        q = q * (scale * q.shape[-1] ** 0.5)
    out = varlen_attn(q, k, v, starts, starts, longest, longest, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # (out, aux) only when aux is asked for


@functools.cache
def _parameter_names(fn: Any) -> frozenset[str]:
    """`fn`'s parameter names, read once per function (varlen_causal runs once per layer and step)."""
    return frozenset(inspect.signature(fn).parameters)


def check_varlen(device: torch.device) -> None:
    """ConfigError unless `packed_attention: varlen` can run here: a CUDA device and torch's varlen kernel."""
    has_kernel = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    if device.type != "cuda" or not has_kernel:
        where = f"this run is on {device.type}" if device.type != "cuda" else f"torch {torch.__version__} has none"
        raise ConfigError(
            "packed_attention: 'varlen' runs torch's flash varlen kernel, which needs a CUDA device and "
            f"torch >= 2.10 ({where}); use 'auto'"
        )


@torch.compiler.disable  # the piece lengths are data: traced, every new packing would recompile
def _pieces_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, scale: float, dropout: float
) -> torch.Tensor:
    """Causal attention within each piece of the flattened rows; returns (B, L, H, D)."""
    batch, heads, length, dim = query.shape
    q, k, v = _flattened(query, key, value)
    with torch.autocast(query.device.type, enabled=False):  # the ops below run in q's dtype
        sizes = lengths.tolist()
        parts = [
            _causal_attention(a, b, c, scale, dropout)
            for a, b, c in zip(q.split(sizes), k.split(sizes), v.split(sizes))
        ]
        return torch.cat(parts).view(batch, length, heads, dim)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float) -> torch.Tensor:
    """Causal attention of one piece: (L, H, D) q, (L, KV, D) k/v -> (L, H, D)."""
    length, heads, dim = q.shape
    kv = k.shape[1]
    group = heads // kv
    if q.device.type != "cpu" or length > MATH_MAX_LENGTH:
        if group > 1:  # repeated here rather than enable_gqa, which needs torch >= 2.5
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), dropout_p=dropout, is_causal=True, scale=scale
        )
        return out.transpose(0, 1)
    # Query heads h = j·group + g share key head j: one bmm per key head over all its query heads.
    qg = (q * scale).view(length, kv, group, dim).permute(1, 2, 0, 3).reshape(kv, group * length, dim)
    scores = torch.bmm(qg, k.permute(1, 2, 0)).view(kv, group, length, length)
    probs = torch.softmax(scores + _bias(length, q.dtype, q.device), dim=-1)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    out = torch.bmm(probs.view(kv, group * length, length), v.transpose(0, 1))  # (KV, group·L, D)
    return out.view(kv, group, length, dim).permute(2, 0, 1, 3).reshape(length, heads, dim)


def _bias(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(length, length) view of a cached additive causal bias: 0 on and below the diagonal, -inf above."""
    cached = _causal_bias.get((dtype, device))
    if cached is None or cached.shape[0] < length:
        size = max(length, 512)
        cached = torch.full((size, size), float("-inf"), dtype=dtype, device=device).triu(1)
        _causal_bias[(dtype, device)] = cached
    return cached[:length, :length]


# the two backends (`register` names them SEGMENTS and VARLEN)
segments_attention_forward = _piece_backend(_pieces_attention)
varlen_attention_forward = _piece_backend(_varlen_or_pieces)
