"""Padded and packed micro-batches, the packed attention mask, and the seeded epoch order."""

from __future__ import annotations

import pytest
import torch

from instillm.data.render import IGNORE_INDEX, Rendered
from instillm.train.batching import (
    count_rows,
    epoch_micro_batches,
    epoch_rows,
    eval_micro_batches,
    pack_collate,
    packed_attention_mask,
    pad_collate,
    step_shard,
)


def _r(ids, labels):
    return Rendered(list(ids), list(labels))


def test_pad_collate_pads_right_and_masks_labels():
    a, b = _r([5, 6, 7], [-100, 6, 7]), _r([8, 9], [-100, 9])
    mb = pad_collate([a, b], pad_id=0)
    assert mb.input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert mb.labels.tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert mb.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert {t.dtype for t in (mb.input_ids, mb.labels, mb.attention_mask)} == {torch.long}
    assert mb.n_trained == 3 and mb.n_tokens == 5
    assert set(mb.model_inputs()) == {"input_ids", "labels", "attention_mask"}


def test_pack_collate_restarts_positions_and_numbers_segments():
    a, b, c = _r([5, 6, 7], [5, 6, 7]), _r([8, 9], [8, 9]), _r([4], [-100])
    mb = pack_collate([[a, b], [c]], pad_id=0)
    assert mb.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    assert mb.segment_ids.tolist() == [[1, 1, 1, 2, 2], [1, 0, 0, 0, 0]]
    # The first token of each example is never a target (it would be predicted across examples).
    assert mb.labels.tolist() == [[-100, 6, 7, -100, 9], [-100] * 5]
    assert mb.attention_mask is None and mb.n_tokens == 6


def test_packed_mask_is_additive_float_block_causal():
    seg = torch.tensor([[1, 1, 2, 2, 0]])
    m = packed_attention_mask(seg, torch.float32)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.float32
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert m[0, 0, 2, 0] == torch.finfo(torch.float32).min


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_example_sees_nothing_of_its_neighbour(tiny_model_dir, impl):
    """Logits of example 2 packed after example 1 equal its logits alone (fp32, 1e-5)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).eval()
    g = torch.Generator().manual_seed(0)
    first = torch.randint(5, 2000, (9,), generator=g).tolist()
    second = torch.randint(5, 2000, (6,), generator=g).tolist()
    mb = pack_collate([[_r(first, first), _r(second, second)]], pad_id=0)
    mask = packed_attention_mask(mb.segment_ids, torch.float32)
    with torch.no_grad():
        alone = model(torch.tensor([second])).logits[0]
        packed = model(mb.input_ids, attention_mask=mask, position_ids=mb.position_ids).logits[0, 9:]
        leaky = model(mb.input_ids, position_ids=mb.position_ids).logits[0, 9:]
    assert torch.allclose(packed, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(leaky, alone, atol=1e-3)  # position ids alone do not isolate


def test_epoch_order_is_a_function_of_seed_and_epoch():
    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10] * 3
    a = epoch_micro_batches(lengths, 4, 16, seed=1, epoch=0)
    assert a == epoch_micro_batches(lengths, 4, 16, seed=1, epoch=0)
    assert a != epoch_micro_batches(lengths, 4, 16, seed=1, epoch=1)
    assert a != epoch_micro_batches(lengths, 4, 16, seed=2, epoch=0)
    flat = sorted(i for mb in a for row in mb for i in row)
    assert flat == list(range(len(lengths)))
    assert [len(mb) for mb in a] == [4] * 7 + [2]


def test_packed_epoch_uses_every_example_once_within_capacity():
    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10] * 3
    batches = epoch_micro_batches(lengths, 2, 16, packing=True, seed=0, epoch=3)
    rows = [row for mb in batches for row in mb]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 16 for row in rows)
    assert len(rows) == count_rows(lengths, 16, packing=True) == len(epoch_rows(lengths, 16, True, 0, 0))


def test_group_by_length_reduces_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(800)]

    def padding(batches):
        return sum(len(mb) * max(lengths[r[0]] for r in mb) - sum(lengths[r[0]] for r in mb) for mb in batches)

    plain = epoch_micro_batches(lengths, 8, 128, seed=0, epoch=0)
    grouped = epoch_micro_batches(lengths, 8, 128, group_by_length=True, seed=0, epoch=0)
    assert sorted(i for mb in grouped for r in mb for i in r) == list(range(800))
    assert padding(grouped) < padding(plain) / 5


def test_shards_of_two_processes_equal_one_process_with_double_accumulation():
    batches = epoch_micro_batches(list(range(1, 41)), 2, 64, seed=0, epoch=0)  # 20 micro-batches
    for step in range(5):
        one = step_shard(batches, step, accumulation=4, world_size=1, rank=0)
        two = [step_shard(batches, step, accumulation=2, world_size=2, rank=r) for r in (0, 1)]
        assert sorted(map(str, one)) == sorted(map(str, two[0] + two[1]))
        assert len(two[0]) == len(two[1]) == 2


def test_eval_batches_are_shared_between_processes():
    all_rows = [r for mb in eval_micro_batches(10, 3) for r in mb]
    split = [r for rank in (0, 1) for mb in eval_micro_batches(10, 3, 2, rank) for r in mb]
    assert sorted(all_rows) == sorted(split) == [(i,) for i in range(10)]


def test_ignore_index_constant():
    assert IGNORE_INDEX == -100
