"""The tiny-model factory: tokenizer training, Llama shapes, determinism, what is saved to disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from instillm.data.templates import CHATML
from instillm.errors import ConfigError
from instillm.models import PRESETS, count_parameters, init_model
from instillm.models.corpus import builtin_corpus
from instillm.models.factory import (
    SPECIAL_TOKENS,
    build_config,
    build_model,
    count_preset_parameters,
    train_tokenizer,
)

IDS = torch.tensor([[1, 3, 100, 200, 300, 400, 4, 5, 6, 7, 2]])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(files[0])


def expected_params(vocab, hidden, layers, heads, kv_heads, inter) -> int:
    """Llama parameter count with tied embeddings, written out by hand."""
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * inter
    norms = 2 * hidden
    return vocab * hidden + layers * (attn + mlp + norms) + hidden


# ---------------------------------------------------------------------------- presets / sizes


def test_tiny_parameter_count(tiny_model_dir: Path) -> None:
    meta = json.loads((tiny_model_dir / "instillm_model.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0
    assert meta["vocab_size"] == PRESETS["tiny"].vocab_size
    assert 1_000_000 <= meta["n_params"] <= 3_000_000
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_parameters(model) == meta["n_params"] == count_preset_parameters("tiny")
    p = PRESETS["tiny"]
    assert meta["n_params"] == expected_params(
        p.vocab_size,
        p.hidden_size,
        p.num_hidden_layers,
        p.num_attention_heads,
        p.num_key_value_heads,
        p.intermediate_size,
    )


def test_small_parameter_count_from_config() -> None:
    n = count_preset_parameters("small")
    assert 25_000_000 <= n <= 30_000_000
    p = PRESETS["small"]
    assert n == expected_params(
        p.vocab_size,
        p.hidden_size,
        p.num_hidden_layers,
        p.num_attention_heads,
        p.num_key_value_heads,
        p.intermediate_size,
    )


def test_vocab_size_override_changes_embeddings() -> None:
    p = PRESETS["tiny"]
    assert count_preset_parameters("tiny", vocab_size=4096) - count_preset_parameters("tiny") == 2048 * p.hidden_size


def test_unknown_preset_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"huge.*\['small', 'tiny'\]"):
        init_model(preset="huge", output_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_config_shape(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg, p = model.config, PRESETS["tiny"]
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert cfg._attn_implementation == "sdpa"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        p.hidden_size,
        p.num_hidden_layers,
        p.num_attention_heads,
        p.num_key_value_heads,
    )
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert model.dtype == torch.float32


# ---------------------------------------------------------------------------- saved files


def test_only_safetensors_weights(tiny_model_dir: Path) -> None:
    names = {f.name for f in tiny_model_dir.iterdir()}
    assert "model.safetensors" in names
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "instillm_model.json",
    } <= names
    pickled = [f for f in tiny_model_dir.rglob("*") if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert pickled == []


def test_reload_matches_in_memory_model(tiny_model_dir: Path) -> None:
    """What was saved is exactly the seeded model: same weights, same logits."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    in_memory = build_model(build_config(PRESETS["tiny"], tokenizer=tok), seed=0)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True, trust_remote_code=False)
    loaded.eval()
    with torch.no_grad():
        a = in_memory(IDS).logits
        b = loaded(IDS).logits
    assert a.shape == (1, IDS.shape[1], PRESETS["tiny"].vocab_size)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    # and the logits are not degenerate (random weights really were initialised)
    assert a.std() > 0


def test_generation_config(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    eos = gen.eos_token_id
    assert sorted(eos) == sorted([tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|im_end|>")])
    assert gen.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<pad>")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sorted(model.generation_config.eos_token_id) == sorted(eos)
    out = model.generate(torch.tensor([[1, 3, 100]]), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and 3 < out.shape[1] <= 7


def test_same_seed_same_weights_different_seed_different() -> None:
    cfg = build_config(PRESETS["tiny"])
    a = build_model(cfg, seed=0).state_dict()
    b = build_model(cfg, seed=0).state_dict()
    c = build_model(cfg, seed=1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    random_keys = [k for k in a if "norm" not in k]  # norms start at ones for every seed
    assert random_keys and all(not torch.equal(a[k], c[k]) for k in random_keys)


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(build_config(PRESETS["tiny"]), seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_init_is_deterministic_and_fast(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A second build with the same seed writes the same tokenizer and the same weights."""
    start = time.perf_counter()
    out = init_model(preset="tiny", output_dir=tmp_path / "again", seed=0)
    elapsed = time.perf_counter() - start
    assert out == tmp_path / "again" and isinstance(out, Path)
    assert elapsed < 15, f"tiny build took {elapsed:.1f}s"
    assert (out / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
    a, b = weights(out), weights(tiny_model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_custom_corpus_and_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    corpus = [f"the zorblat number {i} met a zorblat, zorblat said hi" for i in range(300)]
    out = init_model(preset="tiny", output_dir=tmp_path / "custom", corpus=corpus, seed=1, vocab_size=512)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.tokenize(" zorblat") == ["Ġzorblat"]
    # the built-in corpus never saw the word, so the default tokenizer splits it
    default_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(default_tok.tokenize(" zorblat")) > 1
    assert len(tok) <= 512
    meta = json.loads((out / "instillm_model.json").read_text())
    assert meta["seed"] == 1 and meta["vocab_size"] == 512
    # still encodes anything, byte-level
    assert tok.decode(tok("ünïcødé 🚀")["input_ids"]) == "ünïcødé 🚀"
    # weights follow the seed: same as an in-memory seed-1 build, different from seed 0
    w = weights(out)
    ref = build_model(build_config(PRESETS["tiny"], tokenizer=tok, vocab_size=512), seed=1).state_dict()
    assert all(torch.equal(w[k], ref[k]) for k in w)
    w0 = weights(tiny_model_dir)
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(w[layer], w0[layer])


def test_corpus_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="corpus"):
        init_model(preset="tiny", output_dir=tmp_path / "m", corpus=[b"bytes"])  # type: ignore[list-item]


def test_vocab_size_too_small(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        init_model(preset="tiny", output_dir=tmp_path / "m", vocab_size=100)


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_fast_with_specials(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    assert tok.is_fast
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.padding_side == "right"
    assert tok.model_max_length == PRESETS["tiny"].max_position_embeddings
    assert len(tok) <= PRESETS["tiny"].vocab_size
    assert tok.unk_token is None
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3, 4]
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok(t, add_special_tokens=False)["input_ids"] == [i]
        # never split, even glued to text
        assert i in tok(f"abc{t}def", add_special_tokens=False)["input_ids"]
    assert set(ids) <= set(tok.all_special_ids)


def test_tokenizer_adds_nothing(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    plain = tok("hello", add_special_tokens=False)["input_ids"]
    assert tok("hello")["input_ids"] == plain
    assert not set(plain) & {0, 1, 2, 3, 4}
    assert tok.decode(plain) == "hello"


def test_offsets_cover_text(tiny_tokenizer) -> None:
    text = "Hello, world!  The answer is 42.\n\n- item one\n- item two"
    enc = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = enc["offset_mapping"]
    assert len(offsets) == len(enc["input_ids"])
    assert "".join(text[s:e] for s, e in offsets) == text


def test_builtin_corpus_learns_common_words(tiny_tokenizer) -> None:
    for word in (" the", " question", " assistant", "user", " because"):
        assert len(tiny_tokenizer.tokenize(word)) == 1, word


def test_builtin_corpus_deterministic() -> None:
    a, b = builtin_corpus(), builtin_corpus()
    assert a == b
    assert builtin_corpus(seed=1) != a
    assert 1000 <= len(a) and 100_000 < sum(map(len, a)) < 5_000_000
    joined = "\n".join(a)
    for needle in ("<|im_start|>", "<|im_end|>", "{", '"name"', "```", "|", "### Instruction:"):
        assert needle in joined, needle


ROUND_TRIP = [
    "",
    " ",
    "  leading and trailing  ",
    "Hello, world!",
    "tab\tnewline\ncarriage\r\nreturn",
    "Ünïcödé façade naïve São Paulo Zürich",
    "emoji 😀🚀👍🏽 👨‍👩‍👧‍👦 flags 🇫🇷",
    "中文 日本語のテキスト 한국어 العربية עברית ελληνικά русский",
    "math ∑∫√∞ ≤ ≥ ≠ and \u0000 nul \u200b zero-width \ufeff bom",
    "<|im_start|>user\nhi<|im_end|>\n</s><s><pad>",
    "not special: <|im_start |> < s> <|IM_END|>",
    'json {"a": [1, 2.5, null], "b": "x\\n"}',
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_examples(tiny_tokenizer, text: str) -> None:
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_round_trip_any_text(tiny_tokenizer, text: str) -> None:
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


def test_chat_template(tiny_tokenizer) -> None:
    assert tiny_tokenizer.chat_template == CHATML
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = tiny_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    prompt = tiny_tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids.count(3) == 3 and ids.count(4) == 3


def test_train_tokenizer_small_corpus_still_byte_level() -> None:
    tok = train_tokenizer(["aaa bbb"] * 10, vocab_size=300)
    assert 256 + len(SPECIAL_TOKENS) <= len(tok) <= 300
    text = "anything at all: ß 🚀 \x01"
    assert tok.decode(tok(text)["input_ids"]) == text


# ---------------------------------------------------------------------------- small preset


@pytest.mark.slow
def test_small_build(tmp_path: Path) -> None:
    out = init_model(preset="small", output_dir=tmp_path / "small", seed=0)
    meta = json.loads((out / "instillm_model.json").read_text())
    assert 25_000_000 <= meta["n_params"] <= 30_000_000
    assert meta["n_params"] == count_preset_parameters("small")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert count_parameters(model) == meta["n_params"]
    assert len(tok) <= PRESETS["small"].vocab_size
    assert model.config.max_position_embeddings == tok.model_max_length == 2048
    with torch.no_grad():
        logits = model(IDS).logits
    assert logits.shape == (1, IDS.shape[1], PRESETS["small"].vocab_size) and torch.isfinite(logits).all()


def test_initializer_range_sets_the_init_std(tmp_path: Path) -> None:
    from dataclasses import replace

    wide = build_model(build_config(replace(PRESETS["tiny"], initializer_range=0.06)), seed=0)
    default = build_model(build_config(PRESETS["tiny"]), seed=0)
    assert abs(float(wide.model.layers[0].mlp.up_proj.weight.std()) - 0.06) < 0.003
    assert abs(float(default.model.layers[0].mlp.up_proj.weight.std()) - 0.02) < 0.001
    with pytest.raises(ConfigError, match="initializer_range"):
        init_model(preset="tiny", output_dir=tmp_path / "m", corpus=["ab ab"], initializer_range=0.0)
    assert not (tmp_path / "m").exists()
