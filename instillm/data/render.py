"""Render canonical examples with a chat template into input ids and response-only labels.

How masks are found: the conversation is rendered turn by turn. For assistant turn i,
`P_i` = render(turns before i, add_generation_prompt=True) and `S_i` = render(turns up to i).
`S_i` must start with `P_i` and the full render must start with `S_i` (otherwise the template
is not prefix-consistent and training would see a different prompt than inference: a
TemplateError). The trained characters of turn i are `S_i[len(P_i):]` without trailing
whitespace, i.e. the assistant content plus the template's end-of-turn token. The full text is
tokenized once; a token is trained when its character span overlaps a trained span.

Labels are -100 everywhere else. The model shifts labels itself (labels[t] is predicted from
tokens < t), so `labels` is aligned with `input_ids`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instillm.config import Config, check_choice, check_min_int
from instillm.data.schema import Example, Message
from instillm.data.templates import END_OF_TURN_STRINGS, resolve_template
from instillm.errors import DataError, ModelError, RenderError, TemplateError

IGNORE_INDEX = -100
TRUNCATION_POLICIES = ("drop", "truncate-prompt", "error")


@dataclass(frozen=True)
class RenderConfig(Config):
    """What the user asked for: template name, max_length in tokens, truncation policy."""

    template: str = "auto"
    max_length: int = 2048
    truncation: str = "drop"

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_choice(problems, "truncation", v["truncation"], TRUNCATION_POLICIES)
        check_min_int(problems, "max_length", v["max_length"], minimum=2)
        return problems


@dataclass(frozen=True)
class Rendered:
    """One tokenized example: input_ids and labels (same length), plus bookkeeping."""

    input_ids: list[int]
    labels: list[int]
    example_id: str = ""
    task: str = ""
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        """Number of tokens that receive loss."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class RenderStats:
    """Counts from rendering a dataset: kept, truncated, dropped by reason."""

    n_examples: int = 0
    n_kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def template_messages(example: Example) -> list[dict[str, Any]]:
    """Messages as the template sees them; the first user turn carries `input` for alpaca."""
    msgs: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in example.messages]
    instruction, inp = example.meta.get("instruction"), example.meta.get("input")
    if isinstance(instruction, str) and isinstance(inp, str) and inp:
        first_user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        if msgs[first_user]["content"] == f"{instruction}\n\n{inp}":
            msgs[first_user] = {
                "role": "user",
                "content": f"{instruction}\n\n{inp}",
                "instruction": instruction,
                "input": inp,
            }
    return msgs


def _for_template(template_name: str, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alpaca shows instruction and input apart; every other template sees plain content."""
    if template_name != "alpaca":
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    return [{"role": m["role"], "content": m["instruction"], "input": m["input"]} if "input" in m else m for m in msgs]


class Renderer:
    """Turns Examples into (input_ids, labels) with one chat template, used for train and eval."""

    def __init__(self, tokenizer: Any, config: RenderConfig | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError("rendering needs a fast tokenizer (character offsets); this one is slow")
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has no eos_token; set one so responses can end")
        self.tokenizer = tokenizer
        self.config = config or RenderConfig()
        self.template_name, self.template = resolve_template(
            self.config.template, getattr(tokenizer, "chat_template", None)
        )
        self.end_token_ids = end_token_ids(tokenizer)
        self.bos_token_id = tokenizer.bos_token_id

    # -- text -------------------------------------------------------------------------
    def _text(self, msgs: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            _for_template(self.template_name, msgs),
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def prompt_text(self, messages: Iterable[Message | dict[str, Any]]) -> str:
        """The inference prompt for a conversation (ending where the assistant answers)."""
        msgs = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
        return self._text(msgs, add_generation_prompt=True)

    def example_prompt_text(self, example: Example) -> str:
        """The inference prompt for an example: everything before its final assistant turn."""
        return self._text(template_messages(example)[:-1], add_generation_prompt=True)

    def render_text(self, example: Example) -> tuple[str, list[tuple[int, int]]]:
        """Full text and the character spans [start, end) that receive loss."""
        msgs = template_messages(example)
        full = self._text(msgs, add_generation_prompt=False)
        spans = []
        for i, m in enumerate(example.messages):
            if m.role != "assistant":
                continue
            prefix = self._text(msgs[:i], add_generation_prompt=True)
            upto = full if i == len(msgs) - 1 else self._text(msgs[: i + 1], add_generation_prompt=False)
            if not upto.startswith(prefix) or not full.startswith(upto):
                raise TemplateError(
                    f"template {self.template_name!r} is not prefix-consistent at turn {i} of example "
                    f"{example.id!r}: the prompt rendered for generation differs from the training "
                    "render; use template: chatml (or another built-in) for this model"
                )
            piece = upto[len(prefix) :].rstrip()
            if m.content.strip() not in piece:
                raise TemplateError(
                    f"template {self.template_name!r} does not render assistant turn {i} of example "
                    f"{example.id!r} verbatim; choose another template"
                )
            if m.trained:
                spans.append((len(prefix), len(prefix) + len(piece)))
        return full, spans

    # -- tokens -------------------------------------------------------------------------
    def render(self, example: Example) -> Rendered:
        """Input ids and labels for one example; raises RenderError (too_long, no_trained_tokens)."""
        text, spans = self.render_text(example)
        ids, token_spans = self._tokenize(text, spans)
        self._check(example, ids, token_spans)
        labels = [IGNORE_INDEX] * len(ids)
        for a, b in token_spans:
            labels[a:b] = ids[a:b]
        return self._fit(example, ids, labels, token_spans)

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` and the token ranges of `spans`.

        The whole text is tokenized at once unless a token straddles a span boundary (e.g. a
        response starting with a newline merging with the template's newline). Then each piece
        is tokenized on its own, which is what inference does: the prompt is tokenized alone
        and the model generates from its last token.
        """
        # verbose=False: max_length is enforced below, with counts, not by a tokenizer warning.
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        cuts = {c for span in spans for c in span}
        if not any(a < c < b for a, b in offsets for c in cuts):
            return list(enc["input_ids"]), _token_spans(offsets, spans)
        bounds = sorted(cuts | {0, len(text)})
        ids: list[int] = []
        starts: dict[int, int] = {}
        for a, b in zip(bounds, bounds[1:]):
            starts[a] = len(ids)
            ids += self.tokenizer(text[a:b], add_special_tokens=False, verbose=False)["input_ids"]
        starts[len(text)] = len(ids)
        return ids, [(starts[a], starts[b]) for a, b in spans]

    def _check(self, example: Example, ids: list[int], token_spans: list[tuple[int, int]]) -> None:
        if len(ids) >= 2 and self.bos_token_id is not None and ids[0] == ids[1] == self.bos_token_id:
            raise TemplateError(
                f"double BOS in example {example.id!r}: the template adds a BOS token and the text "
                "starts with one too; remove the BOS from the template or the data"
            )
        for a, b in token_spans:
            if b <= a:
                raise RenderError("no_trained_tokens", f"an assistant turn of {example.id!r} has no tokens")
            if ids[b - 1] not in self.end_token_ids:
                raise TemplateError(
                    f"template {self.template_name!r} does not end assistant turns with an EOS/end-of-turn "
                    f"token (last trained token {self.tokenizer.convert_ids_to_tokens(ids[b - 1])!r} in "
                    f"example {example.id!r}): the model would never learn to stop; use template: chatml"
                )

    def _fit(self, example: Example, ids: list[int], labels: list[int], token_spans: list[tuple[int, int]]) -> Rendered:
        """Apply max_length and the truncation policy."""
        n, limit = len(ids), self.config.max_length
        if n <= limit:
            return Rendered(ids, labels, example_id=example.id, task=example.task)
        if self.config.truncation != "truncate-prompt":
            raise RenderError("too_long", f"{n} tokens > max_length {limit}")
        keep_bos = self.bos_token_id is not None and ids[0] == self.bos_token_id
        start = n - limit + (1 if keep_bos else 0)
        # A response whose beginning was cut off is masked: it has lost its prompt.
        for a, b in token_spans:
            if a < start < b:
                labels[start:b] = [IGNORE_INDEX] * (b - start)
        head = ids[:1] if keep_bos else []
        new_ids, new_labels = head + ids[start:], ([IGNORE_INDEX] if keep_bos else []) + labels[start:]
        if all(x == IGNORE_INDEX for x in new_labels):
            raise RenderError("too_long", f"{n} tokens > max_length {limit} and the response alone does not fit")
        return Rendered(new_ids, new_labels, example_id=example.id, task=example.task, truncated=True)

    def render_many(self, examples: Iterable[Example], progress: Any = None) -> tuple[list[Rendered], RenderStats]:
        """Render a dataset, counting truncated and dropped examples; `error` policy raises."""
        out, stats = [], RenderStats()
        for ex in examples:
            stats.n_examples += 1
            try:
                r = self.render(ex)
            except RenderError as e:
                if e.reason == "too_long" and self.config.truncation == "error":
                    raise DataError(
                        f"example {ex.id!r} ({ex.source}) is too long: {e.detail}; raise max_length "
                        "or set truncation: drop | truncate-prompt"
                    ) from e
                stats.dropped[e.reason] += 1
            else:
                stats.n_kept += 1
                stats.truncated += r.truncated
                out.append(r)
            if progress is not None:
                progress()
        return out, stats


def _token_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Map character spans to token index ranges [a, b) of tokens overlapping each span."""
    ends = [e for _, e in offsets]
    out = []
    for s, e in spans:
        a = bisect.bisect_right(ends, s)  # first token ending after s
        b = a
        while b < len(offsets) and offsets[b][0] < e:
            b += 1
        out.append((a, b))
    return out


def end_token_ids(tokenizer: Any) -> set[int]:
    """Token ids that may end an assistant turn: EOS plus known end-of-turn specials in the vocab."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    for s in END_OF_TURN_STRINGS:
        if s in vocab:
            ids.add(vocab[s])
    return ids


def save_template(tokenizer: Any, renderer: Renderer) -> None:
    """Store the template used for training in the tokenizer, so inference renders the same."""
    tokenizer.chat_template = renderer.template
