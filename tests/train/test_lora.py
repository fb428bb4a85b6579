"""LoRA: only adapter weights train, every one of them moves, and merging keeps the logits."""

from __future__ import annotations

import pytest
import torch

from instillm.train.config import config_from_dict
from instillm.train.loop import RunLog, export, run_loop, save_final, setup
from tests.train.helpers import base_config, make_examples, write_jsonl


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    data = write_jsonl(tmp / "d.jsonl", make_examples(64, "upper"))
    cfg = base_config(
        tiny_model_dir, data, tmp / "out", max_steps=8, learning_rate=1e-2, lora={"r": 4, "alpha": 8, "dropout": 0.0}
    )  # target_modules: all-linear
    run = setup(config_from_dict(cfg))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run_loop(run, RunLog(tmp / "out", run.plan.total_steps, 0, enabled=False, progress=False))
    save_final(run)
    return run, before, tmp


def test_only_adapters_train_and_all_of_them_change(lora_run):
    run, before, _ = lora_run
    after = dict(run.model.named_parameters())
    adapters = [n for n in after if "lora_" in n]
    assert adapters and all(after[n].requires_grad for n in adapters)
    assert len(adapters) == 2 * 7 * 4  # A and B × 7 linear layers × 4 blocks
    assert all(not after[n].requires_grad for n in after if "lora_" not in n)
    for name, p in after.items():
        if "lora_" in name:
            assert not torch.equal(p, before[name]), f"adapter weight {name} did not change"
        else:
            assert torch.equal(p, before[name]), f"base weight {name} changed"


def test_saved_adapter_and_merged_export_give_the_same_logits(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _, tmp = lora_run
    final = tmp / "out" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    ids = torch.tensor([run.data.train[0].input_ids])
    run.model.eval()
    with torch.no_grad():
        trained = run.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        reloaded = PeftModel.from_pretrained(base, final).eval()(input_ids=ids).logits
        merged_dir = export(tmp / "out", tmp / "merged", merge=True)
        merged_model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        merged = merged_model(input_ids=ids).logits
        untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(input_ids=ids).logits
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    assert torch.allclose(reloaded, trained, atol=1e-5, rtol=0)
    assert torch.allclose(merged, trained, atol=1e-5, rtol=0)
    assert not torch.allclose(merged, untrained, atol=1e-3)  # the adapter did something
    adapter_only = export(tmp / "out", tmp / "adapter", merge=False)
    assert (adapter_only / "adapter_config.json").is_file()


def test_gguf_export_of_a_lora_run_merges_the_adapter(lora_run):
    # `instillm export RUN --gguf`: the adapter is merged into its base first, so the GGUF re-imports
    # to the trained model's logits, not the base's
    from transformers import AutoModelForCausalLM

    from instillm.models.gguf import import_gguf
    from instillm.train.to_gguf import export_run_gguf

    run, _, tmp = lora_run
    info = export_run_gguf(tmp / "out", tmp / "run.gguf", "f32")
    assert info["outtype"] == "f32" and (tmp / "run.gguf").is_file()
    import_gguf(tmp / "run.gguf", tmp / "reimported")
    ids = torch.tensor([run.data.train[0].input_ids])
    run.model.eval()
    with torch.no_grad():
        trained = run.model(input_ids=ids).logits
        back = AutoModelForCausalLM.from_pretrained(tmp / "reimported").eval()(input_ids=ids).logits
    torch.testing.assert_close(back, trained, atol=1e-5, rtol=0)


def test_adapter_init_depends_on_the_seed_alone(tiny_model_dir, tmp_path):
    """The same seed gives the same adapters whatever the generator drew before, another seed others,
    and adding them leaves the global generator where it was."""
    from instillm.models.loading import load_model
    from instillm.train.loop import add_lora

    def adapters(seed: int, draws: int) -> dict[str, torch.Tensor]:
        torch.randn(draws)  # what loading or anything else drew from the global generator before
        cfg = config_from_dict(base_config(tiny_model_dir, tmp_path / "d.jsonl", tmp_path / "o", seed=seed, lora=True))
        model = load_model(tiny_model_dir, dtype=torch.float32)
        state = torch.get_rng_state()
        model = add_lora(model, cfg)
        assert torch.equal(torch.get_rng_state(), state)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first, again, other = adapters(0, 1), adapters(0, 1000), adapters(1, 1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)
