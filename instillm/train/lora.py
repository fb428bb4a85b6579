"""A leaner forward for peft's LoRA linear layers while training.

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: the scaling and the sum are two elementwise
passes over the layer's full output (and two more in the backward), for every adapted layer.
`fuse_lora_forward` gives each peft `lora.Linear` a forward that scales the rank-r intermediate
instead and adds the adapter's product into the base output inside one matrix product:
`addmm(base(x), lora_A(x) * scaling, B^T)`. The same function up to rounding (in bf16 it rounds
less: one rounding of the sum instead of three), the same parameters, so adapters save, load and
merge as peft's. Layers in any other state (a LoRA variant such as DoRA, dropout, several or
disabled adapters, merged weights, per-call adapter names) keep peft's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def fuse_lora_forward(model: torch.nn.Module) -> int:
    """Give every peft LoRA linear layer of `model` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.forward = _fused_forward(layer)  # type: ignore[method-assign]  # nn.Module.__call__ calls it
    return len(layers)


def _fused_forward(layer: Any) -> Any:
    peft_forward = layer.forward  # the bound class method

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = _plain_adapter(layer)
        if adapter is None or args or kwargs:
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x)
        weight_a, weight_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        autocast = torch.is_autocast_enabled(x.device.type)  # casts every operand to its dtype
        h = F.linear(x if autocast else x.to(weight_a.dtype), weight_a) * layer.scaling[adapter]
        if weight_b.dtype != result.dtype and not autocast:
            return result + F.linear(h, weight_b).to(result.dtype)  # mixed dtypes outside autocast
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), weight_b.t())
        return flat.view(result.shape)

    return forward


def _plain_adapter(layer: Any) -> str | None:
    """The one active adapter's name when the layer is plain LoRA (no variant, dropout, bias or merge)."""
    active = list(layer.active_adapters)
    if layer.disable_adapters or layer.merged or len(active) != 1:
        return None
    name = active[0]
    plain = (
        name in layer.lora_A
        and name not in layer.lora_variant
        and isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and layer.lora_A[name].bias is None
        and layer.lora_B[name].bias is None
    )
    return name if plain else None
