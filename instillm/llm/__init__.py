"""Talking to language models: request/response types, backends (any OpenAI-compatible endpoint,
a local transformers model, vLLM), the on-disk response cache, batched generation and
log-likelihood scoring of local models.

Everything above this package (curation's quality scores, the synth pipelines, evaluation's judge
and MT-Bench, serve) reaches a model only through these modules.
"""

from instillm.llm.backend import (
    Backend,
    BackendConfig,
    LLMError,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMResponseError,
    LLMSample,
    LLMUnavailableError,
    SamplingParams,
    chat,
    completion,
    make_backend,
    reply_text,
)

__all__ = [
    "Backend",
    "BackendConfig",
    "LLMError",
    "LLMRequest",
    "LLMRequestError",
    "LLMResponse",
    "LLMResponseError",
    "LLMSample",
    "LLMUnavailableError",
    "SamplingParams",
    "chat",
    "completion",
    "make_backend",
    "reply_text",
]
