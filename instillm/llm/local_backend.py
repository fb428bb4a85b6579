"""In-process backends: a local Hugging Face model through instillm's Generator, or vLLM.

`TransformersBackend` renders chat requests with the model's saved chat template (the one
training used, `template: auto`), and generates completion prompts as given. Every request's
rows (one per sample) are decoded by continuous batching (`instillm.llm.continuous`): at most
`batch_size` rows at a time, whatever their settings, a waiting row joining as soon as one ends,
prompts sharing a prefix prefilled once; a request's answer reaches `on_response` as soon as its
last row ends. Temperature 0 is greedy (the `n` samples are one generation, repeated); otherwise each
sample draws from its own seed, `sample_seed(seed, sample index)`, so a request samples the same
whichever other requests share its call, and its `n` samples differ. A request without a seed
samples from fresh random seeds (not reproducible, as with any endpoint).

`VLLMBackend` hands everything to `vllm.LLM` (chat via `llm.chat`, completion via `llm.generate`),
which schedules and batches itself; it needs `vllm` importable (a CUDA GPU).
"""

from __future__ import annotations

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
        """Answer every request: all rows decoded by continuous batching, each answer handed out when done."""
        from instillm.llm.continuous import PrefixCache, decode_all

        requests = list(requests)
        prompts = [self._prompt_ids(i, r) for i, r in enumerate(requests)]
        results: list[LLMResponse | None] = [None] * len(requests)
        rows = [row for i, (r, ids) in enumerate(zip(requests, prompts)) for row in self._rows(i, r, ids)]
        left = [0] * len(requests)
        for row in rows:
            left[row.owner[0]] += 1
        samples: list[list[Any]] = [[None] * k for k in left]

        def on_done(row: Any) -> None:
            i, s = row.owner
            samples[i][s], left[i] = row.output, left[i] - 1
            if left[i] == 0:
                results[i] = self._response(requests[i], samples[i])
                if on_response is not None:
                    on_response(i, results[i])
                if progress is not None:
                    progress(1)

        decode_all(self.generator, rows, self.config.batch_size, PrefixCache(), on_done)
        return results  # type: ignore[return-value]  # every request's rows end

    def _rows(self, index: int, request: LLMRequest, ids: list[int]) -> list[Any]:
        """One row per distinct sample of a request (greedy: one), seeded `sample_seed(seed, sample)`."""
        from instillm.llm.continuous import DecodeRow
        from instillm.llm.generation import GenerateOptions

        p = request.params
        opts = GenerateOptions.sampling(p.temperature, p.top_p, max_new_tokens=p.max_tokens, stop_strings=p.stop)
        n = 1 if not opts.do_sample else p.n
        return [DecodeRow(s, ids, 0, seed=sample_seed(p.seed, s), options=opts, owner=(index, s)) for s in range(n)]

    def _response(self, request: LLMRequest, outputs: list[Any]) -> LLMResponse:
        """The response of a request from its rows' outputs (n greedy samples are one generation)."""
        samples = [
            LLMSample(
                text=o.text,
                finish_reason=o.finish_reason,
                prompt_tokens=o.prompt_tokens,
                completion_tokens=o.completion_tokens,
            )
            for o in outputs
        ]
        return LLMResponse(samples=tuple(samples * (request.params.n if len(outputs) == 1 else 1)), model=self.model)

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


__all__ = ["TransformersBackend", "VLLMBackend", "sample_seed", "model_fingerprint"]
