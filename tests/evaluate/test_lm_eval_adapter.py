"""lm-eval on an instillm model, offline: local YAML tasks, log-likelihoods equal to a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (optional extra: pip install 'instillm[lmeval]')")

from instillm.evaluate.lm_eval_adapter import InstillmLM, run_lm_eval  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"


@pytest.fixture(scope="module")
def results(tiny_model_dir: Path) -> dict:
    torch.set_num_threads(1)
    lm = InstillmLM(str(tiny_model_dir), batch_size="2")  # lm-eval passes model_args as strings
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(FIXTURES)  # the task YAMLs name their data files relative to this folder
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        out = run_lm_eval(
            lm, ["instillm_tiny_mc", "instillm_tiny_gen"], include_path=FIXTURES, log_samples=True, builtin_tasks=False
        )
    return {"out": out, "lm": lm}


def _hand_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """lm-eval's causal split (encode whole, cut at the context's length), one unpadded forward pass."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))


def test_registered_under_instillm():
    from lm_eval.api.registry import get_model

    assert get_model("instillm") is InstillmLM


def test_multiple_choice_loglikelihoods_equal_hand_computation(results):
    lm, out = results["lm"], results["out"]
    samples = out["samples"]["instillm_tiny_mc"]
    docs = [json.loads(line) for line in open(FIXTURES / "mc.jsonl")]
    assert len(samples) == len(docs)
    correct = []
    for s in samples:
        doc = docs[s["doc_id"]]
        got = [r[0][0] for r in s["resps"]]
        assert [a[1] for a in s["arguments"]] == [" " + c for c in doc["choices"]]  # lm-eval's delimiter
        want = [_hand_loglikelihood(lm.model, lm.tokenizer, *a) for a in s["arguments"]]
        assert got == pytest.approx(want, abs=1e-5)
        correct.append(float(max(range(len(want)), key=want.__getitem__) == doc["label"]))
    assert out["results"]["instillm_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_generate_until_matches_greedy_by_hand(results):
    lm, out = results["lm"], results["out"]
    tok = lm.tokenizer
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    for s in out["samples"]["instillm_tiny_gen"]:
        context = s["arguments"][0][0]
        ids, new = tok(context, add_special_tokens=False)["input_ids"], []
        with torch.no_grad():
            for _ in range(5):  # max_gen_toks of the task
                nxt = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in stops:
                    break
                new.append(nxt)
        expected = tok.decode(new, skip_special_tokens=True).split("\n")[0]
        assert s["resps"][0][0] == expected
    em = out["results"]["instillm_tiny_gen"]["exact_match,none"]
    answers = [json.loads(line)["answer"] for line in open(FIXTURES / "gen.jsonl")]
    resps = [s["resps"][0][0] for s in sorted(out["samples"]["instillm_tiny_gen"], key=lambda s: s["doc_id"])]
    assert em == pytest.approx(sum(r == a for r, a in zip(resps, answers)) / len(answers))


def test_rolling_loglikelihood_covers_every_token_once(tiny_model_dir: Path):
    from lm_eval import utils
    from lm_eval.api.instance import Instance

    lm = InstillmLM(str(tiny_model_dir), max_length="8")  # forces several windows
    text = "one two three four five six seven eight nine ten"
    ids = lm.tok_encode(text)
    assert len(ids) > 8
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    windows = [
        utils.make_disjoint_window(w)
        for w in utils.get_rolling_token_windows(
            token_list=ids, prefix_token=lm.prefix_token_id, max_seq_len=7, context_len=1
        )
    ]
    assert [t for _, pred in windows for t in pred] == ids  # every token predicted exactly once
    assert len(windows) > 1 and all(len(c) + len(p) <= 8 for c, p in windows)  # fits 8 positions
    want = 0.0
    with torch.no_grad():
        for ctx, pred in windows:
            seq = ctx + pred
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([seq])).logits[0].float(), dim=-1)
            want += sum(float(logp[t - 1, seq[t]]) for t in range(len(ctx), len(seq)))
    assert got == pytest.approx(want, abs=1e-4)
