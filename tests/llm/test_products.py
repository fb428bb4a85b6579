"""Transposed decode products: the same values as torch's linear, swapped in only while active."""

from __future__ import annotations

import pytest
import torch

from instillm.llm import products
from instillm.llm.generation import GenerateOptions, Generator
from instillm.llm.products import TransposedProducts, transposed_linear
from tests.llm.chaotic import make_chaotic


class _Subclassed(torch.nn.Linear):
    """A Linear subclass (like peft's layers): not a plain Linear, never swapped."""


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False), _Subclassed(8, 8)
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (2, 5, 16), (4, 1, 16), (13, 16), (3, 9, 16)])
def test_transposed_linear_equals_linear(bias, shape):
    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 24, bias=bias)
    x = torch.randn(*shape)
    got = transposed_linear(layer, x)
    assert got.shape == (*shape[:-1], 24)
    assert got.is_contiguous()
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rows", "computed"), [(1, 2), (2, 2), (3, 4), (5, 5), (8, 8), (9, 16), (31, 32), (32, 32)])
def test_rows_are_padded_to_whole_blocks(rows, computed):
    assert products.padded_rows(rows) == computed


def test_padding_rows_reach_the_product_and_are_dropped(monkeypatch):
    shapes = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: shapes.append(tuple(b.shape)) or mm(a, b))
    layer = torch.nn.Linear(16, 24, bias=False)
    x = torch.randn(11, 16)
    got = transposed_linear(layer, x)
    assert shapes == [(16, 16)]  # 11 rows computed as 16
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-6)
    shapes.clear()
    torch.testing.assert_close(transposed_linear(layer, x, padded=False), got, rtol=1e-5, atol=1e-6)
    assert shapes == [(16, 11)]


def test_active_swaps_plain_linears_only_and_restores():
    net = _net()
    tp = TransposedProducts(net)
    assert tp.layers == [net[0], net[2]]  # the subclass is left out
    seen = []
    for m in (net[0], net[2], net[3]):
        m.register_forward_hook(lambda mod, i, o: seen.append("forward" in mod.__dict__))
    x = torch.randn(4, 16)
    want = net(x)
    seen.clear()
    with tp.active(rows=4):
        got = net(x)
    assert seen == [True, True, False]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_active_leaves_large_batches_to_torch_and_takes_one_row():
    net = _net()
    with TransposedProducts(net).active(products.MAX_ROWS + 1):
        assert all("forward" not in m.__dict__ for m in net.modules())
    shapes = []
    mm = torch.mm
    with TransposedProducts(net).active(1), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "mm", lambda a, b: shapes.append(tuple(b.shape)) or mm(a, b))
        x = torch.randn(1, 16)
        assert net(x).shape == (1, net[-1].out_features)
    assert shapes and all(s[1] == 2 for s in shapes)  # one row computed as two (`padded_rows`)


def test_a_layer_with_its_own_forward_keeps_it():
    net = _net()
    own = net[0].forward  # a bound method stored on the instance, as accelerate's hooks do
    net[0].forward = own
    with TransposedProducts(net).active(rows=4):
        assert net[0].__dict__["forward"] is own
    assert net[0].__dict__["forward"] is own
    assert "forward" not in net[2].__dict__


def test_forwards_are_restored_after_an_error():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"), TransposedProducts(net).active(rows=4):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_wanted_needs_float32_on_an_amd_cpu(monkeypatch):
    net = _net()
    monkeypatch.setattr(products, "cpu_vendor", lambda: "AuthenticAMD")
    assert products.wanted(net)
    assert not products.wanted(net.to(torch.bfloat16))
    monkeypatch.setattr(products, "cpu_vendor", lambda: "GenuineIntel")
    assert not products.wanted(net.float())
    assert products.products_for(net, None) is None
    assert products.products_for(net, True) is not None
    assert products.products_for(_net(), False) is None


def test_cpu_vendor_is_a_string():
    assert isinstance(products.cpu_vendor(), str)


def test_generator_gives_the_same_tokens_with_transposed_products(tiny_model_dir):
    from instillm.models.loading import load_model, load_tokenizer

    model = make_chaotic(load_model(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")).eval()
    tok = load_tokenizer(tiny_model_dir)
    prompts = [f"Task {i}: name some fruits." + " More detail." * i for i in range(6)]
    opts = GenerateOptions(max_new_tokens=16, batch_size=6)
    plain = Generator(model, tok, transposed_products=False)
    swapped = Generator(model, tok, transposed_products=True, feature_major=False)  # products in the model
    assert not plain.transposed_products and swapped.transposed_products
    calls = []
    hook = model.lm_head.register_forward_hook(lambda mod, i, o: calls.append("forward" in mod.__dict__))
    try:
        want = [o.token_ids for o in plain.generate_texts(prompts, opts)]
        assert not any(calls)
        calls.clear()
        got = [o.token_ids for o in swapped.generate_texts(prompts, opts)]
    finally:
        hook.remove()
    assert any(calls)  # decode steps of several rows used the transposed product
    assert got == want
    assert len({tuple(t) for t in want}) > 1
