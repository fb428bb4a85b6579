"""Response-only loss: equals full-vocab cross-entropy, packing and accumulation do not change it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instillm.data.render import IGNORE_INDEX
from instillm.train.batching import pack_collate, pad_collate
from instillm.train.config import TrainConfig
from instillm.train.loss import TokenLoss, split_causal_lm, step_scale, token_loss_sum


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, atol):
    assert a.keys() == b.keys() and a
    for n in a:
        assert torch.allclose(a[n], b[n], atol=atol, rtol=0), (n, (a[n] - b[n]).abs().max())


def test_equals_full_vocab_cross_entropy_and_chunking_is_exact(tiny_model, rendered):
    mb = pad_collate(rendered[:8], pad_id=0)
    logits = tiny_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    count = (mb.labels[:, 1:] != IGNORE_INDEX).sum()
    ref = (
        F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            mb.labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        / count
    )
    loss_sum, n = token_loss_sum(tiny_model, **mb.model_inputs())
    assert int(n) == int(count) == mb.n_trained > 0
    assert abs(float(loss_sum.detach() / n) - float(ref.detach())) < 1e-5

    (loss_sum / n).backward()
    whole = _grads(tiny_model)
    tiny_model.zero_grad()
    chunked_sum, _ = token_loss_sum(tiny_model, chunk_size=5, **mb.model_inputs())  # checkpointed chunks
    (chunked_sum / n).backward()
    assert abs(float(chunked_sum.detach()) - float(loss_sum.detach())) < 1e-4
    _assert_same(_grads(tiny_model), whole, atol=1e-6)


def test_packed_equals_unpacked(tiny_model, rendered):
    """Same loss and gradients (1e-5, fp32) whether 16 examples are padded or packed 4 rows deep."""
    padded = pad_collate(rendered, pad_id=0)
    loss_sum, n = token_loss_sum(tiny_model, **padded.model_inputs())
    (loss_sum / n).backward()
    ref_loss, ref_grads = float(loss_sum.detach() / n), _grads(tiny_model)
    tiny_model.zero_grad()

    packed = pack_collate([rendered[i : i + 4] for i in range(0, 16, 4)], pad_id=0)
    assert packed.input_ids.shape[0] == 4
    p_sum, p_n = token_loss_sum(tiny_model, **packed.model_inputs())
    (p_sum / p_n).backward()
    assert int(p_n) == int(n)
    assert abs(float(p_sum.detach() / p_n) - ref_loss) < 1e-5
    _assert_same(_grads(tiny_model), ref_grads, atol=1e-5)


def test_gradient_accumulation_4x2_equals_1x8(tiny_model, tiny_model_dir, rendered):
    """accumulate() over 4 micro-batches of 2 gives the loss and gradients of 1 micro-batch of 8."""
    from accelerate import Accelerator

    from instillm.train.loop import accumulate

    acc = Accelerator(mixed_precision="no")
    config = TrainConfig(model=str(tiny_model_dir), datasets=["x.jsonl"], output_dir="unused")
    module = TokenLoss(tiny_model)
    # Different lengths per micro-batch, so a per-micro-batch mean would weight tokens differently.
    items = sorted(rendered[:8], key=len)
    loss8, n8, _ = accumulate(module, [pad_collate(items, 0)], acc, config)
    grads8 = _grads(tiny_model)
    tiny_model.zero_grad(set_to_none=True)
    loss2, n2, _ = accumulate(module, [pad_collate(items[i : i + 2], 0) for i in range(0, 8, 2)], acc, config)
    assert n2 == n8
    assert abs(loss2 - loss8) < 1e-6
    _assert_same(_grads(tiny_model), grads8, atol=1e-6)


def test_micro_batch_without_trained_tokens_gives_zero_and_still_reaches_every_weight(tiny_model, rendered):
    mb = pad_collate(rendered[:2], pad_id=0)
    inputs = mb.model_inputs() | {"labels": torch.full_like(mb.labels, IGNORE_INDEX)}
    loss_sum, n = token_loss_sum(tiny_model, **inputs)
    assert float(loss_sum.detach()) == 0.0 and int(n) == 0
    loss_sum.backward()
    assert all(p.grad is not None for p in tiny_model.parameters())


def test_step_scale():
    assert step_scale(100, 1) == 0.01
    assert step_scale(100, 4) == 0.04
    assert step_scale(0, 2) == 2.0  # no token anywhere: loss is 0 anyway


def test_split_finds_decoder_and_head_through_peft(tiny_model):
    from peft import LoraConfig, get_peft_model

    decoder, head = split_causal_lm(tiny_model)
    assert decoder is tiny_model.model and head is tiny_model.lm_head
    peft_model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    decoder2, head2 = split_causal_lm(TokenLoss(peft_model))
    assert decoder2 is decoder and head2 is head


def test_eager_attention_gives_sdpas_loss_and_gradients_on_padded_batches(tiny_model_dir, rendered):
    """Eager (math) attention, an `attn_implementation` choice, gives sdpa's loss and gradients (fp32)."""
    from transformers import AutoModelForCausalLM

    mb = pad_collate(rendered[:8], pad_id=0)
    assert int(mb.attention_mask.min()) == 0  # rows of different lengths: padding is masked
    results = {}
    for impl in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl)
        loss_sum, n = token_loss_sum(model, **mb.model_inputs())
        (loss_sum / n).backward()
        results[impl] = (float(loss_sum.detach() / n), _grads(model))
    assert abs(results["eager"][0] - results["sdpa"][0]) < 1e-5
    _assert_same(results["eager"][1], results["sdpa"][1], atol=1e-5)
