"""Build small models from scratch: a byte-level BPE tokenizer and a randomly initialised Llama.

`init_model` needs no network and no pretrained weights, so tests, CI and tutorials can run the
whole pipeline (data → training → evaluation → generation) on a model built in about a second.
The result is an ordinary Hugging Face directory (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json, chat template) that
`AutoModelForCausalLM` / `AutoTokenizer` load without `trust_remote_code`.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from instillm.data.templates import CHATML
from instillm.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

PAD, BOS, EOS, IM_START, IM_END = "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IM_START, IM_END)
METADATA_FILE = "instillm_model.json"


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a Llama model built from scratch (see `PRESETS`)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02  # std of the normal init of every weight matrix (HF's default)


PRESETS: dict[str, ModelPreset] = {
    # ~1.25M parameters: builds in well under a second, trains visibly in seconds on a CPU.
    "tiny": ModelPreset(
        vocab_size=2048,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=1024,
    ),
    # ~27.8M parameters: big enough to learn a real instruction format in minutes on one GPU.
    "small": ModelPreset(
        vocab_size=8192,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
        max_position_embeddings=2048,
    ),
}


def get_preset(preset: str) -> ModelPreset:
    """The preset called `preset`, or ConfigError listing the choices."""
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ConfigError(f"preset: {preset!r} is not one of {sorted(PRESETS)}") from None


# --------------------------------------------------------------------------------------------
# tokenizer


_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """Texts with the special-token strings cut out, so BPE spends no merges on `<|im_`..."""
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"corpus: expected strings, got {type(text).__name__}")
        for piece in _SPECIAL_SPLIT.split(text):
            if piece:
                yield piece


def train_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 2048,
    model_max_length: int = 1024,
):
    """Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

    Any text encodes (the 256-byte alphabet is always in the vocabulary, there is no `<unk>`),
    decode(encode(text)) == text, `<pad> <s> </s> <|im_start|> <|im_end|>` are single special
    tokens, nothing is added around a plain `tokenizer(text)` call, and the chat template is
    chatml. `corpus` defaults to `instillm.models.corpus.builtin_corpus()`. The vocabulary
    may end up smaller than `vocab_size` when the corpus is too small to learn that many merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ConfigError(f"vocab_size: {vocab_size} is too small; byte-level BPE needs at least {min_size}")
    if corpus is None:
        from instillm.models.corpus import builtin_corpus

        corpus = builtin_corpus()

    tok = Tokenizer(models.BPE())  # no unk_token: byte-level never needs one
    # Digits are split one per token (as Llama 3 and DeepSeek do): a model trained from scratch
    # then learns arithmetic, comparison and parity on digits instead of memorising number tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # No post-processor of our own: transformers installs a TemplateProcessing that adds nothing
    # (add_bos_token/add_eos_token False) and leaves offsets untrimmed, leading spaces included.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..4, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_pieces(corpus), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:  # the trainer's contract; cheap to check
            raise ModelError(f"tokenizer training put special token {t!r} at id {tok.token_to_id(t)}, not {i}")

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        add_bos_token=False,
        add_eos_token=False,
    )
    hf_tok.chat_template = CHATML
    return hf_tok


# --------------------------------------------------------------------------------------------
# model


def build_config(preset: ModelPreset, tokenizer=None, vocab_size: int | None = None):
    """A `LlamaConfig` for `preset` (tied embeddings, sdpa attention, special token ids set)."""
    from transformers import LlamaConfig

    size = vocab_size or preset.vocab_size
    if tokenizer is not None and len(tokenizer) > size:
        raise ConfigError(f"vocab_size: {size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    ids = {PAD: 0, BOS: 1, EOS: 2}
    if tokenizer is not None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS)}
    kwargs: dict[str, Any] = dict(
        vocab_size=size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rms_norm_eps=preset.rms_norm_eps,
        initializer_range=preset.initializer_range,
        tie_word_embeddings=True,
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        attn_implementation="sdpa",
    )
    # transformers 5 takes RoPE settings as `rope_parameters`; 4.x as `rope_theta`.
    fields = getattr(LlamaConfig, "__dataclass_fields__", None) or inspect.signature(LlamaConfig.__init__).parameters
    if "rope_parameters" in fields:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": preset.rope_theta}
    else:
        kwargs["rope_theta"] = preset.rope_theta
    return LlamaConfig(**kwargs)


def count_preset_parameters(preset: str | ModelPreset, vocab_size: int | None = None) -> int:
    """Parameter count of a preset's model (tied embeddings counted once), without allocating it."""
    from transformers import LlamaForCausalLM

    from instillm.models.loading import count_parameters

    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        model = LlamaForCausalLM(build_config(p, vocab_size=vocab_size))
    return count_parameters(model)


def build_model(config, seed: int = 0):
    """A randomly initialised `LlamaForCausalLM`; the same config and seed give the same weights.

    The global torch RNG is left as it was (weights come from a forked, seeded generator state).
    """
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model


def build_generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )


def init_model(
    preset: str = "tiny",
    output_dir: str | Path | None = None,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    initializer_range: float | None = None,
) -> Path:
    """Train a tokenizer, build a random Llama of `preset` shape, save both to `output_dir`.

    Writes safetensors weights, config, generation config (EOS = `</s>` or `<|im_end|>`),
    tokenizer files with the chatml chat template, and `instillm_model.json`
    ({preset, seed, n_params, vocab_size, tokenizer_size}). Returns `output_dir` as a Path.
    `vocab_size` overrides the preset's (tokenizer target and embedding rows), `initializer_range`
    the preset's init std.
    """
    if output_dir is None:
        raise ConfigError("output_dir: required (the directory to write the model to)")
    p = get_preset(preset)
    if initializer_range is not None:
        if initializer_range <= 0:
            raise ConfigError(f"initializer_range: must be > 0, got {initializer_range}")
        p = replace(p, initializer_range=initializer_range)
    size = vocab_size if vocab_size is not None else p.vocab_size
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} exists and is not a directory")
    if out.is_dir() and (out / "config.json").exists() and not (out / METADATA_FILE).exists():
        raise ConfigError(f"output_dir: {out} already holds a model not made by instillm; choose another directory")

    tokenizer = train_tokenizer(corpus, vocab_size=size, model_max_length=p.max_position_embeddings)
    config = build_config(p, tokenizer=tokenizer, vocab_size=size)
    model = build_model(config, seed=seed)
    model.generation_config = build_generation_config(tokenizer)

    from instillm.models.loading import count_parameters

    n_params = count_parameters(model)
    out.mkdir(parents=True, exist_ok=True)
    save_kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        save_kwargs["safe_serialization"] = True
    model.save_pretrained(out, **save_kwargs)
    tokenizer.save_pretrained(out)
    meta = {
        "preset": preset,
        "seed": seed,
        "n_params": n_params,
        "vocab_size": size,
        "tokenizer_size": len(tokenizer),
        "shape": asdict(p),
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("built %s model (%d parameters, %d tokens) in %s", preset, n_params, len(tokenizer), out)
    return out
