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
    cfg = base_config(
        smollm2_dir,
        data,
        tmp_path / "out",
        max_steps=8,
        learning_rate=2e-3,
        max_length=96,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
    )
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
            model="smollm2",
            max_tokens=16,
            temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        )
    finally:
        handle.stop()
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Name three primary colors.",
    "What is 12 + 7?",
    "Write a haiku about the sea.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Give a synonym for 'happy'.",
    "What is the boiling point of water in Celsius?",
]


def test_q8_0_export_of_smollm2_keeps_its_greedy_answers(smollm2_dir: Path, tmp_path: Path) -> None:
    # measured here: all 8 answers agree on their first 2 tokens, 7 of 8 on their first 5, 2 of 8 on
    # all 32 (the source is the Q4_1 GGUF dequantized; q8_0 rounds it again)
    from instillm.llm.generation import GenerateOptions, Generator
    from instillm.models.gguf import import_gguf
    from instillm.models.loading import load_local
    from instillm.train.to_gguf import export_run_gguf

    export_run_gguf(smollm2_dir, tmp_path / "m.gguf", "q8_0")
    import_gguf(tmp_path / "m.gguf", tmp_path / "back")
    answers = []
    for path in (smollm2_dir, tmp_path / "back"):
        lm = load_local(path, device="cpu")
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
        answers.append(
            [
                o.token_ids
                for o in Generator(lm.model, lm.tokenizer, lm.renderer).generate_chat(
                    chats, GenerateOptions(max_new_tokens=32)
                )
            ]
        )
    prefixes = [
        next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(*answers)
    ]
    print("q8_0 shared greedy prefix per prompt:", prefixes)
    assert all(n >= 2 for n in prefixes) and sum(n >= 5 for n in prefixes) >= 6, prefixes
