"""Loading models and tokenizers: clear errors, dtype/device/attention options, pad token."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from instillm.errors import ModelError
from instillm.models import count_parameters, load_model, load_tokenizer
from instillm.models.factory import PRESETS

IDS = torch.tensor([[1, 3, 50, 60, 70, 4, 2]])


@pytest.mark.parametrize("missing", ["does-not-exist", "./nowhere/model", "a/b/c", "/abs/missing/dir"])
def test_missing_path_names_init_command(missing: str) -> None:
    for loader in (load_model, load_tokenizer):
        with pytest.raises(ModelError) as info:
            loader(missing)
        msg = str(info.value)
        assert f"model path {missing} does not exist" in msg
        assert f"instillm model init --preset tiny -o {missing}" in msg


def test_missing_path_object_and_org_like_local_path(tmp_path: Path) -> None:
    # a Path is always local, even when it reads like org/name
    with pytest.raises(ModelError, match="does not exist"):
        load_model(Path("someorg/somemodel"))
    # "dir/name" where dir exists locally is a mistyped path, not a hub id
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelError, match="instillm model init"):
        load_tokenizer(str(tmp_path / "models" / "tiny"))


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelError, match="not a directory"):
        load_model(f)


def test_load_model_default(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    meta = json.loads((tiny_model_dir / "instillm_model.json").read_text())
    assert count_parameters(model) == meta["n_params"]
    # also accepts a str path
    assert type(load_model(str(tiny_model_dir))) is type(model)


def test_load_model_bfloat16(tiny_model_dir: Path) -> None:
    ref = load_model(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        a = ref(IDS).logits
        b = model(IDS).logits
    assert b.dtype == torch.bfloat16 and torch.isfinite(b).all()
    torch.testing.assert_close(b.float(), a, atol=0.05, rtol=0.05)


def test_load_model_eager_attention_matches_sdpa(tiny_model_dir: Path) -> None:
    sdpa = load_model(tiny_model_dir)
    eager = load_model(tiny_model_dir, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(IDS).logits, sdpa(IDS).logits, atol=1e-5, rtol=1e-4)


def test_load_tokenizer(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    assert tok.is_fast
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    assert tok.chat_template
    assert tok("hi there", return_offsets_mapping=True)["offset_mapping"]


def test_tokenizer_without_pad_uses_eos(tiny_model_dir: Path, tmp_path: Path, caplog) -> None:
    d = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    with caplog.at_level(logging.INFO, logger="instillm.models.loading"):
        tok = load_tokenizer(d)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert "pad" in caplog.text and "</s>" in caplog.text


def test_slow_tokenizer_rejected(tiny_model_dir: Path, monkeypatch) -> None:
    import transformers

    class SlowTok:
        is_fast = False
        pad_token = "<pad>"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: SlowTok()))
    with pytest.raises(ModelError, match="not a fast"):
        load_tokenizer(tiny_model_dir)


def test_loader_passes_safe_flags(tiny_model_dir: Path, monkeypatch) -> None:
    import transformers

    seen: dict = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(tiny_model_dir, dtype=torch.float32)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert seen["dtype"] == torch.float32


def test_pickled_weights_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A directory holding only a pickle checkpoint is not loaded (use_safetensors=True)."""
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    model = load_model(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load a model"):
        load_model(d)


def test_count_parameters_tied_and_trainable(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    p = PRESETS["tiny"]
    total = count_parameters(model)
    embed = p.vocab_size * p.hidden_size
    # tied lm_head counted once: the state dict holds the embedding under two names
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    assert total == sum(t.numel() for t in state.values()) - embed
    model.get_input_embeddings().weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - embed


# --------------------------------------------------------------------------------------------
# load_local: the one loader of eval, run, serve, the local backend, IFD scoring and lm-eval


def test_resolve_device_auto_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from instillm.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="no CUDA device"):
        resolve_device("cuda:0")
    with pytest.raises(ModelError, match="expected auto, cpu"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_load_local_gives_model_tokenizer_and_saved_template_renderer(tiny_model_dir: Path) -> None:
    from instillm.models.loading import load_local

    local = load_local(tiny_model_dir, device="cpu")
    assert local.device.type == "cpu" and not local.model.training
    conv = [{"role": "user", "content": "hi"}]
    expected = local.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert local.renderer.prompt_text(conv) == expected
    tok2, renderer2 = local.fresh_tokenizer()
    assert tok2 is not local.tokenizer and renderer2.prompt_text(conv) == expected
    with pytest.raises(ModelError, match="does not exist"):
        load_local(tiny_model_dir / "missing")


def test_load_local_applies_a_lora_adapter_to_its_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from instillm.models.loading import load_local

    torch.manual_seed(0)
    peft_model = get_peft_model(
        load_model(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    local = load_local(tmp_path / "adapter", device="cpu")
    with torch.no_grad():
        want = peft_model.eval()(IDS).logits
        got = local.model(IDS).logits
        base = load_model(tiny_model_dir)(IDS).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter is applied, not dropped


@pytest.mark.gpu
def test_load_local_auto_picks_cuda(tiny_model_dir: Path) -> None:
    from instillm.models.loading import load_local

    assert load_local(tiny_model_dir).device.type == "cuda"
