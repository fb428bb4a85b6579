"""From rendered examples to micro-batches: padded or packed, in a seeded order per epoch.

A *row* is one sequence of a micro-batch: a single example (padded batches) or several examples
packed end to end (packing). An epoch is a list of micro-batches, each a list of rows, each a
tuple of example indices; it is a pure function of (lengths, settings, seed, epoch), so a
resumed run rebuilds it and skips exactly the micro-batches already consumed, and every
process of a distributed run builds the same list and takes its own share.

Packed rows restart `position_ids` at 0 for each example and carry `segment_ids` (1, 2, ... per
example, 0 for padding). Attention must not cross examples: restarting position ids alone does
NOT isolate them with sdpa or eager attention in transformers 5.x (measured), so the model gets
an additive float mask of shape (B, 1, L, L), 0 where a query may attend (same example and
causal) and the dtype's minimum elsewhere. transformers passes a 4D mask through unchanged
(`masking_utils._preprocess_mask_arguments`). A *boolean* 4D mask is not used: eager attention
adds the mask to the scores, so a bool mask is misread. With flash_attention_2 (GPU) no mask is
built: transformers detects packed rows from the restarting `position_ids` and runs the varlen
kernel, which is also the fast path (no L×L mask).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from instillm.data.pack import pack_lengths
from instillm.data.render import IGNORE_INDEX, Rendered

Row = tuple[int, ...]  # indices of the examples in one sequence
MEGA_BATCH_FACTOR = 50  # length grouping sorts within windows of 50 micro-batches


@dataclass(frozen=True)
class MicroBatch:
    """Tensors of one micro-batch; all (B, L). Padded: attention_mask. Packed: position/segment ids."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # aligned with input_ids; IGNORE_INDEX where no loss
    attention_mask: torch.Tensor | None = None  # 1 = real token (padded batches)
    position_ids: torch.Tensor | None = None  # restart at 0 per example (packed batches)
    segment_ids: torch.Tensor | None = None  # 1..k per example in a row, 0 = padding (packed)

    @property
    def n_trained(self) -> int:
        """Tokens that receive loss: label t is predicted from tokens < t, so label 0 never is."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        if self.segment_ids is not None:
            return int((self.segment_ids > 0).sum())
        return self.input_ids.numel()

    def to(self, device: torch.device | str) -> MicroBatch:
        """A copy on `device`."""
        return MicroBatch(
            self.input_ids.to(device),
            self.labels.to(device),
            _to(self.attention_mask, device),
            _to(self.position_ids, device),
            _to(self.segment_ids, device),
        )

    def model_inputs(self) -> dict[str, Any]:
        """The tensors the loss function takes, as keyword arguments (None fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _to(tensor: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    """`tensor` on `device` (None stays None)."""
    return tensor.to(device) if tensor is not None else None


# --------------------------------------------------------------------------------------------
# collation


def pad_collate(items: Sequence[Rendered], pad_id: int) -> MicroBatch:
    """Right-padded batch: pads get attention_mask 0 and label IGNORE_INDEX.

    Built from padded Python lists with one `torch.tensor` call per field (one small tensor per
    row and field cost ~1 ms per batch of 16, a few % of a step of the quickstart's tiny model)."""
    width = max(len(r) for r in items)
    ids = torch.tensor([_padded(r.input_ids, width, pad_id) for r in items], dtype=torch.long)
    labels = torch.tensor([_padded(r.labels, width, IGNORE_INDEX) for r in items], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in items])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return MicroBatch(ids, labels, attention_mask=mask)


def _padded(values: Sequence[int], width: int, fill: int) -> list[int]:
    """`values` followed by `fill` up to `width` items."""
    return [*values, *[fill] * (width - len(values))]


def pack_collate(rows: Sequence[Sequence[Rendered]], pad_id: int) -> MicroBatch:
    """Packed batch: each row holds several examples; positions restart and segments number them."""
    width = max(sum(len(r) for r in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    for i, row in enumerate(rows):
        start = 0
        for k, r in enumerate(row, start=1):
            n = len(r)
            ids[i, start : start + n] = torch.tensor(r.input_ids)
            labels[i, start : start + n] = torch.tensor(r.labels)
            # The first token of an example is never predicted from the previous example.
            labels[i, start] = IGNORE_INDEX
            positions[i, start : start + n] = torch.arange(n)
            segments[i, start : start + n] = k
            start += n
    return MicroBatch(ids, labels, position_ids=positions, segment_ids=segments)


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, 1, L, L): 0 where query i may attend key j (same segment, j <= i), else min.

    Padding (segment 0) attends to earlier padding, so no row is fully masked (no NaN softmax).
    """
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, L, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal)[:, None]  # (B, 1, L, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def collate(items: Sequence[Rendered], rows: Sequence[Row], pad_id: int, packing: bool) -> MicroBatch:
    """The micro-batch for `rows` of `items` (packed when `packing`)."""
    if packing:
        return pack_collate([[items[i] for i in row] for row in rows], pad_id)
    return pad_collate([items[row[0]] for row in rows], pad_id)


# --------------------------------------------------------------------------------------------
# order


def _rng(seed: int, epoch: int) -> random.Random:
    """One generator per (seed, epoch): the epoch's order depends on nothing else."""
    return random.Random(f"instillm-batches-{seed}-{epoch}")


def epoch_rows(lengths: Sequence[int], max_length: int, packing: bool, seed: int, epoch: int) -> list[Row]:
    """The rows of one epoch in training order: shuffled examples, or shuffled best-fit-decreasing bins."""
    rng = _rng(seed, epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not packing:
        return [(i,) for i in order]
    bins = pack_lengths([lengths[i] for i in order], max_length)
    rows = [tuple(order[j] for j in b) for b in bins]
    rng.shuffle(rows)
    return rows


def count_rows(lengths: Sequence[int], max_length: int, packing: bool) -> int:
    """Rows per epoch: examples, or packed bins (the bin count does not depend on the order)."""
    return len(pack_lengths(lengths, max_length)) if packing else len(lengths)


def epoch_micro_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_length: int,
    packing: bool = False,
    group_by_length: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[Row]]:
    """Micro-batches of one epoch (the last may be short); a pure function of its arguments.

    Length grouping (less padding): rows are sorted longest first within mega-batches of
    50 × batch_size consecutive shuffled rows, cut into micro-batches, and the micro-batches
    shuffled, so each step still sees a random mix of lengths over the epoch.
    """
    rows = epoch_rows(lengths, max_length, packing, seed, epoch)
    rng = _rng(seed + 1, epoch)
    if group_by_length:
        window = MEGA_BATCH_FACTOR * batch_size
        row_len = [sum(lengths[i] for i in row) for row in rows]
        idx = list(range(len(rows)))
        idx = [j for k in range(0, len(idx), window) for j in sorted(idx[k : k + window], key=lambda j: -row_len[j])]
        rows = [rows[j] for j in idx]
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def step_shard(
    micro_batches: Sequence[list[Row]], step_in_epoch: int, accumulation: int, world_size: int, rank: int
) -> list[list[Row]]:
    """This process's micro-batches for one optimizer step.

    Step s uses global micro-batches [s·A·W, (s+1)·A·W); process r takes every W-th from r. So
    W processes × A accumulation see the same micro-batches as 1 process × (A·W) accumulation.
    """
    per_step = accumulation * world_size
    chunk = micro_batches[step_in_epoch * per_step : (step_in_epoch + 1) * per_step]
    return list(chunk[rank::world_size])


def eval_micro_batches(n: int, batch_size: int, world_size: int = 1, rank: int = 0) -> Iterator[list[Row]]:
    """Eval micro-batches in order (no shuffle), this process taking every world_size-th."""
    batches: list[list[Row]] = [[(i,) for i in range(k, min(k + batch_size, n))] for k in range(0, n, batch_size)]
    yield from batches[rank::world_size]
