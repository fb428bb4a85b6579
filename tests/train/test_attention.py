"""Per-example attention for packed rows (`packed_attention: segments`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instillm.errors import ConfigError
from instillm.train import attention
from instillm.train.attention import SEGMENTS, segment_lengths, segments_attention_forward
from instillm.train.batching import pack_collate, pad_collate
from instillm.train.config import config_from_dict
from instillm.train.loss import token_loss_sum
from tests.train.helpers import base_config, make_examples, varlen_stand_in, write_jsonl


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "reverse.jsonl", make_examples(64, "reverse"))


def test_segment_lengths_cut_rows_at_examples_padding_and_row_ends():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 0, 0]])
    # rows 2 and 3 both hold segment 1 where they meet: still two pieces
    assert segment_lengths(seg).tolist() == [2, 3, 1, 6, 3, 1, 2]


def _reference(q, k, v, sizes):
    """Causal SDPA on each piece alone, in float64: (B, H, L, D) -> (B, L, H, D)."""
    b, h, n, d = q.shape
    flat = [x.transpose(1, 2).reshape(b * n, x.shape[1], d) for x in (q, k, v)]
    outs = [
        F.scaled_dot_product_attention(
            a.transpose(0, 1), c.transpose(0, 1), e.transpose(0, 1), is_causal=True, enable_gqa=True
        ).transpose(0, 1)
        for a, c, e in zip(*(x.split(sizes) for x in flat))
    ]
    return torch.cat(outs).view(b, n, h, d)


def _packed_inputs():
    """Two packed rows of 10 (pieces 3, 2, 4, padding 1; 6, 4) and float64 q, k, v with grouped heads
    (4 query, 2 key/value, dim 8), and an output gradient."""
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 2, 2, 2, 2]])
    g = torch.Generator().manual_seed(0)
    qkv = tuple(torch.randn(2, h, 10, 8, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    return seg, segment_lengths(seg).tolist(), qkv, torch.randn(2, 10, 4, 8, generator=g, dtype=torch.float64)


def _assert_same_outputs_and_grads(got_fn, want_fn, inputs, grad):
    """`got_fn` and `want_fn` on fp32 copies of `inputs`: equal outputs and input gradients (1e-5)."""
    results = []
    for fn in (got_fn, want_fn):
        leaves = [x.detach().float().requires_grad_() for x in inputs]
        out = fn(*leaves)
        out.backward(grad.float())
        results.append([out.detach()] + [x.grad for x in leaves])
    for got, want in zip(*results):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


@pytest.mark.parametrize("math_max_length", [attention.MATH_MAX_LENGTH, 4])  # 4: long pieces take SDPA
def test_backend_equals_per_example_sdpa_in_outputs_and_gradients(monkeypatch, math_max_length):
    monkeypatch.setattr(attention, "MATH_MAX_LENGTH", math_max_length)
    seg, sizes, (q, k, v), grad = _packed_inputs()
    _assert_same_outputs_and_grads(
        lambda a, b, c: segments_attention_forward(
            None, a, b, c, None, scaling=8**-0.5, segment_lengths=segment_lengths(seg)
        )[0],
        lambda a, b, c: _reference(a, b, c, sizes),
        (q, k, v),
        grad,
    )
    # and an example really is cut off from the one before it: changing piece 1 leaves piece 2 alone
    q2 = q.clone()
    q2[0, :, :3] += 1.0
    k2 = k.clone()
    k2[0, :, :3] += 1.0
    a = segments_attention_forward(None, q, k, v, None, segment_lengths=segment_lengths(seg))[0]
    b = segments_attention_forward(None, q2, k2, v, None, segment_lengths=segment_lengths(seg))[0]
    assert not torch.allclose(a[0, :3], b[0, :3])
    assert torch.equal(a[0, 3:], b[0, 3:])


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_with_segments_equals_unpacked_and_the_mask(tiny_model, rendered):
    """Loss and every gradient (1e-5, fp32): padded rows vs packed rows, segments vs the 4D mask."""
    padded = pad_collate(rendered, pad_id=0)
    packed = pack_collate([rendered[i : i + 4] for i in range(0, 16, 4)], pad_id=0)
    results = {}
    attention.register()
    for name, backend, batch in (
        ("unpacked", "sdpa", padded),
        ("mask", "sdpa", packed),
        ("segments", SEGMENTS, packed),
    ):
        tiny_model.set_attn_implementation(backend)
        tiny_model.zero_grad()
        loss_sum, n = token_loss_sum(tiny_model, **batch.model_inputs())
        (loss_sum / n).backward()
        results[name] = (float(loss_sum.detach() / n), _grads(tiny_model))
    ref_loss, ref_grads = results["unpacked"]
    for name in ("mask", "segments"):
        loss, grads = results[name]
        assert abs(loss - ref_loss) < 1e-5, name
        assert grads.keys() == ref_grads.keys() and grads
        for p in grads:
            assert torch.allclose(grads[p], ref_grads[p], atol=1e-5, rtol=0), (name, p)


def test_without_segment_lengths_the_backend_is_sdpa(tiny_model, rendered):
    batch = pad_collate(rendered[:6], pad_id=0)
    with torch.no_grad():
        want = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        attention.register()
        tiny_model.set_attn_implementation(SEGMENTS)
        got = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(got, want)


def test_bf16_autocast_runs_in_bf16_and_matches_the_mask(tiny_model, rendered):
    packed = pack_collate([rendered[i : i + 4] for i in range(0, 16, 4)], pad_id=0)
    attention.register()
    losses = {}
    for backend in ("sdpa", SEGMENTS):
        tiny_model.set_attn_implementation(backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_sum, n = token_loss_sum(tiny_model, **packed.model_inputs())
        losses[backend] = float(loss_sum.detach() / n)
    assert losses[SEGMENTS] == pytest.approx(losses["sdpa"], rel=1e-2)


def test_training_picks_the_backend_from_packed_attention(tiny_model_dir, task_file, tmp_path):
    from instillm.train.loop import build_model, packed_attention

    def backend(**over):
        cfg = config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, **over))
        return build_model(cfg).config._attn_implementation

    assert backend(packing=True) == SEGMENTS
    assert backend(packing=True, packed_attention="mask") == "sdpa"
    assert backend(packing=True, attn_implementation="eager") == "eager"  # auto keeps eager's math
    assert backend(packing=True, attn_implementation="eager", packed_attention="segments") == SEGMENTS
    assert backend(packing=False) == "sdpa"
    cfg = config_from_dict(base_config(tiny_model_dir, task_file, tmp_path))
    assert packed_attention(cfg, "flash_attention_2") == "varlen"
    with pytest.raises(ConfigError, match="packed_attention: 'segments' does not apply to flash_attention_2"):
        config_from_dict(
            base_config(
                tiny_model_dir,
                task_file,
                tmp_path,
                attn_implementation="flash_attention_2",
                packed_attention="segments",
            )
        )
    with pytest.raises(ConfigError, match="packed_attention: 'blocks' is not one of"):
        config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, packed_attention="blocks"))


def test_packed_runs_with_segments_and_mask_train_alike(tiny_model_dir, task_file, tmp_path):
    """Three optimizer steps: the same losses either way; the run records the backend and saves sdpa."""
    import json

    from instillm.train.loop import train

    results = {}
    for mode in ("segments", "mask"):
        cfg = base_config(
            tiny_model_dir,
            task_file,
            tmp_path / mode,
            max_steps=3,
            packing=True,
            max_length=128,
            eval_split=0.1,
            packed_attention=mode,
        )
        results[mode] = train(config_from_dict(cfg), progress=False)
    assert results["segments"].final_loss == pytest.approx(results["mask"].final_loss, rel=1e-5)
    assert results["segments"].eval_loss == pytest.approx(results["mask"].eval_loss, rel=1e-5)
    manifest = json.loads((tmp_path / "segments" / "run.json").read_text())
    assert manifest["attn_implementation"] == SEGMENTS
    assert manifest["config"]["packed_attention"] == "segments"
    saved = json.loads((results["segments"].final_dir / "config.json").read_text())
    assert SEGMENTS not in json.dumps(saved)


def test_lora_with_packed_segments_trains_and_saves_the_adapter(tiny_model_dir, task_file, tmp_path):
    from instillm.train.loop import train

    cfg = base_config(
        tiny_model_dir,
        task_file,
        tmp_path,
        max_steps=2,
        packing=True,
        max_length=128,
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    )
    result = train(config_from_dict(cfg), progress=False)
    assert result.steps == 2 and result.final_loss is not None
    assert (result.final_dir / "adapter_config.json").is_file()
    assert __import__("json").loads((tmp_path / "run.json").read_text())["attn_implementation"] == SEGMENTS


# --------------------------------------------------------------------------------------------
# packed_attention: varlen. torch's flash varlen kernel runs on CUDA only; here a stand-in with each of
# the function's signatures (per-piece SDPA in float64) checks our side: the piece starts, the longest
# piece, causality, grouped heads and the scale, against per-example attention.


@pytest.mark.parametrize("new_signature", [True, False])
@pytest.mark.parametrize("scale", [8**-0.5, 0.2])
def test_varlen_backend_equals_per_example_attention(monkeypatch, new_signature, scale):
    import torch.nn.attention.varlen as varlen

    calls: list = []
    monkeypatch.setattr(varlen, "varlen_attn", varlen_stand_in(new_signature, calls))
    seg, sizes, (q, k, v), grad = _packed_inputs()
    _assert_same_outputs_and_grads(
        lambda a, b, c: attention.varlen_attention_forward(
            None, a, b, c, None, scaling=scale, segment_lengths=segment_lengths(seg)
        )[0],
        lambda a, b, c: _reference(a * scale * 8**0.5, b, c, sizes),
        (q, k, v),
        grad,
    )
    assert len(calls) == 1  # every piece of both rows in one call
    if new_signature:
        assert calls[0] == {"window_size": (-1, 0), "enable_gqa": True, "scale": scale}
    else:  # causal by name, the key heads repeated, the scale folded into the queries
        assert calls[0] == {"is_causal": True, "heads": (4, 4)}


def test_varlen_trains_the_tiny_model_like_the_mask(monkeypatch, tiny_model, rendered):
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", varlen_stand_in(True, []))
    packed = pack_collate([rendered[i : i + 4] for i in range(0, 16, 4)], pad_id=0)
    attention.register()
    results = {}
    for backend in ("sdpa", attention.VARLEN):
        tiny_model.set_attn_implementation(backend)
        tiny_model.zero_grad()
        loss_sum, n = token_loss_sum(tiny_model, **packed.model_inputs())
        (loss_sum / n).backward()
        results[backend] = (float(loss_sum.detach() / n), _grads(tiny_model))
    (mask_loss, mask_grads), (loss, grads) = results["sdpa"], results[attention.VARLEN]
    assert abs(loss - mask_loss) < 1e-5
    assert grads.keys() == mask_grads.keys() and grads
    for p in grads:
        assert torch.allclose(grads[p], mask_grads[p], atol=1e-5, rtol=0), p


def test_varlen_is_chosen_by_name_and_refused_where_it_cannot_run(tiny_model_dir, task_file, tmp_path):
    from instillm.train.loop import build_model, setup

    cfg = config_from_dict(
        base_config(tiny_model_dir, task_file, tmp_path, packing=True, packed_attention="varlen", precision="bf16")
    )
    assert build_model(cfg).config._attn_implementation == attention.VARLEN
    with pytest.raises(ConfigError, match="packed_attention: 'varlen' .* needs a CUDA device .*this run is on cpu"):
        setup(cfg, "cpu")
    assert not (tmp_path / "final").exists()
    with pytest.raises(ConfigError, match="packed_attention: 'varlen' runs a flash kernel, which takes bf16"):
        config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, packing=True, packed_attention="varlen"))
