"""GGUF (llama.cpp's single-file format) to and from a plain Hugging Face model folder.

`import_gguf` lets transformers' own GGUF loader dequantize the file, then saves the weights in a
model without its GGUF quantizer (which `save_pretrained` refuses to write), with the tokenizer,
chat template and generation config, so `load_model` / `load_tokenizer` read the folder like any
other. `export_gguf` writes a Llama model the way llama.cpp's `convert_hf_to_gguf.py` does: its
tensor names, its row order of the query/key weights, a byte-level BPE (`gpt2`) vocabulary, and
F32 norms whatever the outtype. Both write to a temporary path beside the target and rename it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFReader,
    GGUFWriter,
    LlamaFileType,
    TokenType,
)
from gguf import quants as ggml_quants

from instillm.data.io import temp_beside, temp_dir_beside
from instillm.errors import ConfigError, ModelError

SOURCE_FILE = "gguf_source.json"  # written last into an imported folder: its presence means the import is complete
IMPORT_ARCHS = ("llama",)  # GGUF architectures import_gguf accepts (what instillm tests)
IMPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Q = GGMLQuantizationType
# outtype -> (ggml type of the 2-D weights, llama.cpp's `general.file_type`)
OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# Hugging Face Llama module -> llama.cpp tensor, per block (`model.layers.N.` / `blk.N.`) and outside the blocks.
BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
# tokenizer.ggml.pre -> the tokenizers pre-tokenizer that splits text as llama.cpp does for it
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}
END_OF_TURN = "<|im_end|>"  # ChatML's end of turn: the eot id when the generation config names no other


# --------------------------------------------------------------------------------------------- reading


def check_magic(file: Path) -> None:
    """ModelError unless `file` is a readable file starting with the 4 bytes `GGUF`."""
    try:
        with open(file, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read GGUF file {file}: {e.strerror or e}") from e
    if magic != b"GGUF":
        raise ModelError(f"{file} is not a GGUF file (it does not start with the magic bytes 'GGUF')")


def read_gguf(file: Path) -> GGUFReader:
    """The file's metadata and tensor table (tensor data stays memory-mapped); ModelError for a damaged file."""
    try:
        return GGUFReader(file)
    except (ValueError, IndexError, OSError) as e:
        raise ModelError(f"cannot read GGUF file {file}: {e}") from e


def field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (a list for arrays), or `default` when the file lacks it."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def quantization_name(reader: GGUFReader) -> str:
    """The file type as llama.cpp names it (`Q4_1`, `F32`, `Q8_0`): `general.file_type`, else the commonest 2-D type."""
    file_type = field(reader, "general.file_type")
    if file_type in {t.value for t in LlamaFileType}:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    kinds = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return kinds.most_common(1)[0][0] if kinds else "F32"


def can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """Whether gguf-py's `dequantize` (what transformers' GGUF loader calls) reads `qtype`: tried on one block."""
    nbytes = GGML_QUANT_SIZES[qtype][1]
    try:
        ggml_quants.dequantize(np.zeros(nbytes, dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError):
        return False
    return True


def sha256(file: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def transformers_gguf_archs() -> list[str]:
    """The GGUF architectures transformers itself reads (empty when this transformers does not list them)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return []
    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def check_importable(file: Path, reader: GGUFReader) -> str:
    """The file's architecture; ModelError for an architecture or tensor type import_gguf does not handle."""
    arch = field(reader, "general.architecture", "")
    if arch not in IMPORT_ARCHS:
        raise ModelError(
            f"{file}: GGUF architecture {arch!r} is not supported; import_gguf handles {', '.join(IMPORT_ARCHS)} "
            f"(transformers reads {', '.join(transformers_gguf_archs())}, untested here)"
        )
    bad = sorted({t.tensor_type.name for t in reader.tensors if not can_dequantize(t.tensor_type)})
    if bad:
        raise ModelError(f"{file}: transformers cannot dequantize tensors of type {', '.join(bad)}")
    return arch


def source_info(file: Path, reader: GGUFReader, arch: str) -> dict[str, Any]:
    """What `gguf_source.json` records about the imported file."""
    return {
        "source_file": file.name,
        "sha256": sha256(file),
        "architecture": arch,
        "quantization": quantization_name(reader),
        "tensor_count": len(reader.tensors),
    }


# --------------------------------------------------------------------------------------------- import


def check_output_dir(file: Path, out: Path) -> None:
    """ModelError unless `out` is a new or empty directory that is not, and does not contain, `file`."""
    if file.resolve().is_relative_to(out.resolve()):
        raise ModelError(f"output dir {out} is or contains the input file {file}; choose another directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"output dir {out} exists and is not empty; choose a new directory")


def eos_ids(reader: GGUFReader) -> list[int]:
    """The ids that end generation: the file's EOS, then its end-of-turn and end-of-message tokens."""
    ids = [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return list(dict.fromkeys(i for i in ids if i is not None))


def plain_model(model: Any, dtype: torch.dtype) -> Any:
    """The same weights in a model built from its config without transformers' GGUF quantizer (serializable)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain.to(dtype).eval()


def fix_tokenizer_json(tokenizer_json: Path, pre: str | None, vocab_size: int) -> None:
    """Split text as llama.cpp does for `pre` where transformers does not (smollm's single digits), and drop the
    added tokens transformers invents past the vocabulary (`<|endoftext|>` when the file has none)."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < vocab_size]
    if pre in PRE_TOKENIZERS:
        spec["pre_tokenizer"] = PRE_TOKENIZERS[pre]
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")


def write_hf_folder(file: Path, out: Path, reader: GGUFReader, dtype: torch.dtype) -> None:
    """Model (safetensors), config, generation config and tokenizer files of `file` into directory `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(file.parent), file.name
    model: Any
    try:
        model = plain_model(AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32), dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(f"transformers cannot load {file}: {e}") from e
    model.generation_config = GenerationConfig(
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=eos_ids(reader),
        pad_token_id=field(reader, "tokenizer.ggml.padding_token_id"),
    )
    model.save_pretrained(out)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)
    fix_tokenizer_json(out / "tokenizer.json", field(reader, "tokenizer.ggml.pre"), model.config.vocab_size)


def import_gguf(file: str | Path, output_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the GGUF `file` as a plain Hugging Face model folder `output_dir` (weights dequantized to `dtype`).

    Also writes `gguf_source.json` (source file name, sha256, architecture, quantization, tensor count)
    and returns that dict plus `output_dir`. The folder appears whole or not at all.
    """
    if dtype not in IMPORT_DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(IMPORT_DTYPES)}")
    src, out = Path(file), Path(output_dir)
    check_magic(src)
    check_output_dir(src, out)
    reader = read_gguf(src)
    info = source_info(src, reader, check_importable(src, reader))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        write_hf_folder(src, tmp, reader, IMPORT_DTYPES[dtype])
        (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty: checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "output_dir": str(out)}


# --------------------------------------------------------------------------------------------- export


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Llama weight: `model.layers.3.mlp.up_proj.weight` -> `blk.3.ffn_up.weight`."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if m and m[2] in BLOCK_TENSORS:
        return f"blk.{m[1]}.{BLOCK_TENSORS[m[2]]}.weight"
    if hf_name.endswith(".weight") and hf_name.removesuffix(".weight") in TOP_TENSORS:
        return TOP_TENSORS[hf_name.removesuffix(".weight")] + ".weight"
    raise ModelError(f"weight {hf_name} has no tensor in llama.cpp's llama architecture")


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k weight from HF's rotate-half RoPE order to llama.cpp's interleaved pairs (its `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(w: np.ndarray, outtype: str) -> tuple[np.ndarray, GGMLQuantizationType]:
    """`w` stored as `outtype` asks: 1-D tensors (norms) stay F32, q8_0 rows not a multiple of 32 become F16."""
    qtype = OUTTYPES[outtype][0] if w.ndim > 1 else Q.F32
    if qtype == Q.Q8_0 and w.shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0]:
        qtype = Q.F16
    return ggml_quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype), qtype


def check_llama(config: Any, model_dir: Path) -> None:
    """ModelError unless `config` is a plain Llama (no biases, default RoPE) that the llama arch represents."""
    if getattr(config, "model_type", None) != "llama":
        raise ModelError(
            f"{model_dir} holds a {getattr(config, 'model_type', 'unknown')!r} model; export_gguf writes Llama models "
            "(LlamaForCausalLM, GGUF architecture llama) only"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if config.attention_bias or config.mlp_bias or rope.get("rope_type", "default") != "default":
        raise ModelError(f"{model_dir}: export_gguf writes Llama models without biases and with default RoPE only")


def add_hyperparameters(w: GGUFWriter, config: Any, name: str, outtype: str) -> None:
    """The llama.* keys llama.cpp reads (and transformers maps back onto a LlamaConfig)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(OUTTYPES[outtype][1])
    w.add_quantization_version(GGML_QUANT_VERSION)


def add_tensors(w: GGUFWriter, model: Any, outtype: str) -> None:
    """Every weight under llama.cpp's name, q/k rows permuted; `output` left out when embeddings are tied."""
    config = model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = gguf_tensor_name(hf_name)
        data = tensor.detach().to(torch.float32).numpy()
        kind = name.split(".")[-2]
        if kind in heads:
            data = permute_rope(data, heads[kind])
        encoded, qtype = encode_tensor(data, outtype)
        w.add_tensor(name, encoded, raw_dtype=qtype)


def pre_tokenizer_name(spec: dict[str, Any], model_dir: Path) -> str:
    """The `tokenizer.ggml.pre` whose splitting equals this tokenizer.json's; ModelError for any other tokenizer."""
    decoder = (spec.get("decoder") or {}).get("type")
    if spec["model"].get("type") != "BPE" or decoder != "ByteLevel" or spec.get("normalizer") is not None:
        raise ModelError(f"{model_dir}: export_gguf writes byte-level BPE tokenizers (gpt2 style) only")
    for pre, want in PRE_TOKENIZERS.items():
        if spec.get("pre_tokenizer") == want:
            return pre
    raise ModelError(
        f"{model_dir}: its pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))} matches none llama.cpp knows "
        f"here ({', '.join(PRE_TOKENIZERS)})"
    )


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, with llama.cpp types: special added CONTROL, other added USER_DEFINED, gaps UNUSED."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        kind = TokenType.UNUSED if i not in by_id else TokenType.NORMAL
        if i in added:
            kind = TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED
        types.append(int(kind))
    return tokens, types


def add_tokenizer(w: GGUFWriter, tokenizer: Any, generation_eos: list[int], vocab_size: int, model_dir: Path) -> None:
    """The vocabulary as a `gpt2` BPE model with merges, special ids, add_bos/add_eos flags and the chat template."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if len(tokenizer) > vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens, the model only {vocab_size}")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(spec, model_dir))
    tokens, types = token_table(tokenizer, vocab_size)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for add_id, tid in (
        (w.add_bos_token_id, tokenizer.bos_token_id),
        (w.add_eos_token_id, tokenizer.eos_token_id),
        (w.add_pad_token_id, tokenizer.pad_token_id),
        (w.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if tid is not None:
            add_id(tid)
    eot = end_of_turn_id(tokenizer, generation_eos)
    if eot is not None:
        w.add_eot_token_id(eot)
    w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    w.add_add_eos_token(bool(getattr(tokenizer, "add_eos_token", False)))
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)


def end_of_turn_id(tokenizer: Any, generation_eos: list[int]) -> int | None:
    """The first generation EOS id other than the tokenizer's EOS, else `<|im_end|>`'s id, else None."""
    others = [i for i in generation_eos if i != tokenizer.eos_token_id]
    return others[0] if others else tokenizer.get_vocab().get(END_OF_TURN)


def as_list(ids: int | list[int] | None) -> list[int]:
    """An id, a list of ids or None as a list."""
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def check_out_file(model_dir: Path, out: Path) -> None:
    """ModelError when writing `out` would replace a file of the model folder."""
    if out.exists() and out.resolve().parent == model_dir.resolve():
        raise ModelError(f"{out} is a file of the model folder {model_dir}; write the GGUF elsewhere")
    if out.is_dir():
        raise ModelError(f"{out} is a directory; give the GGUF file's path")


def export_gguf(model_dir: str | Path, out_file: str | Path, outtype: str = "f32") -> dict[str, Any]:
    """Write the Llama model in `model_dir` as the GGUF `out_file` (`outtype` f32, f16, bf16 or q8_0).

    Returns {out_file, outtype, tensor_count, bytes}. The file appears whole or not at all.
    """
    from transformers import AutoConfig

    from instillm.models.loading import load_model, load_tokenizer

    if outtype not in OUTTYPES:
        raise ConfigError(f"outtype: {outtype!r} is not one of {', '.join(OUTTYPES)}")
    src, out = Path(model_dir), Path(out_file)
    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read a model config from {src}: {e}") from e
    check_llama(config, src)
    check_out_file(src, out)
    model, tokenizer = load_model(src, dtype=torch.float32), load_tokenizer(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)
    try:
        writer = GGUFWriter(tmp, "llama")
        add_hyperparameters(writer, config, src.resolve().name, outtype)
        add_tokenizer(writer, tokenizer, as_list(model.generation_config.eos_token_id), config.vocab_size, src)
        add_tensors(writer, model, outtype)
        count = len(writer.tensors[0])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"out_file": str(out), "outtype": outtype, "tensor_count": count, "bytes": out.stat().st_size}
