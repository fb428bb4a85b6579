"""Quality scores for instruction data and selection by them: IFD from a local model, LLM ratings.

IFD (Instruction-Following Difficulty; Li et al. 2023, "From Quantity to Quality", Cherry LLM)
of an example with a local causal LM:

    conditioned loss = mean cross-entropy (nats/token) of the response given its instruction
    direct loss      = mean cross-entropy of the same response tokens with no instruction
    IFD              = conditioned loss / direct loss

Which tokens count: the response tokens exactly as training masks them (`Renderer`: the assistant
content *and* its end-of-turn/EOS token), so IFD measures the loss that fine-tuning optimises.
The reference code (`cherry_seletion/data_analysis.py`, `data_by_IFD.py`) counts the response
content tokens only, without EOS, and uses `### Response:` as the direct context; here the
end-of-turn token is included and the direct context is the chat template's own prompt for
one empty user turn (chatml: `<|im_start|>user\\n<|im_end|>\\n<|im_start|>assistant\\n`,
alpaca: its preamble, an empty instruction and `### Response:`). The direct sequence is that
prompt's tokens followed by the very token ids scored in the conditioned render, so both losses
average over identical targets; if the prompt has no token at all, BOS (else EOS) stands in so
the first response token is predicted from something. Like the reference, IFD is the ratio of
mean token losses, not of perplexities.

Multi-turn conversations: the last assistant turn is scored; the conditioned context is every
turn before it (system included), the direct context drops them all. Earlier assistant turns
get no loss. Too long (`max_length` tokens): with `truncation="truncate-prompt"` the oldest
prompt tokens are cut (counted in `ScoreSummary.n_truncated`); a response that does not fit
alone, or any too-long row under `truncation="drop"`, is rejected as `too_long`.

IFD > 1 means the instruction does not help predict the response; the paper drops those
(`max_ifd`, default 1.0: a row is rejected when IFD > max_ifd) and then keeps the rows of
*highest* IFD among the rest (`top_fraction`: floor(fraction x candidates), as the reference's
`int(len * sample_rate)`, or `top_k`); ties go to the earlier line.

LLM rating (AlpaGasus; Chen et al. 2023): the judge sees AlpaGasus's accuracy-rating prompt
(`RATING_SYSTEM`, `RATING_PROMPT`; its scale is 0 to 5) through any `Backend`, greedy. The
rating is read by `parse_rating` (rule in its docstring); an answer it cannot read keeps
rating None and is counted; with `min_rating` such a row is rejected as `rating_unparseable`
(AlpaGasus kept rows rated >= 4.5). Rows already rejected by IFD are not sent to the judge.

Reject reasons, first failing check wins: too_long, no_trained_tokens, ifd_undefined (direct
loss 0), ifd_above_max, rating_unparseable, rating_below_min, not_in_top. Kept rows carry
meta["ifd"], meta["ifd_conditioned_loss"], meta["ifd_direct_loss"] (with an IFD model) and
meta["rating"], meta["rating_raw"] (with a judge).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from instillm.config import Config, check_choice, check_min, check_min_int, check_range
from instillm.curate.common import CurationSummary, curate_file, iter_canonical
from instillm.data.importer import refuse_output_over_inputs
from instillm.data.render import IGNORE_INDEX, RenderConfig, Rendered, Renderer
from instillm.data.schema import Example
from instillm.errors import DataError, RenderError, RowError
from instillm.llm.backend import Backend, BackendConfig, LLMRequest, chat, make_backend
from instillm.llm.loglikelihood import ScoreRequest, score_requests

SCORE_CHUNK = 256  # rows scored per pass: bounds memory; one Backend.generate call per chunk
IFD_TRUNCATION = ("truncate-prompt", "drop")
RATING_SCALE = (0.0, 5.0)  # AlpaGasus asks for "a score on a scale of 0 to 5"

# AlpaGasus's rating prompt (accuracy dimension), as the paper prints it.
RATING_SYSTEM = (
    "We would like to request your feedback on the performance of AI assistant in response "
    "to the instruction and the given input displayed following."
)
RATING_PROMPT = (
    "###Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{response}\n\n"
    "Please rate according to the accuracy of the response to the instruction and the input. Each "
    "assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of "
    "the accuracy. Please first output a single line containing value indicating the scores. In the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias. \n\n"
)


# --------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class IFDConfig(Config):
    """The IFD model (path or hub id) and how examples are rendered for it (as in training).

    `batch_size`: sequences per forward pass; `device`: "auto" (cuda when available), "cpu", "cuda:N".
    """

    path_prefix = "ifd"
    model: str
    template: str = "auto"
    max_length: int = 2048
    truncation: str = "truncate-prompt"
    batch_size: int = 8
    device: str = "auto"

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = [] if v["model"] else ["model: required (a model directory or hub id)"]
        check_choice(problems, "truncation", v["truncation"], IFD_TRUNCATION)
        check_min_int(problems, "batch_size", v["batch_size"])
        check_min_int(problems, "max_length", v["max_length"], minimum=2)
        return problems

    @property
    def render_config(self) -> RenderConfig:
        """The RenderConfig these settings mean."""
        return RenderConfig(self.template, self.max_length, self.truncation)


@dataclass(frozen=True)
class RatingConfig(Config):
    """The judge LLM and the tokens it may write (AlpaGasus: a score line, then an explanation)."""

    path_prefix = "rating"
    backend: BackendConfig
    max_tokens: int = 256

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "max_tokens", v["max_tokens"])
        return problems


@dataclass(frozen=True)
class ScoreConfig(Config):
    """Which scores to compute and how rows are selected by them (see the module docstring)."""

    ifd: IFDConfig | None = None
    rating: RatingConfig | None = None
    max_ifd: float | None = 1.0
    min_rating: float | None = None
    top_fraction: float | None = None
    top_k: int | None = None

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems = _needs_problems(v)
        check_range(problems, "min_rating", v["min_rating"], *RATING_SCALE)
        check_min(problems, "max_ifd", v["max_ifd"], 0, strict=True)
        check_range(problems, "top_fraction", v["top_fraction"], 0, 1, "(]")
        if v["top_k"] is not None:
            check_min_int(problems, "top_k", v["top_k"])
        return problems


def _needs_problems(v: Mapping[str, Any]) -> list[str]:
    """What a setting needs and is not given (a model, a judge, one selection rule)."""
    problems = []
    if v["ifd"] is None and v["rating"] is None:
        problems.append("nothing to score: give an IFD model (ifd) and/or a judge (rating)")
    if v["min_rating"] is not None and v["rating"] is None:
        problems.append("min_rating: needs a judge (rating)")
    if (v["top_fraction"] is not None or v["top_k"] is not None) and v["ifd"] is None:
        problems.append("top_fraction/top_k: select by IFD and need an IFD model (ifd)")
    if v["top_fraction"] is not None and v["top_k"] is not None:
        problems.append("top_fraction and top_k: give one, not both")
    return problems


# --------------------------------------------------------------------------------------------
# IFD


@dataclass(frozen=True)
class IFDScore:
    """Mean cross-entropy (nats/token) of one response with and without its instruction."""

    conditioned_loss: float
    direct_loss: float
    n_tokens: int
    truncated: bool = False

    @property
    def ifd(self) -> float | None:
        """conditioned_loss / direct_loss; None when the direct loss is 0 (undefined)."""
        return self.conditioned_loss / self.direct_loss if self.direct_loss > 0 else None


Tokens = tuple[list[int], list[int]]  # (input_ids, labels); labels -100 where not scored


def last_turn_only(example: Example) -> Example:
    """The example with loss on its last assistant turn only (earlier ones become context)."""
    last = len(example.messages) - 1
    msgs = tuple(replace(m, train=(i == last)) if m.role == "assistant" else m for i, m in enumerate(example.messages))
    return replace(example, messages=msgs)


class IFDScorer:
    """Scores examples with one local model: IFD of the last assistant turn, batched."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: IFDConfig) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.renderer = Renderer(tokenizer, config.render_config)
        self.direct_prefix = self._direct_prefix()

    @classmethod
    def load(cls, config: IFDConfig) -> IFDScorer:
        """Load `config.model` and its tokenizer onto `config.device`."""
        from instillm.models.loading import load_local

        local = load_local(config.model, config.template, config.device)
        return cls(local.model, local.tokenizer, config)

    def _direct_prefix(self) -> list[int]:
        """Token ids of the template's prompt for one empty user turn: the no-instruction context."""
        text = self.renderer.prompt_text([{"role": "user", "content": ""}])
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if ids:
            return ids
        tok = self.tokenizer
        return [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]

    def sequences(self, example: Example) -> tuple[Tokens, Tokens, bool]:
        """(conditioned, direct) (input_ids, labels) of the last turn, and whether the prompt was cut.

        Raises RenderError (too_long, no_trained_tokens).
        """
        r: Rendered = self.renderer.render(last_turn_only(example))
        targets = [i for i, lab in zip(r.input_ids, r.labels) if lab != IGNORE_INDEX]
        prefix = self.direct_prefix
        direct = (prefix + targets, [IGNORE_INDEX] * len(prefix) + targets)
        return (r.input_ids, r.labels), direct, r.truncated

    @torch.inference_mode()
    def score(self, examples: Sequence[Example]) -> list[IFDScore | RowError]:
        """An IFDScore per example, or the RowError that kept it from being scored."""
        out: list[IFDScore | RowError | None] = [None] * len(examples)
        rendered: list[tuple[int, Tokens, Tokens, bool]] = []  # (index, conditioned, direct, truncated)
        for i, ex in enumerate(examples):
            try:
                rendered.append((i, *self.sequences(ex)))
            except RenderError as e:
                out[i] = RowError(e.reason, e.detail)
        c_losses = self._batched([c for _, c, _, _ in rendered])
        d_losses = self._batched([d for _, _, d, _ in rendered])
        for (i, _, _, t), (cl, n), (dl, _) in zip(rendered, c_losses, d_losses):
            out[i] = IFDScore(cl, dl, n, t)
        return out  # type: ignore[return-value]  # every slot is filled

    def _batched(self, seqs: list[Tokens]) -> list[tuple[float, int]]:
        """(mean cross-entropy in nats, token count) of the labelled tokens of each sequence."""
        requests = [ScoreRequest(tuple(ids), tuple(labels)) for ids, labels in seqs]
        scores = score_requests(self.model, requests, self.config.batch_size, pad_id=self.tokenizer.pad_token_id)
        return [(-s.logprob / s.n_tokens, s.n_tokens) for s in scores]


# --------------------------------------------------------------------------------------------
# LLM rating

_NUMBER = r"-?\d+(?:\.\d+)?"
_SCORE_LINE = re.compile(
    rf"^[\s*#]*(?:(?:score|rating)\s*[:=]?\s*)?({_NUMBER})\s*(?:/\s*5(?:\.0)?|out of 5)?[\s*.]*$", re.I
)
_LABELLED = re.compile(rf"\b(?:score|rating)\s*(?:[:=]|is|of)?\s*[*\s]*({_NUMBER})", re.I)
_ANY_NUMBER = re.compile(rf"(?<![\w.])({_NUMBER})(?![\w])")


def parse_rating(text: str) -> float | None:
    """The rating in a judge's answer, or None when there is none in [0, 5].

    Rule, first match wins: (1) the first non-empty line is just a number (AlpaGasus asks for
    that line), optionally labelled "Score:"/"Rating:", bolded, or followed by "/5" / "out of 5";
    (2) the first "score: X" / "score is X" / "rating = X" ... anywhere (case-insensitive); (3) the
    first number anywhere. The number found must lie in [0, 5] (decimals allowed), otherwise
    the answer is unparseable: a later number is never tried instead.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    match = _SCORE_LINE.match(lines[0]) if lines else None
    match = match or _LABELLED.search(text) or _ANY_NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if RATING_SCALE[0] <= value <= RATING_SCALE[1] else None


def rating_fields(example: Example) -> tuple[str, str, str]:
    """(instruction, input, response) as the AlpaGasus prompt shows them.

    An imported Alpaca row (meta instruction/input matching its user turn) keeps its two parts;
    another single-turn row is all instruction; a longer conversation (or one with a system
    turn) becomes a "Role: content" transcript of every turn before the last response.
    """
    prior, response = example.messages[:-1], example.messages[-1].content
    inst, inp = example.meta.get("instruction"), example.meta.get("input")
    if len(prior) == 1:
        if isinstance(inst, str) and isinstance(inp, str) and prior[0].content == (f"{inst}\n\n{inp}" if inp else inst):
            return inst, inp, response
        return prior[0].content, "", response
    return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in prior), "", response


def rating_request(example: Example, max_tokens: int = 256) -> LLMRequest:
    """The greedy AlpaGasus rating request for one example."""
    instruction, inp, response = rating_fields(example)
    user = RATING_PROMPT.format(instruction=instruction, input=inp, response=response)
    return chat(
        [{"role": "system", "content": RATING_SYSTEM}, {"role": "user", "content": user}],
        max_tokens=max_tokens,
        temperature=0.0,
    )


def rate(
    backend: Backend, examples: Sequence[Example], max_tokens: int = 256, progress: Callable[[int], None] | None = None
) -> list[tuple[float | None, str]]:
    """(rating or None, the judge's raw answer) per example, in order."""
    if not examples:
        return []
    responses = backend.generate([rating_request(ex, max_tokens) for ex in examples], progress)
    return [(parse_rating(r.text), r.text) for r in responses]


# --------------------------------------------------------------------------------------------
# selection


@dataclass
class RowScores:
    """Everything scored for one input row (`line`: 1-based line in the input file)."""

    line: int
    ifd: IFDScore | None = None
    error: RowError | None = None  # IFD could not be computed
    rated: bool = False
    rating: float | None = None
    rating_raw: str | None = None

    def meta(self) -> dict[str, Any]:
        """The scores a kept row carries in its meta."""
        out: dict[str, Any] = {}
        if self.ifd is not None:
            out.update(
                ifd=self.ifd.ifd, ifd_conditioned_loss=self.ifd.conditioned_loss, ifd_direct_loss=self.ifd.direct_loss
            )
        if self.rated:
            out.update(rating=self.rating, rating_raw=self.rating_raw)
        return out


def threshold_error(row: RowScores, config: ScoreConfig) -> RowError | None:
    """The first failed check of one row before top selection (None: it stays a candidate)."""
    if row.error is not None:
        return row.error
    if row.ifd is not None:
        ifd = row.ifd.ifd
        if ifd is None:
            return RowError("ifd_undefined", f"direct loss is 0 (conditioned loss {row.ifd.conditioned_loss:.6g})")
        if config.max_ifd is not None and ifd > config.max_ifd:
            return RowError("ifd_above_max", f"ifd {ifd:.4f} > max_ifd {config.max_ifd}")
    if config.min_rating is not None and row.rated:
        if row.rating is None:
            return RowError("rating_unparseable", f"no rating in [0, 5] in the judge's answer {row.rating_raw!r:.200}")
        if row.rating < config.min_rating:
            return RowError("rating_below_min", f"rating {row.rating:g} < min_rating {config.min_rating:g}")
    return None


def select(rows: Sequence[RowScores], config: ScoreConfig) -> dict[int, RowError | None]:
    """Decision per line: None keeps the row, a RowError names why it goes to the rejects."""
    decisions = {row.line: threshold_error(row, config) for row in rows}
    candidates = [row for row in rows if decisions[row.line] is None]
    if config.top_k is not None:
        k = config.top_k
    elif config.top_fraction is not None:
        k = math.floor(config.top_fraction * len(candidates))
    else:
        return decisions
    ranked = sorted(candidates, key=lambda r: (-_candidate_ifd(r), r.line))
    for rank, row in enumerate(ranked[k:], start=k + 1):
        decisions[row.line] = RowError(
            "not_in_top", f"ifd {_candidate_ifd(row):.4f} ranks {rank} of {len(ranked)}; the top {k} are kept"
        )
    return decisions


def _candidate_ifd(row: RowScores) -> float:
    """The IFD of a top-selection candidate: selecting by IFD needs an IFD model, and threshold_error
    already rejected the rows whose IFD is missing or undefined."""
    ifd = row.ifd.ifd if row.ifd is not None else None
    if ifd is None:
        raise AssertionError(f"line {row.line}: a top-selection candidate has no IFD score")
    return ifd


# --------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class ScoreSummary:
    """What `score_file` did: the curation counts plus how many rows were scored, cut or unreadable."""

    curation: CurationSummary
    n_ifd_scored: int = 0
    n_truncated: int = 0
    n_rated: int = 0
    n_rating_unparseable: int = 0


@dataclass
class _Scoring:
    """The scorers of one run and the scores gathered so far."""

    config: ScoreConfig
    scorer: IFDScorer | None
    backend: Backend | None
    rows: list[RowScores] = field(default_factory=list)

    def add_chunk(self, chunk: list[tuple[int, Example]], progress: Callable[[int], None] | None) -> None:
        """Score one chunk of (line, example): IFD first, then the judge for rows IFD did not reject."""
        rows = [RowScores(line) for line, _ in chunk]
        if self.scorer is not None:
            for row, res in zip(rows, self.scorer.score([ex for _, ex in chunk])):
                row.error, row.ifd = (res, None) if isinstance(res, RowError) else (None, res)
        if self.backend is not None and self.config.rating is not None:
            todo = [(row, ex) for row, (_, ex) in zip(rows, chunk) if threshold_error(row, self.config) is None]
            judged = rate(self.backend, [ex for _, ex in todo], self.config.rating.max_tokens)
            for (row, _), (rating, raw) in zip(todo, judged):
                row.rated, row.rating, row.rating_raw = True, rating, raw
        self.rows += rows
        if progress:
            progress(len(chunk))


def _chunks(path: str | Path) -> Iterator[list[tuple[int, Example]]]:
    chunk: list[tuple[int, Example]] = []
    for row, ex in iter_canonical(path):
        chunk.append((row.line, ex))
        if len(chunk) == SCORE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_file(
    inp: str | Path,
    out: str | Path,
    config: ScoreConfig,
    *,
    scorer: IFDScorer | None = None,
    backend: Backend | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every row of canonical JSONL `inp`, write kept rows (scores in meta) to `out`, rejects beside it.

    `scorer` / `backend` default to ones built from `config` (a backend built here is closed
    here). `progress(n)` is told how many more rows were scored.
    """
    output = Path(out)
    refuse_output_over_inputs([inp], output)
    if config.ifd is not None and scorer is None:
        scorer = IFDScorer.load(config.ifd)
    own_backend = config.rating is not None and backend is None
    if own_backend:
        backend = make_backend(config.rating.backend)  # type: ignore[union-attr]
    state = _Scoring(config, scorer if config.ifd is not None else None, backend if config.rating else None)
    try:
        for chunk in _chunks(inp):
            state.add_chunk(chunk, progress)
    finally:
        if own_backend and backend is not None:
            backend.close()
    return _write(inp, output, state)


def _write(inp: str | Path, output: Path, state: _Scoring) -> ScoreSummary:
    """Second pass: kept rows get their scores in meta, the rest go to the rejects file."""
    decisions = select(state.rows, state.config)
    by_line = {row.line: row for row in state.rows}

    def step(ex: Example, line: int) -> RowError | None:
        if line not in decisions:
            raise DataError(f"{inp}:{line}: the file changed while it was being scored; run again")
        if decisions[line] is None:
            ex.meta.update(by_line[line].meta())  # curate_file writes this same Example object
        return decisions[line]

    curation = curate_file(inp, output, [step])
    rows = state.rows
    return ScoreSummary(
        curation=curation,
        n_ifd_scored=sum(r.ifd is not None for r in rows),
        n_truncated=sum(r.ifd is not None and r.ifd.truncated for r in rows),
        n_rated=sum(r.rated for r in rows),
        n_rating_unparseable=sum(r.rated and r.rating is None for r in rows),
    )
