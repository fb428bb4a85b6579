"""lm-evaluation-harness on instillm models: an `LM` registered as "instillm", and `run_lm_eval`.

Needs the optional extra: `pip install 'instillm[lmeval]'` (lm-eval >= 0.4). The model is loaded
with `instillm.models.loading` (safetensors only, no remote code, a fast tokenizer).

- `loglikelihood`: lm-eval's own tokenization of (context, continuation) (`TemplateLM`: trailing
  spaces of the context move to the continuation, the pair is encoded whole and split at the
  context's length; an empty context is the BOS, else EOS, token), so the numbers compare with
  lm-eval's Hugging Face backend. Scoring is `instillm.llm.loglikelihood.score_requests`,
  the same code as the zero-shot option ranker. Inputs longer than `max_length` lose context
  tokens from the left.
- `loglikelihood_rolling`: lm-eval's disjoint rolling windows, each window's tokens scored once.
- `generate_until`: instillm's `Generator` (greedy unless `do_sample`), stopping at the `until`
  strings, EOS and end-of-turn tokens, at most `max_gen_toks` tokens; contexts are left-truncated
  to leave room for them, as lm-eval does.
- `apply_chat_template`: the template instillm trains with (`Renderer`), when lm-eval is asked
  to apply one (`apply_chat_template=True`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instillm.errors import ConfigError, InstillmError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # the optional extra is not installed
    raise InstillmError(
        "lm-evaluation-harness is not installed; install the extra: pip install 'instillm[lmeval]'"
    ) from e

from instillm.llm.loglikelihood import ScoreRequest, score_requests

DEFAULT_MAX_GEN_TOKS = 256


def _int_setting(name: str, value: Any) -> int:
    """An integer setting that lm-eval may pass as a string ("16")."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be an integer, got {value!r}") from None
    if out < 1:
        raise ConfigError(f"{name}: must be >= 1, got {value!r}")
    return out


@register_model("instillm")
class InstillmLM(TemplateLM):
    """An instillm-loaded causal LM for lm-eval (`--model instillm --model_args pretrained=DIR`)."""

    def __init__(
        self,
        pretrained: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        template: str = "auto",
        batch_size: int | str = 16,
        max_length: int | str | None = None,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        device: str | None = None,
        **ignored: Any,
    ) -> None:
        """Load `pretrained` (a directory or hub id), or wrap an already loaded `model` + `tokenizer`."""
        super().__init__()
        from instillm.models.loading import inference_renderer, load_local

        if model is None:
            if not pretrained:
                raise ConfigError("model_args: give pretrained=MODEL_DIR (or pass model and tokenizer)")
            local = load_local(pretrained, template, device)
            model, tokenizer = local.model, local.tokenizer
        elif tokenizer is None:
            raise ConfigError("InstillmLM: a model given without its tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.renderer = inference_renderer(tokenizer, template)
        self.batch_size = _int_setting("batch_size", batch_size)
        model_max = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = _int_setting("max_length", max_length) if max_length is not None else int(model_max)
        self.max_gen_toks = _int_setting("max_gen_toks", max_gen_toks)
        self._device = next(model.parameters()).device

    # -- tokenization (TemplateLM) ----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: BOS when the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "instillm")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`; special tokens only when asked (instillm renders BOS itself)."""
        return list(self.tokenizer(string, add_special_tokens=bool(add_special_tokens), verbose=False)["input_ids"])

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template instillm renders with (lm-eval records it in its results)."""
        return self.renderer.template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's chat history with the training template."""
        return self.tokenizer.apply_chat_template(
            chat_history,
            chat_template=self.renderer.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    # -- scoring ----------------------------------------------------------------------------
    def _score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> list:
        requests = [ScoreRequest.continuation(c, k) for c, k in pairs]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return score_requests(self.model, requests, batch_size=self.batch_size, max_length=max_length, pad_id=pad)

    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(summed log-prob, is greedy) per ((context, continuation), context ids, continuation ids)."""
        scores = self._score([(c, k) for _, c, k in requests], self.max_length)
        out = []
        for (key, _, _), s in zip(requests, scores):
            answer = (s.logprob, s.greedy)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole strings over disjoint rolling windows of at most max_length tokens."""
        from lm_eval import utils

        results = []
        for req in requests:
            (string,) = req.args
            windows = [
                utils.make_disjoint_window(w)
                for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1,
                    context_len=1,
                )
            ]  # -1: our scorer feeds the last token too
            total = sum(s.logprob for s in self._score(windows, self.max_length))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            results.append(total)
        return results

    # -- generation -------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) completions, cut at the first `until` string."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from instillm.llm.generation import GenerateOptions, Generator

        gen = Generator(self.model, self.tokenizer, self.renderer, max_length=self.max_length)
        out = []
        for req in requests:  # one at a time: each request may carry its own kwargs
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=None)
            n_new = min(int(kw.pop("max_gen_toks")), self.max_length - 1)
            ids = (self.tok_encode(context) or [self.prefix_token_id])[-(self.max_length - n_new) :]
            opts = GenerateOptions(
                max_new_tokens=n_new,
                stop_strings=tuple(until),
                batch_size=1,
                do_sample=bool(kw.get("do_sample")),
                temperature=float(kw.get("temperature") or 1.0),
            )
            text = gen.generate_ids([ids], opts)[0].text
            for stop in until:  # Generator cuts at stop strings already; this also covers decoding joins
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def run_lm_eval(
    model_path: str | Path | InstillmLM,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    template: str = "auto",
    apply_chat_template: bool = False,
    log_samples: bool = False,
    builtin_tasks: bool = True,
) -> dict[str, Any]:
    """Run lm-eval tasks (built-in, or YAML tasks under `include_path`) on an instillm model; lm-eval's results dict.

    `builtin_tasks=False` indexes only `include_path` (lm-eval's own task index takes ~10 s to build).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = (
        model_path
        if isinstance(model_path, InstillmLM)
        else InstillmLM(str(model_path), template=template, batch_size=batch_size)
    )
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=builtin_tasks)
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        apply_chat_template=apply_chat_template,
        log_samples=log_samples,
        bootstrap_iters=0,
    )
    if results is None:  # lm-eval returns None on ranks other than 0
        raise InstillmError("lm-eval returned no results (not the main process)")
    return dict(results)
