"""One converter per public dataset format, mapping a raw record to canonical Examples.

A converter takes a parsed record and its `RowContext` and returns the Examples it yields,
or raises RowError with a short reason (missing_field, wrong_type, empty_response,
unknown_role, non_alternating_turns, ...). `detect_format` guesses the format from keys;
`convert_rows` runs a converter over a stream of RawRows and groups the rows of flat
OpenAssistant exports into trees. OpenAssistant trees are walked iteratively and at most
MAX_TREE_DEPTH messages deep (`too_deep`); a message met twice on a walk is a `cycle`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from instillm.data.io import RawRow, source_name, source_stem
from instillm.data.schema import Example, Message, from_prompt_completion, parse_messages
from instillm.errors import RowError

ENDOFTEXT = "<|endoftext|>"
CANONICAL_KEYS = frozenset({"id", "source", "task", "category", "messages", "meta"})
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "system": "system",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
MAX_TREE_DEPTH = 1_000  # messages on one root-to-leaf path of an OpenAssistant tree


@dataclass(frozen=True)
class RowContext:
    """Where a record came from: names the Examples it yields and carries import options.

    `id_stem` is what ids start with when it differs from `stem` (the importer sets it when two
    inputs share a stem, e.g. `a/data.jsonl` and `b/data.jsonl`).
    """

    file: str
    line: int
    source: str
    stem: str
    all_paths: bool = False
    id_stem: str = ""

    @classmethod
    def for_file(cls, file: str, all_paths: bool = False, id_stem: str = "") -> RowContext:
        """A context for rows of `file` (set `line` per row with `at`)."""
        return cls(
            file=file, line=0, source=source_name(file), stem=source_stem(file), all_paths=all_paths, id_stem=id_stem
        )

    def at(self, line: int) -> RowContext:
        """The same context at another line (a plain constructor call: dataclasses.replace is slow per row)."""
        return RowContext(self.file, line, self.source, self.stem, self.all_paths, self.id_stem)

    def id(self, k: int | None = None) -> str:
        """`<stem>-<line>`, plus `-<k>` for the k-th example of a row that can yield several."""
        stem = self.id_stem or self.stem
        return f"{stem}-{self.line}" if k is None else f"{stem}-{self.line}-{k}"

    def fields(
        self, k: int | None = None, task: str = "", category: str = "", meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for Example: id, source, task (default: the file stem), category, meta."""
        return {
            "id": self.id(k),
            "source": self.source,
            "task": task or self.stem,
            "category": category,
            "meta": meta or {},
        }

    def example(self, messages: Iterable[Message], k: int | None = None, **kw: Any) -> Example:
        """A validated Example named after this row."""
        return Example(messages=tuple(messages), **self.fields(k, **kw))


Converter = Callable[[dict, RowContext], "list[Example]"]


@dataclass
class Unit:
    """The rows converted together (one, or a flat OpenAssistant tree) and their outcome."""

    rows: list[RawRow]
    examples: list[Example] = field(default_factory=list)
    error: RowError | None = None


# ---------------------------------------------------------------- field helpers


def _str(rec: dict, key: str, required: bool = True) -> str:
    """A string field; missing/null is missing_field when required, else ''."""
    value = rec.get(key)
    if value is None:
        if required:
            raise RowError("missing_field", f"field {key!r} is {'null' if key in rec else 'missing'}")
        return ""
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _list(rec: dict, key: str) -> list:
    """A required list field."""
    value = rec.get(key)
    if value is None:
        raise RowError("missing_field", f"field {key!r} is {'null' if key in rec else 'missing'}")
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field {key!r} must be a list, got {type(value).__name__}")
    return value


def _obj(value: Any, where: str) -> dict:
    """A nested object, or wrong_type naming where it was expected."""
    if not isinstance(value, dict):
        raise RowError("wrong_type", f"{where} must be an object, got {type(value).__name__}")
    return value


def alpaca_user_turn(instruction: str, inp: str) -> tuple[str, dict[str, Any]]:
    """Alpaca-style user content, and the meta the alpaca template needs when there is an input."""
    if not inp.strip():
        return instruction, {}
    return f"{instruction}\n\n{inp}", {"instruction": instruction, "input": inp}


def _first_valid(makers: list[Callable[[], Example]], what: str) -> list[Example]:
    """The Examples whose candidates validate; the first candidate's error when none does."""
    out, first, invalid = [], None, []
    for i, make in enumerate(makers):
        try:
            out.append(make())
        except RowError as e:
            first = first or RowError(e.reason, f"no valid {what}; {what} {i}: {e.detail}")
            invalid.append({what: i, "reason": e.reason, "detail": e.detail})
    if not out:
        raise first or RowError("no_response", f"no {what}")
    # Nothing is lost silently: the kept examples record which siblings were invalid and why.
    for ex in out if invalid else ():
        ex.meta[f"invalid_{what}s"] = invalid
    return out


# ---------------------------------------------------------------- converters


def alpaca(rec: dict, ctx: RowContext) -> list[Example]:
    """Alpaca / Evol-Instruct 70k / AlpacaEval outputs: instruction, optional input, output."""
    user, meta = alpaca_user_turn(_str(rec, "instruction"), _str(rec, "input", required=False))
    output = _str(rec, "output")
    for key in ("generator", "dataset"):
        if isinstance(rec.get(key), str):
            meta[key] = rec[key]
    category = rec["dataset"] if isinstance(rec.get("dataset"), str) else ""
    system = _str(rec, "system", required=False) or None
    return [from_prompt_completion(user, output, system, **ctx.fields(category=category, meta=meta))]


def dolly(rec: dict, ctx: RowContext) -> list[Example]:
    """Databricks Dolly: instruction, context (like alpaca input), response, category."""
    user, meta = alpaca_user_turn(_str(rec, "instruction"), _str(rec, "context", required=False))
    category = _str(rec, "category", required=False)
    return [from_prompt_completion(user, _str(rec, "response"), **ctx.fields(category=category, meta=meta))]


def sharegpt(rec: dict, ctx: RowContext) -> list[Example]:
    """ShareGPT / Vicuna / Evol-Instruct V2: `conversations` of {from, value}."""
    turns = [_sharegpt_turn(t, i) for i, t in enumerate(_list(rec, "conversations"))]
    system = _str(rec, "system", required=False)
    msgs = ([Message("system", system)] if system else []) + turns
    orig = rec.get("id", rec.get("idx"))
    meta = {"id": orig} if isinstance(orig, (str, int)) and not isinstance(orig, bool) else {}
    return [ctx.example(msgs, meta=meta)]


def _sharegpt_turn(turn: Any, i: int) -> Message:
    """One ShareGPT turn as a Message."""
    turn = _obj(turn, f"conversations[{i}]")
    who, value = _str(turn, "from"), _str(turn, "value")
    role = SHAREGPT_ROLES.get(who.strip().lower())
    if role is None:
        raise RowError("unknown_role", f"conversations[{i}].from is {who!r}; expected one of {sorted(SHAREGPT_ROLES)}")
    return Message(role, value)


def openai(rec: dict, ctx: RowContext) -> list[Example]:
    """OpenAI chat `messages`; canonical instillm rows keep their own id/source/task/meta."""
    msgs = [_openai_message(m, i) for i, m in enumerate(_list(rec, "messages"))]
    if set(rec) <= CANONICAL_KEYS:
        ex = Example.from_dict({**rec, "messages": msgs})
        return [replace(ex, id=rec.get("id") or ctx.id(), source=ex.source or ctx.source, task=ex.task or ctx.stem)]
    meta = {k: v for k, v in rec.items() if k != "messages" and isinstance(v, (str, int, float, bool))}
    return [ctx.example(parse_messages(msgs), meta=meta)]


def _openai_message(m: Any, i: int) -> dict[str, Any]:
    """Normalise one OpenAI message: text parts joined, `weight` 0/1 as `train`, developer → system."""
    m = _obj(m, f"messages[{i}]")
    role = _str(m, "role")
    content = m.get("content")
    if isinstance(content, list):
        parts = [_obj(p, f"messages[{i}].content part") for p in content]
        texts = [p.get("text") for p in parts if p.get("type", "text") == "text"]
        content = "".join(t for t in texts if isinstance(t, str))
    out = {"role": OPENAI_ROLES.get(role, role), "content": content if content is not None else _str(m, "content")}
    if "train" in m:
        out["train"] = m["train"]
    elif m.get("weight") in (0, 1) and role == "assistant":
        out["train"] = bool(m["weight"])
    return out


def oasst(rec: dict, ctx: RowContext) -> list[Example]:
    """OpenAssistant tree export (`prompt` with nested replies) or a root message with replies."""
    if "prompt" in rec and "message_tree_id" in rec:
        root, tree_id = _obj(rec["prompt"], "field 'prompt'"), _str(rec, "message_tree_id")
        meta = {"tree_state": rec["tree_state"]} if isinstance(rec.get("tree_state"), str) else {}
    else:
        root, meta = rec, {}
        tree_id = _str(rec, "message_tree_id", required=False) or _str(rec, "message_id")
    return oasst_examples(root, tree_id, ctx, meta)


def oasst_examples(root: dict, tree_id: str, ctx: RowContext, meta: dict[str, Any]) -> list[Example]:
    """Examples of one OpenAssistant tree: the best-ranked path, or every path with all_paths."""
    if root.get("deleted"):
        raise RowError("deleted_message", "the tree's prompt message is deleted")
    paths = list(_all_paths(root)) if ctx.all_paths else [_best_path(root)]
    unique = list({tuple(id(n) for n in p): p for p in map(_trim, paths)}.values())
    base = {**meta, "message_tree_id": tree_id}
    if isinstance(root.get("lang"), str):
        base["lang"] = root["lang"]
    many = len(unique) > 1

    def make(k: int, path: list[dict]) -> Example:
        """The Example of one path (k names it when the tree yields several)."""
        ids = [n.get("message_id") for n in path]
        return ctx.example([_oasst_message(n) for n in path], k if many else None, meta={**base, "message_ids": ids})

    return _first_valid([partial(make, k, p) for k, p in enumerate(unique)], "path")


def _replies(node: dict) -> list[dict]:
    """A message's replies that are not deleted, in file order."""
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RowError("wrong_type", "field 'replies' must be a list")
    return [r for r in (_obj(r, "a reply") for r in replies) if not r.get("deleted")]


def _rank_key(item: tuple[int, dict]) -> tuple[bool, float, int]:
    """Sort key: lowest rank first, unranked (None) last, ties by file order."""
    i, node = item
    rank = node.get("rank")
    if isinstance(rank, (int, float)) and not isinstance(rank, bool):
        return (False, rank, i)
    return (True, 0, i)


def _best_path(root: dict) -> list[dict]:
    """Follow the best-ranked reply from the root down to a leaf."""
    path, seen = [root], {id(root)}
    while replies := _replies(path[-1]):
        path.append(_step(min(enumerate(replies), key=_rank_key)[1], seen, len(path)))
    return path


def _all_paths(root: dict) -> Iterator[list[dict]]:
    """Every root-to-leaf path, depth first (iterative: trees can be deep)."""
    stack, seen = [[root]], {id(root)}
    while stack:
        path = stack.pop()
        replies = _replies(path[-1])
        if not replies:
            yield path
        stack.extend(path + [_step(r, seen, len(path))] for r in reversed(replies))


def _step(node: dict, seen: set[int], depth: int) -> dict:
    """A reply about to extend a path of `depth` messages: `cycle` if already walked, `too_deep` past the bound."""
    if id(node) in seen:
        raise RowError("cycle", f"message {node.get('message_id')!r} is reached twice (the tree loops)")
    if depth >= MAX_TREE_DEPTH:
        raise RowError("too_deep", f"a path is longer than {MAX_TREE_DEPTH} messages")
    seen.add(id(node))
    return node


def _trim(path: list[dict]) -> list[dict]:
    """Drop a trailing prompter message: a conversation must end on an answer."""
    return path[:-1] if len(path) > 1 and path[-1].get("role") == "prompter" else path


def _oasst_message(node: dict) -> Message:
    """One OpenAssistant message as a Message."""
    role, text = _str(node, "role"), _str(node, "text")
    if role not in OASST_ROLES:
        raise RowError("unknown_role", f"role {role!r}; expected one of {sorted(OASST_ROLES)}")
    return Message(OASST_ROLES[role], text)


def hh(rec: dict, ctx: RowContext) -> list[Example]:
    """Anthropic HH-RLHF / Constitutional AI: train on `chosen`, keep `rejected` in meta."""
    chosen = rec.get("chosen")
    if isinstance(chosen, list):  # some CAI exports store message lists instead of transcripts
        msgs: Sequence[Message] = parse_messages([_openai_message(m, i) for i, m in enumerate(chosen)])
    else:
        msgs = parse_transcript(_str(rec, "chosen"))
    meta = {"rejected": rec["rejected"]} if rec.get("rejected") is not None else {}
    return [ctx.example(msgs, meta=meta)]


def parse_transcript(text: str) -> list[Message]:
    """Split a "\\n\\nHuman: ... \\n\\nAssistant: ..." transcript into stripped turns."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = HH_TURN.split(text)
    if len(parts) == 1:
        raise RowError("malformed_transcript", "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    if parts[0].strip():
        raise RowError("malformed_transcript", f"text before the first turn: {parts[0].strip()[:80]!r}")
    return [Message(HH_ROLES[who], said.strip()) for who, said in zip(parts[1::2], parts[2::2])]


def openorca(rec: dict, ctx: RowContext) -> list[Example]:
    """OpenOrca / SlimOrca-style rows: system_prompt, question, response, optional id."""
    system = _str(rec, "system_prompt", required=False) or None
    meta = {"id": rec["id"]} if isinstance(rec.get("id"), str) else {}
    return [from_prompt_completion(_str(rec, "question"), _str(rec, "response"), system, **ctx.fields(meta=meta))]


def flan(rec: dict, ctx: RowContext) -> list[Example]:
    """Flan collection: inputs, targets, task_name, template_type (also the `_`-prefixed names)."""
    task = _str(rec, "task_name", required=False) or _str(rec, "_task_name", required=False)
    template = _str(rec, "template_type", required=False) or _str(rec, "_template_type", required=False)
    meta: dict[str, Any] = {"template_type": template} if template else {}
    for key in ("_task_source", "_template_idx"):
        if isinstance(rec.get(key), (str, int)):
            meta[key.lstrip("_")] = rec[key]
    cot = "cot" in template.lower() or "cot" in task.lower()
    return [
        from_prompt_completion(
            _str(rec, "inputs"), _str(rec, "targets"), **ctx.fields(task=task, category="cot" if cot else "", meta=meta)
        )
    ]


def prompt_completion(rec: dict, ctx: RowContext) -> list[Example]:
    """prompt/completion pairs (T0 and Flan files): `<|endoftext|>` removed, text kept as is."""
    prompt = _str(rec, "prompt").removesuffix(ENDOFTEXT)
    completion = _str(rec, "completion").removesuffix(ENDOFTEXT)
    if not completion.strip():
        raise RowError("empty_response", f"completion is empty (after removing {ENDOFTEXT})")
    return [from_prompt_completion(prompt, completion, **ctx.fields())]


def self_instruct(rec: dict, ctx: RowContext) -> list[Example]:
    """Self-Instruct seed / user-oriented tasks: one Example per valid instance."""
    instruction, instances = _str(rec, "instruction"), _list(rec, "instances")
    # Each Self-Instruct row is its own task: named by `name` (seeds) or `id` (user-oriented set).
    task = _str(rec, "name", required=False) or _str(rec, "id", required=False) or ctx.stem
    category = _str(rec, "motivation_app", required=False)
    base: dict[str, Any] = {"task_id": rec["id"]} if isinstance(rec.get("id"), str) else {}
    if isinstance(rec.get("is_classification"), bool):
        base["is_classification"] = rec["is_classification"]
    k = len(instances) > 1

    def make(i: int, inst: Any) -> Example:
        """The Example of instance i."""
        inst = _obj(inst, f"instances[{i}]")
        user, meta = alpaca_user_turn(instruction, _str(inst, "input", required=False))
        fields = ctx.fields(i if k else None, task=task, category=category, meta={**base, **meta, "instance": i})
        return from_prompt_completion(user, _str(inst, "output"), **fields)

    return _first_valid([partial(make, i, x) for i, x in enumerate(instances)], "instance")


def mt_bench(rec: dict, ctx: RowContext) -> list[Example]:
    """MT-Bench question rows, answered by `choices[0].turns` (a joined answer) or `reference`."""
    turns = [_turn(t, "turns", i) for i, t in enumerate(_list(rec, "turns"))]
    answers = _mt_bench_answers(rec)
    n = min(len(turns), len(answers))
    if n == 0:
        raise RowError("no_response", "question has no answer; join it with reference answers (import_mt_bench)")
    msgs = [m for q, a in zip(turns[:n], answers[:n]) for m in (Message("user", q), Message("assistant", a))]
    meta: dict[str, Any] = {"question_id": rec.get("question_id"), "turns_total": len(turns)}
    if isinstance(rec.get("model_id"), str):
        meta["answer_model"] = rec["model_id"]
    if "choices" in rec and isinstance(rec.get("reference"), list):
        meta["reference"] = rec["reference"]
    return [ctx.example(msgs, task="mt_bench", category=_str(rec, "category", required=False), meta=meta)]


def _mt_bench_answers(rec: dict) -> list[str]:
    """Answer turns of an MT-Bench row: the first choice if joined, else the inline reference."""
    if rec.get("choices") is not None:
        choices = _list(rec, "choices")
        first = _obj(choices[0], "choices[0]") if choices else {}
        return [_turn(t, "choices[0].turns", i) for i, t in enumerate(_list(first, "turns"))] if first else []
    if rec.get("reference") is not None:
        return [_turn(t, "reference", i) for i, t in enumerate(_list(rec, "reference"))]
    return []


def _turn(value: Any, where: str, i: int) -> str:
    """One string turn of a list field."""
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{where}[{i}] must be a string, got {type(value).__name__}")
    return value


FORMATS: dict[str, Converter] = {
    "alpaca": alpaca,
    "dolly": dolly,
    "sharegpt": sharegpt,
    "openai": openai,
    "oasst": oasst,
    "hh": hh,
    "openorca": openorca,
    "flan": flan,
    "prompt_completion": prompt_completion,
    "self_instruct": self_instruct,
    "mt_bench": mt_bench,
}

# Checked in order: the first format whose keys are all present wins.
_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hh", ("chosen",)),
    ("openai", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("oasst", ("message_tree_id", "prompt")),
    ("oasst", ("message_id", "replies")),
    ("oasst", ("message_id", "parent_id")),
    ("self_instruct", ("instruction", "instances")),
    ("mt_bench", ("question_id", "turns")),
    ("openorca", ("question", "response")),
    ("flan", ("inputs", "targets")),
    ("dolly", ("instruction", "response")),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
)


def detect_format(record: dict) -> str:
    """The format name a record's keys match; RowError('unknown_format') listing the keys otherwise."""
    if isinstance(record, dict):
        for name, keys in _SIGNATURES:
            if all(k in record for k in keys):
                return name
    found = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise RowError("unknown_format", f"no known format has keys {found}; formats: {sorted(FORMATS)}")


# ---------------------------------------------------------------- streams


def convert_row(row: RawRow, fmt: str, ctx: RowContext) -> Unit:
    """Convert one parsed row; every failure becomes the Unit's error, never an exception."""
    if row.error is not None:
        return Unit([row], error=row.error)
    try:
        examples = FORMATS[fmt](row.record, ctx.at(row.line))
    except RowError as e:
        return Unit([row], error=e)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        # Real data nests unexpected types in places no check anticipates; one row must not stop an import.
        return Unit([row], error=RowError("wrong_type", f"{type(e).__name__}: {e}"))
    except RecursionError:
        return Unit([row], error=RowError("too_deep", "the row nests too deeply to convert"))
    return Unit([row], examples) if examples else Unit([row], error=RowError("no_response", "row yields no example"))


def is_flat_message(record: Any) -> bool:
    """Whether a record is one message of a flat OpenAssistant export (no nested replies)."""
    return (
        isinstance(record, dict)
        and "message_id" in record
        and "parent_id" in record
        and "replies" not in record
        and "prompt" not in record
    )


def convert_rows(rows: Iterable[RawRow], fmt: str, ctx: RowContext) -> Iterator[Unit]:
    """Convert a file's rows; flat OpenAssistant messages are grouped per tree first.

    A flat tree is buffered while its rows are contiguous in the file (exports write a tree's
    messages together); a row of a tree that was already closed is rejected as `split_tree`.
    """
    pending: list[RawRow] = []
    closed: set[str] = set()
    for row in rows:
        if fmt != "oasst" or row.error is not None or not is_flat_message(row.record):
            yield convert_row(row, fmt, ctx)
            continue
        tree, error = row.record.get("message_tree_id"), _flat_error(row.record)
        if error is not None:
            yield Unit([row], error=error)
        elif tree in closed:
            yield Unit([row], error=RowError("split_tree", f"tree {tree} already ended earlier in the file"))
        else:
            if pending and pending[0].record["message_tree_id"] != tree:
                closed.add(pending[0].record["message_tree_id"])
                yield from flat_tree_units(pending, ctx)
                pending = []
            pending.append(row)
    if pending:
        yield from flat_tree_units(pending, ctx)


def _flat_error(rec: dict) -> RowError | None:
    """Why a flat message cannot join a tree at all (None when it can)."""
    if not isinstance(rec.get("message_tree_id"), str) or not isinstance(rec["message_id"], str):
        reason = "missing_field" if rec.get("message_tree_id") is None else "wrong_type"
        return RowError(reason, "a flat message needs string 'message_id' and 'message_tree_id'")
    parent = rec["parent_id"]
    if parent is not None and not isinstance(parent, str):
        return RowError("wrong_type", f"field 'parent_id' must be a string or null, not {type(parent).__name__}")
    if parent == rec["message_id"]:
        return RowError("cycle", f"message {rec['message_id']!r} is its own parent")
    return None


def flat_tree_units(rows: list[RawRow], ctx: RowContext) -> list[Unit]:
    """Nest the flat messages of one tree and convert it; repeated, unattached or looping messages are rejected."""
    rows, repeated = _split_repeated(rows)
    roots = [r for r in rows if r.record.get("parent_id") is None]
    if len(roots) != 1:
        error = RowError(
            "missing_root" if not roots else "multiple_roots",
            f"tree {rows[0].record['message_tree_id']} has {len(roots)} root messages",
        )
        return [Unit(rows, error=error)] + repeated
    nodes = {r.record["message_id"]: {**r.record, "replies": []} for r in rows}
    for r in rows:
        parent = nodes.get(r.record["parent_id"])
        if parent is not None:
            parent["replies"].append(nodes[r.record["message_id"]])
    root_row = roots[0]
    reached = _reachable(nodes[root_row.record["message_id"]])
    attached = [r for r in rows if id(nodes[r.record["message_id"]]) in reached]
    tree = convert_row(replace(root_row, record=nodes[root_row.record["message_id"]]), "oasst", ctx)
    detached = [r for r in rows if id(nodes[r.record["message_id"]]) not in reached]
    return [Unit(attached, tree.examples, tree.error)] + _detached_units(detached) + repeated


def _split_repeated(rows: list[RawRow]) -> tuple[list[RawRow], list[Unit]]:
    """The first row of each message_id, and a `duplicate_id` Unit for every later row reusing one."""
    first: dict[str, RawRow] = {}
    repeated: list[Unit] = []
    for r in rows:
        mid = r.record["message_id"]
        if mid in first:
            error = RowError("duplicate_id", f"message_id {mid!r} is already used on line {first[mid].line}")
            repeated.append(Unit([r], error=error))
        else:
            first[mid] = r
    return list(first.values()), repeated


def _detached_units(rows: list[RawRow]) -> list[Unit]:
    """Rejects for messages the root does not reach: `cycle` when their ancestry loops, else `orphan_message`."""
    parent_of = {r.record["message_id"]: r.record["parent_id"] for r in rows}
    verdict: dict[str, str] = {}
    for start in parent_of:
        trail: dict[str, None] = {}  # a dict keeps insertion order and answers `in` in O(1)
        node = start
        while node in parent_of and node not in verdict and node not in trail:
            trail[node] = None
            node = parent_of[node]
        verdict.update(dict.fromkeys(trail, verdict.get(node, "cycle" if node in trail else "orphan_message")))
    return [Unit([r], error=_detached_error(verdict[r.record["message_id"]], r.record)) for r in rows]


def _detached_error(reason: str, rec: dict) -> RowError:
    """The RowError of one detached message."""
    if reason == "cycle":
        return RowError("cycle", f"message {rec['message_id']!r} descends from itself (its parents loop)")
    return RowError("orphan_message", f"parent {rec['parent_id']!r} is not in the tree")


def _reachable(root: dict) -> set[int]:
    """Object ids of every message under root (including deleted ones: they were read, not lost)."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(node["replies"])
    return seen
