"""TransformersBackend on the tiny model: same tokens as the Generator, seeded sampling, grouping."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from instillm.errors import ConfigError
from instillm.llm.backend import BackendConfig, LLMRequestError, chat, completion, make_backend
from instillm.llm.local_backend import TransformersBackend, VLLMBackend, sample_seed

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the word: stone"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "List three colours, comma separated, and nothing else at all."}],
]


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> TransformersBackend:
    torch.set_num_threads(1)
    return TransformersBackend(BackendConfig(kind="transformers", model=str(tiny_model_dir), batch_size=4))


@pytest.fixture(scope="module")
def direct(tiny_model_dir):
    """A Generator built independently of the backend, as `instillm eval` builds one."""
    from instillm.data.render import RenderConfig, Renderer
    from instillm.llm.generation import Generator
    from instillm.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    return Generator(load_model(tiny_model_dir), tok, Renderer(tok, RenderConfig(template="auto", max_length=1 << 30)))


def as_tuples(responses):
    return [[(s.text, s.finish_reason, s.prompt_tokens, s.completion_tokens) for s in r.samples] for r in responses]


def test_greedy_chat_and_completion_equal_the_generator(local, direct):
    from instillm.llm.generation import GenerateOptions

    opts = GenerateOptions(max_new_tokens=12)
    want_chat = direct.generate_chat(CONVERSATIONS, opts)
    want_text = direct.generate_texts(["Once upon a time", "def f(x):"], opts)
    got = local.generate(
        [chat(c, max_tokens=12) for c in CONVERSATIONS]
        + [completion(p, max_tokens=12) for p in ["Once upon a time", "def f(x):"]]
    )
    want = want_chat + want_text
    assert [[(o.text, o.finish_reason, o.prompt_tokens, o.completion_tokens)] for o in want] == as_tuples(got)
    assert any(o.finish_reason == "length" and o.completion_tokens == 12 for o in want)


def test_seeded_sampling_is_reproducible_and_samples_differ(local):
    req = chat(CONVERSATIONS[0], n=4, temperature=1.0, seed=7, max_tokens=10)
    a, b = local.generate([req])[0], local.generate([req])[0]
    assert as_tuples([a]) == as_tuples([b])
    assert len({s.text for s in a.samples}) == 4
    other = local.generate([chat(CONVERSATIONS[0], n=4, temperature=1.0, seed=8, max_tokens=10)])[0]
    assert [s.text for s in other.samples] != [s.text for s in a.samples]


def test_sample_i_does_not_depend_on_n(local):
    two = local.generate([completion("The sea", n=2, temperature=1.0, seed=3, max_tokens=8)])[0]
    four = local.generate([completion("The sea", n=4, temperature=1.0, seed=3, max_tokens=8)])[0]
    assert as_tuples([two])[0] == as_tuples([four])[0][:2]


def test_greedy_n_samples_are_one_generation(local):
    r = local.generate([chat(CONVERSATIONS[1], n=3, max_tokens=6)])[0]
    assert len(r.samples) == 3 and len({s.text for s in r.samples}) == 1


def test_grouped_batch_equals_one_request_at_a_time(local):
    reqs = [
        chat(CONVERSATIONS[0], max_tokens=8),
        completion("Once upon a time", n=3, temperature=0.9, seed=1, max_tokens=8),
        chat(CONVERSATIONS[1], n=2, temperature=0.9, seed=1, max_tokens=8),
        chat(CONVERSATIONS[2], max_tokens=5, stop=[","]),
        completion("def f(x):", n=2, temperature=0.7, top_p=0.9, seed=2, max_tokens=8),
        chat(CONVERSATIONS[0], max_tokens=8),
    ]
    progress, arrived = [], []
    together = local.generate(reqs, progress=progress.append, on_response=lambda i, r: arrived.append(i))
    alone = [local.generate([r])[0] for r in reqs]
    assert as_tuples(together) == as_tuples(alone)
    # batch_size 1: a group of 5 rows (chat and completion mixed) is split over two Generator calls
    small = TransformersBackend(BackendConfig(kind="transformers", model=local.model, batch_size=1), local.generator)
    assert as_tuples(small.generate(reqs)) == as_tuples(together)
    assert sum(progress) == len(reqs) and sorted(arrived) == list(range(len(reqs)))


def test_stop_strings_cut_the_text(local):
    free = local.generate([completion("Once upon a time", max_tokens=16)])[0].samples[0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    cut = local.generate([completion("Once upon a time", max_tokens=16, stop=[stop])])[0].samples[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]


def test_unseeded_sampling_draws_fresh_samples(local):
    req = completion("The sea", n=2, temperature=1.0, max_tokens=10)
    assert as_tuples(local.generate([req])) != as_tuples(local.generate([req]))


def test_a_prompt_longer_than_the_model_is_a_request_error(local):
    too_long = "word " * (local.generator.max_length + 10)
    with pytest.raises(LLMRequestError, match="request 1: prompt has"):
        local.generate([completion("ok"), completion(too_long)])


def test_sample_seed_is_deterministic_per_index():
    assert sample_seed(5, 0) == sample_seed(5, 0) != sample_seed(5, 1)
    assert sample_seed(None, 0) != sample_seed(None, 0)


def test_make_backend_builds_the_transformers_backend(tiny_model_dir, tmp_path):
    from instillm.llm.cache import CachedBackend

    b = make_backend(BackendConfig(kind="transformers", model=str(tiny_model_dir), cache=str(tmp_path / "c.sqlite")))
    assert isinstance(b, CachedBackend) and isinstance(b.inner, TransformersBackend)
    first = b.generate([chat(CONVERSATIONS[0], max_tokens=4)])[0]
    again = b.generate([chat(CONVERSATIONS[0], max_tokens=4)])[0]
    assert again.samples[0].cached and again.text == first.text
    b.close()


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the missing-package error cannot be seen")
def test_vllm_backend_without_vllm_says_how_to_install_it(tiny_model_dir):
    with pytest.raises(ConfigError, match="pip install vllm"):
        VLLMBackend(BackendConfig(kind="vllm", model=str(tiny_model_dir)))


@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (it needs a CUDA GPU); pip install vllm")
def test_vllm_greedy_equals_the_transformers_backend(tiny_model_dir, local):
    vb = VLLMBackend(BackendConfig(kind="vllm", model=str(tiny_model_dir)))
    reqs = [chat(c, max_tokens=8) for c in CONVERSATIONS] + [completion("Once upon a time", max_tokens=8, n=2)]
    got, want = vb.generate(reqs), local.generate(reqs)
    assert [[s.text for s in r.samples] for r in got] == [[s.text for s in r.samples] for r in want]
    vb.close()


def test_cache_keys_change_when_the_weights_are_rewritten(tiny_model_dir, tmp_path):
    import shutil

    from instillm.llm.cache import CachedBackend
    from instillm.llm.local_backend import model_fingerprint

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = model_fingerprint(str(copy))
    assert before.startswith(str(copy)) and model_fingerprint(str(copy)) == before
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same bytes, rewritten: as a re-training would
    assert model_fingerprint(str(copy)) != before
    assert model_fingerprint("org/name") == "org/name"
    b = CachedBackend(TransformersBackend(BackendConfig(kind="transformers", model=str(copy))), tmp_path / "c.sqlite")
    assert b.model == str(copy)  # outputs keep the plain name
    b.close()
