"""Response-only cross-entropy without materialising (B, L, vocab) logits.

The decoder gives hidden states (B, L, H). Label t is predicted from position t-1, so
`hidden[:, :-1]` pairs with `labels[:, 1:]`; only pairs whose label is trained are kept (N rows),
projected by the LM head in chunks of `chunk_size` rows and summed in fp32. When there is more
than one chunk each chunk is activation-checkpointed, so at most one chunk of (rows, vocab)
logits is alive at a time (it is recomputed in backward).

Normalisation (`step_scale`): the loss of an optimizer step is the mean over *all* trained tokens
of that step, across micro-batches and processes. Each micro-batch's `loss_sum` is multiplied by
`world_size / global_count`, where `global_count` is the step's trained-token count summed over
processes; DDP averages gradients over `world_size`, so the result is exactly
sum(loss_sum) / global_count, whatever the split into micro-batches and processes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from instillm.data.render import IGNORE_INDEX
from instillm.errors import ModelError
from instillm.train.attention import PIECE_BACKENDS, segment_lengths
from instillm.train.batching import packed_attention_mask

DEFAULT_CHUNK_SIZE = 4096  # rows of hidden states projected to the vocabulary at once


def unwrap(model: nn.Module) -> nn.Module:
    """The causal LM inside DDP / TokenLoss / peft wrappers (peft: the LM with LoRA layers in it)."""
    for _ in range(8):  # wrappers nest a few levels at most
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, TokenLoss):
            model = model.model
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = _call_if_present(model, "get_base_model")
        else:
            return model
    raise ModelError("could not unwrap the model (too many nested wrappers)")


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder returning hidden states, LM head) of a Hugging Face causal LM, peft-wrapped or not."""
    lm = unwrap(model)
    decoder = _call_if_present(lm, "get_decoder")
    if decoder is None or decoder is lm:
        base = getattr(lm, "base_model", None)  # transformers: the `base_model_prefix` submodule
        decoder = base if base is not None and base is not lm else None
    head = _call_if_present(lm, "get_output_embeddings")
    if decoder is None or head is None:
        raise ModelError(f"{type(lm).__name__} has no separate decoder and LM head; instillm needs a causal LM")
    return decoder, head


def _call_if_present(model: nn.Module, method: str) -> Any:
    """`model.<method>()` when the model has that method, else None (Hugging Face / peft API lookups)."""
    found = getattr(model, method, None)
    return found() if found is not None else None


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (rows, H) hidden states against (rows,) targets, in fp32."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_ce_sum(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Sum of cross-entropy over rows, projecting at most `chunk_size` rows to the vocabulary at once."""
    if hidden.shape[0] == 0:
        # No trained token: a zero that still depends on every parameter (DDP expects gradients).
        return head(hidden).float().sum() * 0.0
    if hidden.shape[0] <= chunk_size or not torch.is_grad_enabled():
        total = sum(_ce_sum(head, h, t) for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)))
        assert isinstance(total, torch.Tensor)  # hidden has rows, so there is at least one chunk
        return total
    parts = [
        checkpoint(_ce_sum, head, h, t, use_reentrant=False)
        for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size))
    ]
    return torch.stack(parts).sum()


def _weight_dtype(head: nn.Module) -> torch.dtype:
    """The dtype of the LM head's weight (what the additive attention mask is built in)."""
    weight = head.weight
    if not isinstance(weight, torch.Tensor):
        raise ModelError(f"the LM head {type(head).__name__} has no weight tensor")
    return weight.dtype


def token_loss_sum(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed fp32 cross-entropy over trained tokens, number of trained tokens) of one micro-batch.

    Padded batches pass a (B, L) attention_mask; packed batches pass position_ids and
    segment_ids. How packed examples are kept apart depends on the model's attention backend:
    `SEGMENTS` and `VARLEN` get the example lengths and attend within each; flash_attention_2 needs no mask
    (transformers finds the examples from the restarting position_ids); sdpa and eager get the
    additive (B, 1, L, L) block-diagonal mask.
    """
    decoder, head = split_causal_lm(model)
    extra: dict[str, torch.Tensor] = {}
    if segment_ids is not None:
        backend = getattr(decoder.config, "_attn_implementation", None)
        if backend in PIECE_BACKENDS:
            extra["segment_lengths"] = segment_lengths(segment_ids)
            # All ones: no padding mask, so transformers builds no (L, L) mask from the positions.
            attention_mask = torch.ones_like(segment_ids)
        elif backend != "flash_attention_2":
            attention_mask = packed_attention_mask(segment_ids, dtype=_weight_dtype(head))
    out = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, L, H)
    targets = labels[:, 1:]  # (B, L-1): the token each position must predict
    keep = targets != IGNORE_INDEX
    loss_sum = chunked_ce_sum(head, hidden[:, :-1][keep], targets[keep], chunk_size)  # rows (N, H)
    return loss_sum, keep.sum()


def step_scale(global_count: int, world_size: int) -> float:
    """Factor for each micro-batch's loss_sum so DDP's gradient average is the mean over the step's tokens."""
    return world_size / max(int(global_count), 1)


class TokenLoss(nn.Module):
    """`token_loss_sum` as a module, so DDP wraps the whole computation (and syncs its gradients)."""

    def __init__(self, model: nn.Module, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token_loss_sum(self.model, chunk_size=self.chunk_size, **batch)
