"""Decode-step matrix products computed the other way round, where that is faster.

A decode step multiplies a few rows (one per sequence in the batch) by every weight matrix of
the model. torch computes `linear(x, W) = x @ W.T` as one MKL sgemm whose first operand is the
weight (output features x rows, in BLAS's column-major terms); on AMD EPYC (AVX2) MKL's kernel for
that shape is slow when the rows are few. Asking for `W @ x.T` instead puts the rows first, a
shape MKL handles well there, and transposing the small result back costs little. Measured on
SmolLM2-135M in fp32 (`benchmarks/decode_products.py`): decode steps 1.8x faster at 2-4 rows and
1.1-1.2x at 32-64 in `transformers`' own loop; in `Generator`, decoding 4 prompts 1.85x faster,
12 prompts 1.07x, 32 prompts no faster; slower for long prefills and in training, which keep
torch's product. The kernel works on blocks of 8 rows and is slow on a partial one, so the rows
are padded with zeros to a whole block (`padded_rows`): a step of 31 rows then costs what one of
32 does (134 against 194 ms), and `Generator` decodes 64 prompts at batch 32 in 12% less time.
One row is computed as two: MKL's matrix-vector product is slower than its two-row product
(SmolLM2's products of a step: 36 against 25 ms).

`TransposedProducts(model)` finds the model's plain `torch.nn.Linear` layers once; `with
products.active(rows):` swaps their forward for the transposed product while the model runs on
`rows` rows (1..`max_rows`), and puts torch's back afterwards. Layers that already carry their
own forward (accelerate's offloading hooks, for one) are left alone. `wanted(model)` is the
default rule: float32 weights on a CPU whose vendor is AMD, the only place it was measured
faster; elsewhere it stays off until measured.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

MAX_ROWS = 128  # measured faster up to 128 rows; prefills and larger batches keep torch's product


@functools.cache
def cpu_vendor() -> str:
    """The CPU vendor string from /proc/cpuinfo ("AuthenticAMD", "GenuineIntel"; "" if unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wanted(model: torch.nn.Module) -> bool:
    """The default: float32 weights on a CPU, and an AMD CPU (where the transposed product was measured faster)."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype != torch.float32:
        return False
    return cpu_vendor() == "AuthenticAMD"


def padded_rows(rows: int) -> int:
    """Rows the transposed product computes for `rows`: above 8, the next multiple of 8; 3 → 4; 1 → 2.

    MKL's kernel for this shape works on blocks of 8 rows (4 below 8) and is slow on a partial
    block: on SmolLM2-135M, AMD EPYC, a decode step of 31 rows took 194 ms and of 32 rows 134 ms;
    computed as 32 rows (the extra rows zeros, their results dropped) 31 rows took 134 ms. One
    row is a matrix-vector product, slower than two rows: SmolLM2's products of a decode step
    took 36 ms for one row (`mm` or `mv`) and 25 ms for two.
    """
    if rows > 8:
        return -(-rows // 8) * 8
    return {1: 2, 3: 4}.get(rows, rows)


def transposed_linear(module: torch.nn.Linear, x: torch.Tensor, padded: bool = True) -> torch.Tensor:
    """`module(x)` computed as `(W @ x.T).T` (made contiguous): the same values, another BLAS shape.

    `padded`: the rows are padded with zeros to `padded_rows` for the product, and the padding dropped.
    """
    x2 = x.reshape(-1, x.shape[-1])
    rows = x2.shape[0]
    pad = padded_rows(rows) - rows if padded else 0
    if pad:
        x2 = torch.cat([x2, x2.new_zeros(pad, x2.shape[1])])
    if module.bias is None:
        y = torch.mm(module.weight, x2.t())
    else:
        y = torch.addmm(module.bias[:, None], module.weight, x2.t())
    return y[:, :rows].t().contiguous().view(*x.shape[:-1], y.shape[0])


class TransposedProducts:
    """Switches a model's plain linear layers to `transposed_linear` for a few-row forward.

    `padded` False computes the rows as they are (no `padded_rows`; for comparison).
    """

    def __init__(self, model: torch.nn.Module, max_rows: int = MAX_ROWS, padded: bool = True) -> None:
        self.max_rows = max_rows
        self.layers = [m for m in model.modules() if type(m) is torch.nn.Linear]
        self._forwards = [functools.partial(transposed_linear, m, padded=padded) for m in self.layers]

    @contextlib.contextmanager
    def active(self, rows: int) -> Iterator[None]:
        """Within the block the layers use the transposed product, when 1 <= rows <= max_rows."""
        if not 1 <= rows <= self.max_rows:
            yield
            return
        swapped = []
        for module, forward in zip(self.layers, self._forwards):
            if "forward" not in module.__dict__:  # a layer with its own forward keeps it
                module.__dict__["forward"] = forward
                swapped.append(module)
        try:
            yield
        finally:
            for module in swapped:
                module.__dict__.pop("forward", None)


def products_for(model: Any, enabled: bool | None) -> TransposedProducts | None:
    """The `TransposedProducts` of `model` if `enabled` (None: `wanted(model)`), else None."""
    if enabled is None:
        enabled = wanted(model)
    return TransposedProducts(model) if enabled else None
