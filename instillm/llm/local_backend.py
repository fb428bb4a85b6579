"""In-process backends: a local Hugging Face model through instillm's Generator, or vLLM.

`TransformersBackend` renders chat requests with the model's saved chat template (the one
training used, `template: auto`), and generates completion prompts as given. Requests with the
same sampling settings (all but `n`) form a group; each group is generated in chunks of about
`CHUNK_BATCHES` decode batches, one row per sample, so results reach `on_response` as chunks
finish. Temperature 0 is greedy (the `n` samples are one generation, repeated); otherwise each
sample draws from its own seed, `sample_seed(seed, sample index)`, so a request samples the same
whichever other requests share its call, and its `n` samples differ. A request without a seed
samples from fresh random seeds (not reproducible, as with any endpoint).

`VLLMBackend` hands everything to `vllm.LLM` (chat via `llm.chat`, completion via `llm.generate`),
which schedules and batches itself; it needs `vllm` importable (a CUDA GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instillm.errors import ConfigError
from instillm.llm.backend import (
    BackendConfig,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMSample,
    OnResponse,
    Progress,
    SamplingParams,
)
from instillm.llm.generation import sample_seed

CHUNK_BATCHES = 4  # decode batches of rows per Generator call: how often answers are handed out


def model_fingerprint(model: str) -> str:
    """What the response cache keys on: the path plus the names, sizes and mtimes of its files.

    A model re-trained into the same directory must not be answered from the old model's cache;
    a copied directory (new mtimes) just misses the cache. A hub id is used as is.
    """
    path = Path(model)
    if not path.is_dir():
        return model
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    return f"{model}@{hashlib.sha256(repr(files).encode()).hexdigest()[:16]}"


def group_by_params(requests: Sequence[LLMRequest]) -> dict[SamplingParams, list[int]]:
    """Indices of the requests sharing sampling settings (ignoring `n`), in first-seen order."""
    groups: dict[SamplingParams, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(dataclasses.replace(r.params, n=1), []).append(i)
    return groups


class TransformersBackend:
    """A local causal LM (directory or hub id) behind the Backend interface."""

    def __init__(self, config: BackendConfig, generator: Any = None) -> None:
        self.config = config
        self.model = config.model
        self.cache_id = model_fingerprint(config.model)
        self.generator = generator if generator is not None else _load_generator(config.model, config.device)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (prompts are tokenized without special tokens, as the Generator does)."""
        return self.generator.tokenizer

    def generate(
        self, requests: Sequence[LLMRequest], progress: Progress | None = None, on_response: OnResponse | None = None
    ) -> list[LLMResponse]:
        """Answer every request, one batched Generator call per chunk of each params group."""
        requests = list(requests)
        prompts = [self._prompt_ids(i, r) for i, r in enumerate(requests)]
        results: list[LLMResponse | None] = [None] * len(requests)
        for params, indices in group_by_params(requests).items():
            for chunk in self._chunks(params, indices, prompts, requests):
                answers = self._generate_chunk(params, [requests[i] for i in chunk], [prompts[i] for i in chunk])
                for i, resp in zip(chunk, answers):
                    results[i] = resp
                    if on_response is not None:
                        on_response(i, resp)
                if progress is not None:
                    progress(len(chunk))
        return results  # type: ignore[return-value]  # every index belongs to one group

    def _prompt_ids(self, index: int, request: LLMRequest) -> list[int]:
        """Token ids of a request's prompt (chat rendered with the saved template); checks length."""
        text = self.generator.render_prompts([request.messages])[0] if request.kind == "chat" else request.prompt
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        limit = self.generator.max_length
        if not ids or len(ids) >= limit:
            raise LLMRequestError(
                f"transformers backend (model {self.model!r}): request {index}: prompt has {len(ids)} tokens; "
                f"it needs 1 to {limit - 1} (the model's maximum positions, {limit}, hold prompt and answer)"
            )
        return ids

    def _chunks(
        self, params: SamplingParams, indices: list[int], prompts: list[list[int]], requests: Sequence[LLMRequest]
    ) -> list[list[int]]:
        """Split a group (sorted by prompt length, so chunks batch well) into ~CHUNK_BATCHES batches of rows."""
        rows_per_chunk = self.config.batch_size * CHUNK_BATCHES
        greedy = params.temperature == 0
        chunks: list[list[int]] = [[]]
        rows = 0
        for i in sorted(indices, key=lambda i: len(prompts[i])):
            need = 1 if greedy else requests[i].params.n
            if chunks[-1] and rows + need > rows_per_chunk:
                chunks.append([])
                rows = 0
            chunks[-1].append(i)
            rows += need
        return [c for c in chunks if c]

    def _generate_chunk(
        self, params: SamplingParams, requests: list[LLMRequest], prompts: list[list[int]]
    ) -> list[LLMResponse]:
        """One Generator call for requests of one params group: a row per distinct sample."""
        from instillm.llm.generation import GenerateOptions

        opts = GenerateOptions.sampling(
            params.temperature,
            params.top_p,
            max_new_tokens=params.max_tokens,
            stop_strings=params.stop,
            batch_size=self.config.batch_size,
        )
        greedy = not opts.do_sample
        owners, rows, seeds = [], [], []  # owners[row] = (request position, sample index)
        for j, (r, ids) in enumerate(zip(requests, prompts)):
            for s in range(1 if greedy else r.params.n):
                owners.append((j, s))
                rows.append(ids)
                seeds.append(sample_seed(r.params.seed, s))
        outs = self.generator.generate_ids(rows, opts, seeds=None if greedy else seeds)
        samples: list[list[LLMSample]] = [[] for _ in requests]
        for (j, _), o in zip(owners, outs):
            samples[j].append(
                LLMSample(
                    text=o.text,
                    finish_reason=o.finish_reason,
                    prompt_tokens=o.prompt_tokens,
                    completion_tokens=o.completion_tokens,
                )
            )
        if greedy:  # n greedy samples are the same generation
            samples = [s * r.params.n for s, r in zip(samples, requests)]
        return [LLMResponse(samples=tuple(s), model=self.model) for s in samples]

    def close(self) -> None:
        """Drop the model (its memory is freed when nothing else refers to it)."""
        self.generator = None


def _load_generator(model: str, device: str = "auto") -> Any:
    """A Generator for a saved model with its saved chat template, on `device` ("auto": CUDA if any)."""
    from instillm.llm.generation import Generator
    from instillm.models.loading import load_local

    local = load_local(model, device=device)
    return Generator(local.model, local.tokenizer, local.renderer)


# --------------------------------------------------------------------------------------------
# vLLM


class VLLMBackend:
    """`vllm.LLM` in this process: chat through `llm.chat`, completions through `llm.generate`."""

    def __init__(self, config: BackendConfig) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ConfigError(
                f"backend.kind 'vllm': the vllm package cannot be imported ({e}); install it with "
                "`pip install vllm` (it needs a CUDA GPU), or use backend.kind 'transformers' for a local "
                "model, or 'openai' with a running `vllm serve`"
            ) from e
        self.config = config
        self.model = config.model
        self._vllm = vllm
        self.cache_id = model_fingerprint(config.model)
        self.llm = vllm.LLM(model=config.model)

    def _sampling(self, params: SamplingParams) -> Any:
        """vllm.SamplingParams for ours; greedy asks for one sample (repeated n times after)."""
        greedy = params.temperature == 0
        return self._vllm.SamplingParams(
            n=1 if greedy else params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )

    def generate(
        self, requests: Sequence[LLMRequest], progress: Progress | None = None, on_response: OnResponse | None = None
    ) -> list[LLMResponse]:
        """Answer every request (vLLM batches them); chat and completion requests in two calls."""
        requests = list(requests)
        results: list[LLMResponse | None] = [None] * len(requests)
        for kind in ("chat", "completion"):
            idx = [i for i, r in enumerate(requests) if r.kind == kind]
            if not idx:
                continue
            params = [self._sampling(requests[i].params) for i in idx]
            if kind == "chat":
                outs = self.llm.chat([requests[i].chat_messages() for i in idx], sampling_params=params, use_tqdm=False)
            else:
                outs = self.llm.generate([requests[i].prompt for i in idx], sampling_params=params, use_tqdm=False)
            for i, out in zip(idx, outs):
                results[i] = response = self._response(requests[i], out)
                if on_response is not None:
                    on_response(i, response)
            if progress is not None:
                progress(len(idx))
        return results  # type: ignore[return-value]

    def _response(self, request: LLMRequest, out: Any) -> LLMResponse:
        """An LLMResponse from a vllm RequestOutput."""
        prompt_tokens = len(out.prompt_token_ids or [])
        samples = [
            LLMSample(
                text=c.text,
                finish_reason="length" if c.finish_reason == "length" else "stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=len(c.token_ids),
            )
            for c in sorted(out.outputs, key=lambda c: c.index)
        ]
        if request.params.temperature == 0:
            samples = samples[:1] * request.params.n
        return LLMResponse(samples=tuple(samples), model=self.model)

    def close(self) -> None:
        """Drop the engine (vLLM frees GPU memory when it is collected)."""
        self.llm = None


__all__ = ["TransformersBackend", "VLLMBackend", "sample_seed", "group_by_params", "model_fingerprint", "CHUNK_BATCHES"]
