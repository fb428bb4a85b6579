"""`cpu_bf16_matmul`: bf16 training on a CPU with its matmuls and attention run as fp32 kernels.

The numbers must be those of bf16 arithmetic (bf16 operands, bf16-rounded results), only the
kernels change; fp32 tensors and every other op must be untouched. No speed is asserted here
(benchmarks/train_throughput.py measures it).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from instillm.errors import ConfigError
from instillm.train.config import config_from_dict
from instillm.train.loop import Fp32Gemm, cpu_has_bf16_matmul, train, uses_fp32_gemm
from tests.train.helpers import base_config, make_examples, write_jsonl

BF16 = torch.bfloat16


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "reverse.jsonl", make_examples(64, "reverse"))


def test_config_accepts_the_three_settings_and_names_a_bad_one(tiny_model_dir, task_file, tmp_path):
    for value in ("auto", "fp32", "native"):
        cfg = config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, cpu_bf16_matmul=value))
        assert cfg.cpu_bf16_matmul == value
    assert config_from_dict(base_config(tiny_model_dir, task_file, tmp_path)).cpu_bf16_matmul == "auto"
    with pytest.raises(ConfigError, match="cpu_bf16_matmul: 'fast' is not one of"):
        config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, cpu_bf16_matmul="fast"))


def test_fp32_gemm_applies_only_to_bf16_on_cpu(tiny_model_dir, task_file, tmp_path):
    def cfg(**kw):
        return config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, **kw))

    cpu = torch.device("cpu")
    assert not uses_fp32_gemm(cfg(precision="fp32", cpu_bf16_matmul="fp32"), cpu)
    assert not uses_fp32_gemm(cfg(precision="bf16", cpu_bf16_matmul="native"), cpu)
    assert uses_fp32_gemm(cfg(precision="bf16", cpu_bf16_matmul="fp32"), cpu)
    assert not uses_fp32_gemm(cfg(precision="bf16", cpu_bf16_matmul="fp32"), torch.device("cuda"))
    assert uses_fp32_gemm(cfg(precision="bf16"), cpu) == (not cpu_has_bf16_matmul())


@pytest.mark.parametrize("op", ["mm", "addmm", "bmm", "baddbmm", "linear", "matmul3d"])
def test_matmuls_give_bf16_results_of_bf16_arithmetic(op):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 48, 64, generator=g).to(BF16)
    b = torch.randn(2, 64, 40, generator=g).to(BF16)
    bias = torch.randn(40, generator=g).to(BF16)
    calls = {
        "mm": lambda: a[0] @ b[0],
        "addmm": lambda: torch.addmm(bias, a[0], b[0]),
        "bmm": lambda: torch.bmm(a, b),
        "baddbmm": lambda: torch.baddbmm(bias.expand(2, 48, 40), a, b),
        "linear": lambda: F.linear(a[0], b[0].t(), bias),
        "matmul3d": lambda: a @ b[0],
    }
    native = calls[op]()
    with Fp32Gemm():
        got = calls[op]()
    ref = {  # the fp64 result of the same bf16 operands
        "mm": lambda: a[0].double() @ b[0].double(),
        "addmm": lambda: bias.double() + a[0].double() @ b[0].double(),
        "bmm": lambda: a.double() @ b.double(),
        "baddbmm": lambda: bias.double() + a.double() @ b.double(),
        "linear": lambda: a[0].double() @ b[0].double() + bias.double(),
        "matmul3d": lambda: a.double() @ b[0].double(),
    }[op]()
    assert got.dtype == BF16 and got.shape == native.shape
    # Both are the exact result rounded to bf16 (up to fp32 summation order): within bf16 rounding.
    assert _rel(got, ref) < 4e-3 and _rel(native, ref) < 4e-3
    assert _rel(got, native) < 6e-3


def test_fp32_tensors_and_other_ops_are_untouched():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, 16, generator=g), torch.randn(16, 8, generator=g)
    x = torch.randn(64, generator=g).to(BF16)
    with Fp32Gemm():
        mm, act = a @ b, F.silu(x)
    assert torch.equal(mm, a @ b) and mm.dtype == torch.float32
    assert torch.equal(act, F.silu(x)) and act.dtype == BF16


@pytest.mark.parametrize("masked", [False, True])
def test_attention_forward_and_backward_match_native_bf16(masked):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 24, 16, generator=g).to(BF16).requires_grad_() for _ in range(3))
    mask = None
    if masked:  # an additive causal mask, as packed batches build it
        mask = torch.zeros(2, 1, 24, 24).masked_fill(~torch.ones(24, 24, dtype=torch.bool).tril(), -1e9).to(BF16)

    def run():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        return out, grads

    native_out, native_grads = run()
    with Fp32Gemm():
        out, grads = run()
    assert out.dtype == BF16 and all(gr.dtype == BF16 for gr in grads)
    assert _rel(out, native_out) < 1e-2
    assert all(_rel(a, b) < 3e-2 for a, b in zip(grads, native_grads))


def test_model_loss_and_gradients_match_native_bf16(tiny_model_dir, rendered, tiny_tokenizer):
    """A padded and a packed micro-batch through the tiny model: loss and grads as native bf16 gives them."""
    from instillm.models.loading import load_model
    from instillm.train.batching import collate
    from instillm.train.loss import token_loss_sum

    model = load_model(tiny_model_dir, dtype=torch.float32)
    model.train()
    for packing, rows in ((False, [(i,) for i in range(8)]), (True, [(0, 1, 2), (3, 4)])):
        batch = collate(rendered, rows, tiny_tokenizer.pad_token_id, packing)
        results = []
        for mode in ("bf16", "emulated", "fp32"):
            model.zero_grad(set_to_none=True)
            with Fp32Gemm() if mode == "emulated" else contextlib.nullcontext():
                with torch.autocast("cpu", dtype=BF16, enabled=mode != "fp32"):
                    loss_sum, n = token_loss_sum(model, **batch.model_inputs())
                (loss_sum / n).backward()
            results.append((float(loss_sum.detach() / n), torch.cat([p.grad.flatten() for p in model.parameters()])))
        (l_native, g_native), (l_emul, g_emul), (l_fp32, g_fp32) = results
        assert math.isclose(l_emul, l_native, rel_tol=2e-3)
        # Emulated bf16 is at least as close to native bf16 as bf16 is to fp32 (the bf16 noise floor).
        assert _rel(g_emul, g_native) < max(0.02, _rel(g_native, g_fp32))
        assert torch.isfinite(g_emul).all()


def test_bf16_training_with_fp32_gemm_runs_and_matches_native(tiny_model_dir, task_file, tmp_path):
    results = {}
    for mode in ("fp32", "native"):
        cfg = base_config(
            tiny_model_dir,
            task_file,
            tmp_path / mode,
            precision="bf16",
            cpu_bf16_matmul=mode,
            max_steps=3,
            packing=True,
            max_length=128,
            eval_split=0.1,
        )
        results[mode] = train(config_from_dict(cfg), progress=False)
    emul, native = results["fp32"], results["native"]
    assert emul.steps == 3 and math.isfinite(emul.final_loss) and math.isfinite(emul.eval_loss)
    assert emul.final_loss == pytest.approx(native.final_loss, rel=0.02)
    assert emul.eval_loss == pytest.approx(native.eval_loss, rel=0.02)


def test_adamw_is_fused_on_cpu_and_steps_like_the_loop(tiny_model_dir, task_file, tmp_path):
    from instillm.train.loop import build_model, build_optimizer

    cfg = config_from_dict(base_config(tiny_model_dir, task_file, tmp_path))
    models = [build_model(cfg), build_model(cfg)]
    fused = build_optimizer(models[0], cfg)
    assert all(group["fused"] for group in fused.param_groups)
    loop = torch.optim.AdamW(models[1].parameters(), lr=cfg.learning_rate, weight_decay=0.0, foreach=False)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
        for model, opt in zip(models, (fused, loop)):
            for p, gr in zip(model.parameters(), grads):
                p.grad = gr.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_compiled_decoder_trains_like_eager(tiny_model_dir, task_file, tmp_path):
    """`compile: true`: torch.compile of the decoder changes kernels, not the numbers."""
    results = {}
    for compiled in (False, True):
        cfg = base_config(
            tiny_model_dir,
            task_file,
            tmp_path / str(compiled),
            max_steps=3,
            packing=True,
            max_length=128,
            eval_split=0.1,
        )
        results[compiled] = train(config_from_dict({**cfg, "compile": compiled}), progress=False)
    eager, comp = results[False], results[True]
    assert comp.steps == 3
    assert comp.final_loss == pytest.approx(eager.final_loss, rel=1e-4)
    assert comp.eval_loss == pytest.approx(eager.eval_loss, rel=1e-4)


def test_compile_refuses_the_fp32_gemm_emulation(tiny_model_dir, task_file, tmp_path):
    from instillm.train.loop import build_model, compile_decoder

    cfg = config_from_dict(base_config(tiny_model_dir, task_file, tmp_path, precision="bf16", cpu_bf16_matmul="fp32"))
    with pytest.raises(ConfigError, match="compile: not supported while bf16 matmuls run as fp32 GEMMs"):
        compile_decoder(build_model(cfg), cfg)
