"""A decode step computed feature-major: hidden states `[features, rows]` from embedding to logits.

`instillm.llm.products` computes a decode step's linear layers as `W @ x.T`, the shape MKL is
fast at for few rows on AMD EPYC, and transposes each result back for the next module of the
`transformers` model. `FeatureMajorStep` keeps the whole step feature-major instead: the hidden
states are `[features, rows]`, each linear layer is one `W @ h` with nothing transposed before
or after it, RMSNorm reduces over dim 0, rotary embeddings act on `[heads, head_dim, rows]`, and
only the attention turns its few query rows round. It calls torch's operations directly rather
than the model's modules, so a step also spends less time in Python. The operations are
`transformers`' own, in the same order, on the same weights: the logits agree up to float
rounding (tested against the model's forward, and greedy tokens against `generate`).

Measured on SmolLM2-135M, fp32, AMD EPYC (2 cores), 64 prompts and 64 new tokens
(`benchmarks/generation_throughput.py --model real`, `instillm_model_decode` timed in the same
repeats): 21.2 → 18.5 s at batch 32 and 18.1 → 15.3 s at batch 64, the same tokens.

The rows are padded with zero columns to `products.padded_rows` (MKL is slow on a partial block
of 8 columns). Every operation but attention works on each column alone and attention reads
only the real rows, so the padding changes nothing; it is dropped from the logits.

Supported: `transformers`' Llama, Mistral (without a sliding window) and Qwen2 causal LMs
whose linear layers are plain `torch.nn.Linear` (so not a PEFT adapter or quantized layers) and
whose MLP is SiLU-gated, with no accelerate hooks (the step reads the weights where they are);
`unsupported(model)` says why another model is not.
"""

from __future__ import annotations

from typing import Any

import torch

from instillm.errors import ModelError
from instillm.llm.attention import attend_in_groups, step_attention
from instillm.llm.products import padded_rows

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")
# Up to this many columns MKL's `W @ h` is slow with `h` feature-major (600 against 130 us for a
# 1536x576 fp32 weight at 2-8 columns, AMD EPYC): `h` is then copied row-major for the product.
FEW_COLUMNS = 8
# A weight of more rows than this is multiplied in blocks of this many rows: SmolLM2's output layer
# (49152 x 576, fp32, AMD EPYC) took 15.8 ms at 32 columns in blocks of 2048 against 19.3 ms whole
# (24 columns: 15.4 against 17.9; 4: the same); blocks of 512: 16.5 ms. The 1536-row weights of
# its layers were slower in blocks, so they stay whole.
ROW_BLOCK = 2048


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported(model: Any) -> str | None:
    """Why `FeatureMajorStep` cannot run `model`, or None when it can."""
    base = _base(model)
    config = base.config
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} is not 'silu'"
    if getattr(config, "sliding_window", None) is not None and (
        kind == "mistral" or getattr(config, "use_sliding_window", False)
    ):
        return "it attends through a sliding window"
    inner: Any = getattr(base, "model", None)
    if not _plain_layout(base, inner):
        return "its modules are not laid out as transformers' (model.embed_tokens, layers, norm, rotary_emb; lm_head)"
    if not all(_plain_layer(layer) for layer in inner.layers):
        return "its linear layers are not all plain torch.nn.Linear (a PEFT adapter or quantized layers)"
    if any(_hooked(m) for m in base.modules()):
        return "modules carry their own forward or accelerate hooks (offloaded or dispatched weights)"
    return None


def _hooked(module: Any) -> bool:
    """Whether `module` runs more than its class's forward (accelerate's hooks move weights in and out)."""
    return "forward" in module.__dict__ or hasattr(module, "_hf_hook")


def _plain_layout(base: Any, inner: Any) -> bool:
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    return type(inner.embed_tokens) is torch.nn.Embedding and type(getattr(base, "lm_head", None)) is torch.nn.Linear


def _plain_layer(layer: Any) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    linears = [getattr(attn, n, None) for n in _ATTENTION] + [getattr(mlp, n, None) for n in _MLP]
    norms = [getattr(layer, n, None) for n in _NORMS]
    return all(type(m) is torch.nn.Linear for m in linears) and all(hasattr(n, "variance_epsilon") for n in norms)


class FeatureMajorStep:
    """One decode step of `model` for a `Generator` batch, feature-major; raises `ModelError` if unsupported.

    Called with the rows' new tokens `[rows]`, their positions `[rows, 1]`, the boolean mask
    `[rows, 1, 1, keys]`, the batch's KV cache (a `Generator`'s or a `ContinuousBatch`'s, written
    through its layers' `update`) and the decode-attention groups (None: one); returns the
    logits `[rows, vocab]`.
    """

    def __init__(self, model: Any) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ModelError(f"the feature-major decode step cannot run this model: {reason}")
        base = _base(model)
        inner = base.model
        self.embed, self.rotary, self.final_norm = inner.embed_tokens, inner.rotary_emb, inner.norm
        self.layers, self.head = list(inner.layers), base.lm_head
        attn = self.layers[0].self_attn
        self.head_dim, self.scaling = int(attn.head_dim), float(attn.scaling)
        self.heads, self.kv_heads = int(base.config.num_attention_heads), int(base.config.num_key_value_heads)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any, groups=None):
        rows = ids.shape[0]
        h = self._embed(ids)
        cos, sin = self._rotary(h, positions, rows)
        rotary = (cos, signed_sin(sin))
        bias = additive(mask, h.dtype)  # once a step, not once a layer
        out = h.new_zeros(self.heads * self.head_dim, h.shape[1])  # attention outputs; padding stays zero
        for layer, cached in zip(self.layers, cache.layers):
            x = rms_norm(layer.input_layernorm, h)
            h = h + self._attention(layer.self_attn, x, rotary, bias, cached, groups, out)
            h = h + _mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))
        return product(self.head, rms_norm(self.final_norm, h))[:, :rows].t()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The tokens' embeddings as `[features, padded rows]`, zeros in the padding."""
        weight = self.embed.weight
        h = weight.new_zeros(weight.shape[1], padded_rows(ids.shape[0]))
        h[:, : ids.shape[0]] = torch.nn.functional.embedding(ids.reshape(-1), weight).t()
        return h

    def _rotary(self, h: torch.Tensor, positions: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary cos and sin at `positions`, as `[1, head_dim, padded rows]`."""
        cos, sin = self.rotary(h, positions.reshape(rows, 1))  # [rows, 1, head_dim]
        out = []
        for t in (cos, sin):
            c = t.new_zeros(1, t.shape[-1], h.shape[1])
            c[0, :, :rows] = t[:, 0].t()
            out.append(c)
        return out[0], out[1]

    def _attend(self, q, keys, values, mask) -> torch.Tensor:
        return step_attention(q, keys, values, mask, self.scaling)

    def _attention(self, attn, x, rotary, mask, cached, groups, out: torch.Tensor) -> torch.Tensor:
        """The attention block's output for normed `x`, feature-major; the new keys/values go to `cached`."""
        rows = mask.shape[0]
        q = rotate(product(attn.q_proj, x), self.heads, *rotary)
        k = rotate(product(attn.k_proj, x), self.kv_heads, *rotary)
        v = product(attn.v_proj, x).view(self.kv_heads, self.head_dim, -1)
        keys, values = cached.update(by_row(k, rows), by_row(v, rows))
        o = attend_in_groups(self._attend, by_row(q, rows), keys, values, mask, groups)
        out[:, :rows] = o.reshape(rows, -1).t()
        return product(attn.o_proj, out)


def product(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear` applied to feature-major `x` `[in, columns]`: `W @ x (+ b)`, `[out, columns]`.

    A weight of more than `ROW_BLOCK` rows (the output layer) is multiplied a block of rows at a time.
    """
    if x.shape[1] <= FEW_COLUMNS:
        x = x.t().contiguous().t()
    weight, bias = linear.weight, linear.bias
    if weight.shape[0] > ROW_BLOCK:
        out = x.new_empty(weight.shape[0], x.shape[1])
        for i in range(0, weight.shape[0], ROW_BLOCK):
            torch.mm(weight[i : i + ROW_BLOCK], x, out=out[i : i + ROW_BLOCK])
        return out if bias is None else out.add_(bias[:, None])
    if bias is None:
        return torch.mm(weight, x)
    return torch.addmm(bias[:, None], weight, x)


def rms_norm(norm: Any, h: torch.Tensor) -> torch.Tensor:
    """`transformers`' RMSNorm (in fp32, then the weight) over the features of feature-major `h`."""
    x = h.to(torch.float32)
    y = (x * x.pow(2).mean(0, keepdim=True).add_(norm.variance_epsilon).rsqrt_()).to(h.dtype)
    weight = norm.weight[:, None]
    return y.mul_(weight) if weight.dtype == y.dtype else weight * y


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """`sin` `[1, head_dim, columns]` with its first half negated, for `rotate`."""
    half = sin.shape[1] // 2
    return torch.cat((-sin[:, :half], sin[:, half:]), dim=1)


def rotate(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of feature-major `x` (`[heads * head_dim, columns]` → `[heads, head_dim, columns]`).

    `sin` is `signed_sin` of the model's: `rotate_half(x) * sin` is `x` rolled by half the head
    dimension times `sin` with its first half negated (the same products: only signs move).
    """
    x = x.view(heads, cos.shape[1], -1)
    return (x * cos).add_(torch.roll(x, x.shape[1] // 2, dims=1).mul_(sin))


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive one: 0 where attended, -inf elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def by_row(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`[heads, head_dim, columns]` as the attention wants it: `[rows, heads, 1, head_dim]` (a view)."""
    return x[:, :, :rows].permute(2, 0, 1)[:, :, None]


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    gate = product(mlp.gate_proj, x)
    return product(mlp.down_proj, torch.nn.functional.silu(gate).mul_(product(mlp.up_proj, x)))
