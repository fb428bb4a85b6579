"""The real-model tier (`-m real`): SmolLM2-135M-Instruct imported from its GGUF (`make real-model`)
trains with LoRA and serves through the OpenAI client. Skips with the reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.helpers import base_config, make_examples, read_metrics, write_jsonl

pytestmark = pytest.mark.real


def test_lora_on_smollm2_lowers_the_loss_and_trains_only_adapters(smollm2_dir: Path, tmp_path: Path) -> None:
    from instillm.train.config import config_from_dict
    from instillm.train.loop import RunLog, run_loop, setup

    data = write_jsonl(tmp_path / "d.jsonl", make_examples(16, "upper"))
    cfg = base_config(smollm2_dir, data, tmp_path / "out", max_steps=8, learning_rate=2e-3, max_length=96,
                      lora={"r": 8, "alpha": 16, "dropout": 0.0})
    run = setup(config_from_dict(cfg), device="cpu")
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run_loop(run, RunLog(tmp_path / "out", run.plan.total_steps, 0, enabled=True, progress=False))
    losses = [m["loss"] for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < 0.7 * losses[0], losses
    for name, p in run.model.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
        if "lora_" not in name:
            assert torch.equal(p, before[name]), f"base weight {name} changed"


def test_serve_over_smollm2_answers_the_openai_client(smollm2_dir: Path) -> None:
    import openai

    from instillm.serve import create_app, start_in_thread

    handle = start_in_thread(create_app(smollm2_dir, model_name="smollm2", device="cpu"))
    try:
        client = openai.OpenAI(base_url=handle.base_url, api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="smollm2", max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    finally:
        handle.stop()
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
