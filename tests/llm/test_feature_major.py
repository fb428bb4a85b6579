"""The feature-major decode step: the model's logits and cache writes, the same greedy tokens as
`transformers`' `generate`, for Llama, Qwen2 (biased q/k/v) and Mistral; unsupported models named."""

from __future__ import annotations

import pytest
import torch

from instillm.errors import ModelError
from instillm.llm import feature_major as fm
from instillm.llm.generation import GenerateOptions, Generator, Row, _make_cache
from tests.llm.chaotic import greedy_one_by_one, make_chaotic

N_NEW = 10
ARCHS = ("llama", "qwen2", "mistral")


# what the tiny preset's LlamaConfig gives every architecture here (its tokenizer is the tests')
_SHARED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _config(arch: str, **overrides):
    """A config of `arch` shaped like the tiny preset (`factory.build_config`: same vocabulary and special tokens)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from instillm.models.factory import build_config, get_preset

    tiny = build_config(get_preset("tiny"))
    shape = {name: getattr(tiny, name) for name in _SHARED}
    extra = {"mistral": {"sliding_window": None}, "llama": {}, "qwen2": {}}[arch]
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    config = cls(**{**shape, **extra, **overrides})
    config._attn_implementation = "sdpa"
    return config


def _model(arch: str, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, **overrides))
    return make_chaotic(model.float()).eval()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from instillm.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module", params=[*ARCHS, "llama-wide-heads"])
def arch_model(request):
    if request.param == "llama-wide-heads":  # heads x head_dim (4 x 48) is not the hidden size (128)
        return _model("llama", head_dim=48)
    return _model(request.param)


@pytest.fixture(scope="module")
def prompts(tok):
    from instillm.data.render import Renderer

    out = []
    for i in range(11):
        msgs = [{"role": "system", "content": "You are terse."}] if i % 3 == 0 else []
        msgs.append({"role": "user", "content": f"Item {i}: name a colour." + " And a shade of it." * i})
        out.append(Renderer(tok).prompt_text(msgs))
    return out


def _full(o) -> list[int]:
    return o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else [])


# ---------------------------------------------------------------------------- one step


def _prefilled(gen: Generator, ids: list[list[int]]):
    """A cache holding `ids` prefilled right-aligned, as `Generator` leaves it before decoding;
    the next tokens, positions and decode mask of the first step."""
    rows = [Row(i, x, 4) for i, x in enumerate(ids)]
    width = max(len(x) for x in ids)
    cache = _make_cache(gen.n_layers, len(rows), width + 4)
    logits = gen._prefill(rows, cache, width, 512)
    lens = torch.tensor([len(x) for x in ids])
    valid = torch.arange(width + 4)[None, :] >= (width - lens)[:, None]
    cache.write, cache.read = (width, width + 1), (0, width + 1)
    return cache, logits.argmax(-1), lens[:, None], valid[:, None, None, : width + 1]


@pytest.mark.parametrize("n_rows", [1, 3, 8, 11])
@pytest.mark.parametrize("grouped", [False, True])
@torch.inference_mode()
def test_a_step_gives_the_models_logits_and_cache(arch_model, tok, prompts, n_rows, grouped):
    gen = Generator(arch_model, tok, feature_major=True)
    ids = sorted((tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:n_rows]), key=len)
    width = len(ids[-1])
    groups = None
    if grouped and n_rows > 1:  # two groups, the first reading only the slots of its own prompts
        half = n_rows // 2
        groups = [(0, half, width - len(ids[half - 1])), (half, n_rows, width - len(ids[-1]))]
    mine, tok_a, pos, mask = _prefilled(gen, ids)
    theirs, tok_b, _, _ = _prefilled(gen, ids)
    assert torch.equal(tok_a, tok_b)
    got = gen._step(tok_a, pos, mask, mine, groups)
    want = gen.forward_last(tok_a[:, None], pos, mask, theirs, groups)
    assert got.shape == want.shape == (n_rows, arch_model.config.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(mine.slot_layers, theirs.slot_layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)


@torch.inference_mode()  # as `Generator` runs them
def test_helpers_equal_transformers_operations():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    torch.manual_seed(0)
    for cols in (1, 5, 8, 9, 24):
        for bias in (True, False):
            for out in (12, 2 * fm.ROW_BLOCK + 3):  # whole, and in blocks of rows with a partial last one
                layer = torch.nn.Linear(16, out, bias=bias)
                x = torch.randn(16, cols)
                torch.testing.assert_close(fm.product(layer, x), layer(x.t()).t(), rtol=1e-5, atol=1e-6)
    norm = LlamaRMSNorm(16, eps=1e-5)
    norm.weight.data = torch.randn(16)
    h = torch.randn(16, 7)
    torch.testing.assert_close(fm.rms_norm(norm, h), norm(h.t()).t(), rtol=1e-5, atol=1e-6)
    heads, dim, cols = 3, 8, 5
    q = torch.randn(heads * dim, cols)
    cos, sin = torch.randn(cols, 1, dim), torch.randn(cols, 1, dim)  # transformers': [rows, 1, dim]
    want, _ = apply_rotary_pos_emb(fm.by_row(q.view(heads, dim, cols), cols), q.new_zeros(cols, 1, 1, dim), cos, sin)
    got = fm.rotate(q, heads, cos[:, 0].t()[None], fm.signed_sin(sin[:, 0].t()[None]))
    torch.testing.assert_close(fm.by_row(got, cols), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- whole generations


@pytest.mark.parametrize("batch_size", [11, 4])
def test_greedy_equals_one_prompt_at_a_time(arch_model, tok, prompts, batch_size):
    naive = greedy_one_by_one(arch_model, tok, prompts, N_NEW)
    gen = Generator(arch_model, tok, feature_major=True)
    steps = []
    step = gen._step

    def counting(ids, *args):
        steps.append(ids.shape[0])
        return step(ids, *args)

    gen._step = counting
    opts = GenerateOptions(max_new_tokens=N_NEW, batch_size=batch_size)
    outs = gen.generate_texts(prompts, opts)
    assert [_full(o) for o in outs] == naive
    assert len(steps) >= N_NEW - 1 and max(steps) == min(batch_size, len(prompts))
    assert outs == Generator(arch_model, tok, feature_major=False).generate_texts(prompts, opts)


def test_sampling_gives_the_same_tokens_either_way(tok, prompts):
    model = _model("llama")
    opts = GenerateOptions(max_new_tokens=N_NEW, batch_size=6, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    a = Generator(model, tok, feature_major=True).generate_texts(prompts, opts)
    b = Generator(model, tok, feature_major=False).generate_texts(prompts, opts)
    assert a == b


# ---------------------------------------------------------------------------- when it is used


def test_on_by_default_where_products_are_transposed(tok):
    model = _model("llama")
    assert Generator(model, tok, transposed_products=True).feature_major
    assert not Generator(model, tok, transposed_products=False).feature_major
    assert Generator(model, tok, transposed_products=False, feature_major=True).feature_major
    gelu = _model("llama", hidden_act="gelu")
    assert not Generator(gelu, tok, transposed_products=True).feature_major
    with pytest.raises(ModelError, match="hidden_act 'gelu'"):
        Generator(gelu, tok, feature_major=True)


def test_unsupported_models_are_named():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    assert fm.unsupported(_model("llama")) is None
    assert fm.unsupported(_model("qwen2")) is None
    assert "sliding window" in (fm.unsupported(_model("mistral", sliding_window=64)) or "")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "model type 'gpt2'" in (fm.unsupported(gpt2) or "")
    lora = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "plain torch.nn.Linear" in (fm.unsupported(lora) or "")
    from accelerate.hooks import ModelHook, add_hook_to_module

    hooked = _model("llama")
    add_hook_to_module(hooked.model.layers[1].mlp.up_proj, ModelHook())
    assert "accelerate hooks" in (fm.unsupported(hooked) or "")
