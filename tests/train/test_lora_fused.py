"""`fuse_lora_forward`: peft's LoRA linear layers with the scaling on the rank-r intermediate and the
sum inside one matrix product compute what peft's own forward computes, gradients included."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from instillm.models.loading import load_model
from instillm.train.config import config_from_dict
from instillm.train.loop import build_model
from instillm.train.lora import fuse_lora_forward
from tests.train.helpers import base_config, make_examples, write_jsonl


def _lora_model(model_dir, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    model = load_model(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters count
            torch.nn.init.normal_(p, std=0.05)
    return model


def _loss_and_grads(model, ids: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 200, (1, 24), generator=torch.Generator().manual_seed(1))


def test_fused_forward_matches_peft_in_fp32(tiny_model_dir, ids):
    peft_model, fused = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    n = fuse_lora_forward(fused)
    assert n == sum(isinstance(m, LoraLinear) for m in fused.modules()) > 0
    loss_peft, grads_peft = _loss_and_grads(peft_model, ids, autocast=False)
    loss_fused, grads_fused = _loss_and_grads(fused, ids, autocast=False)
    assert torch.allclose(loss_fused, loss_peft, rtol=1e-6, atol=0)
    assert grads_fused.keys() == grads_peft.keys() and all("lora_" in k for k in grads_fused)
    for name, g in grads_peft.items():
        assert _rel(grads_fused[name], g) < 1e-5, name


def test_fused_forward_under_bf16_autocast_is_as_close_to_fp32_as_peft(tiny_model_dir, ids):
    reference, _ = _loss_and_grads(_lora_model(tiny_model_dir), ids, autocast=False)
    peft_loss, peft_grads = _loss_and_grads(_lora_model(tiny_model_dir), ids, autocast=True)
    fused = _lora_model(tiny_model_dir)
    fuse_lora_forward(fused)
    fused_loss, fused_grads = _loss_and_grads(fused, ids, autocast=True)
    assert abs(fused_loss - reference) <= max(2 * abs(peft_loss - reference), 1e-3 * reference)
    for name, g in peft_grads.items():
        assert _rel(fused_grads[name], g) < 0.05, name  # both bf16: a few bf16 roundings apart


def test_layers_in_other_states_keep_peft_forward(tiny_model_dir, ids):
    with_dropout = _lora_model(tiny_model_dir, dropout=0.5)
    fuse_lora_forward(with_dropout)
    with_dropout.eval()  # dropout off, but the layer is not plain LoRA: peft's forward all the same
    plain = _lora_model(tiny_model_dir, dropout=0.5).eval()
    with torch.no_grad():
        assert torch.equal(with_dropout(input_ids=ids).logits, plain(input_ids=ids).logits)
        fused = _lora_model(tiny_model_dir)
        fuse_lora_forward(fused)
        with fused.disable_adapter():
            off = fused(input_ids=ids).logits
        base = load_model(tiny_model_dir, dtype=torch.float32)(input_ids=ids).logits
    assert torch.equal(off, base)


def test_training_builds_lora_models_with_the_fused_forward(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", make_examples(8))
    cfg = base_config(tiny_model_dir, data, tmp_path / "out", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_model(config_from_dict(cfg))
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all("forward" in vars(m) for m in layers)
