"""Two torchrun CPU processes (gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.helpers import base_config, make_examples, read_metrics, write_config, write_jsonl

BIN = Path(sys.executable).parent


def _run(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("packing", [False, True])  # packed: per-example attention (packed_attention auto)
def test_two_processes_equal_one_with_double_accumulation(tiny_model_dir, tmp_path, packing):
    data = write_jsonl(tmp_path / "d.jsonl", make_examples(48, "reverse") + make_examples(48, "upper"))
    common = dict(max_steps=4, batch_size=4, packing=packing, max_grad_norm=1.0)
    two = write_config(tmp_path / "two.yaml", base_config(tiny_model_dir, data, tmp_path / "two", **common))
    one = write_config(
        tmp_path / "one.yaml",
        base_config(tiny_model_dir, data, tmp_path / "one", gradient_accumulation_steps=2, **common),
    )
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "instillm.train.loop", str(two)]
    procs = [_run(torchrun), _run([sys.executable, "-m", "instillm.train.loop", str(one)])]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    manifests = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("two", "one")]
    backend = "instillm_segments" if packing else "sdpa"
    assert [m["attn_implementation"] for m in manifests] == [backend, backend]
    plans = [m["plan"] for m in manifests]
    assert plans[0]["world_size"] == 2 and plans[1]["world_size"] == 1
    assert plans[0]["global_batch"] == plans[1]["global_batch"] == 8
    m2, m1 = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert [m["trained_tokens"] for m in m2] == [m["trained_tokens"] for m in m1]
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(m2, m1))
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    assert w2.keys() == w1.keys()
    assert all(torch.allclose(w2[k], w1[k], atol=1e-5, rtol=0) for k in w1)
