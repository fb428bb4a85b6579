"""Data card: what a dataset is made of, to judge it before training on it.

An instruction-tuned model imitates its data: its quality (wrong or sloppy responses are learned
as readily as good ones), its biases (what is over- or under-represented) and its superficial
patterns (the same opening verbs, lengths and phrasings over and over). The card shows what to
check: composition by source/task/category, prompt and response lengths (words, `str.split`),
language share, the most common leading verbs of the instructions and their objects (the
verb-noun breakdown Self-Instruct published for its data), near-duplicate clusters and overlap
with evaluation sets. `data_card` returns it as a JSON-ready dict; `write_card_html` writes one
self-contained HTML file (inline CSS, PNG plots as base64 data URIs, nothing fetched).

Texts: the prompt is every turn before the final assistant turn (joined by newlines), the
response the final assistant turn, the instruction `meta["instruction"]` when the importer kept
one (Alpaca) or else the first user turn. A row is named by its id and 1-based row number.

Leading verb and object (a heuristic; no parser): the first clause of the instruction's first
line (up to `.,:;!?`), lowercased, split into words. Polite openers are skipped ("please",
"kindly", "can/could/would/will you", "I want/need/would like you to", "help me", "now",
"also"), and so is a leading clause that opens with "given", "using", "based", "for", "in",
"with", "according" or "after" (the next clause is tried, up to three). The first word is the
verb when it is in a list of common instruction verbs or ends in -ize/-ise/-ify/-ate; else the
row has no leading verb (questions such as "What is ..." have none, as in Self-Instruct's
figure). The object is the first later word of the clause that is not a function word, number,
listed adjective ("following", "short", "creative", ...) or -ous/-ful/-less word, put in the
singular by suffix rules (-ies → -y, -ches/-shes/-sses/-xes/-zes → drop -es, else drop a final
-s except after s, u or i). Limits: "Given X, classify Y" after a comma works but "Given that
..., classify" without one does not; an adjective outside the list is taken as the object
("write a spooky story" → "spooky"); nouns used as the first word ("Translation: ...") and verbs
outside the list are missed; -ate catches a few nouns ("climate").

Language share: langdetect (seeded, so the same data gives the same card) on the user turns of
at most `language_sample` rows spread evenly over the data; "unknown" when it cannot decide.

Near-duplicate clusters and eval overlap use the curation machinery (`instillm.curate`: MinHash-LSH
from `curate.dedup`, n-gram overlap from `curate.decontaminate`), which imports this package; so
`data_card` takes them as callables (`near_dup`, `eval_overlap`) rather than importing it back, and
`instillm.curate.card.card_with_checks` wires them, the same for `instillm data card`, `instillm run`'s
report and the UI's Card sub-tab. Its eval overlap leaves out template text that many training rows
share (boilerplate, see `curate.decontaminate`), so templated data is not reported as leaking into
eval sets rendered by the same templates; its section also names the eval sets checked (`eval_sets`)
and the `rule`. Without the callables those sections are None (near duplicates "not computed",
eval overlap "no eval set given").
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from instillm.data.audit import read_audit_rows
from instillm.data.io import temp_beside
from instillm.data.schema import Example

NearDup = Callable[[Example, int], object | None]  # (row, 0-based index) -> index of the earlier row it repeats
EvalOverlap = Callable[[Example], tuple[str, str] | None]  # row -> (eval set, matching text) or None
COMPOSITION_FIELDS = ("source", "task", "category")
PERCENTILES = (5, 25, 50, 75, 95)
HIST_BINS = 20
HTML_ROWS = 50  # clusters / overlapping rows listed in the HTML (the dict holds all)

VERBS = frozenset(
    """
act add analyze answer apply argue arrange ask assess assign assume brainstorm break build calculate categorize change
check choose cite clarify classify combine come compare compile complete compose compute condense construct continue
convert convince correct count craft create critique debate decide decode define delete demonstrate derive describe
design detect determine develop devise diagnose discuss distinguish divide do draft draw edit elaborate eliminate
emphasize encode enumerate estimate evaluate examine expand explain express extract fill find fix format formulate
generate get give group guess help highlight identify illustrate imagine implement improve include infer insert
interpret introduce invent justify label let list locate look make map mark match measure mention merge modify name
note offer order organize outline output paraphrase parse perform pick plan point predict prepare present pretend
print produce program propose prove provide put rank rate read recommend reconstruct recount redo reduce refactor
remove rename reorder rephrase replace reply report represent respond restate retell return reverse review revise
rewrite say score select sell separate show shorten simplify solve sort specify spell split state suggest sum
summarize tag take teach tell test think trace transform translate turn use verify write
""".split()
)
OPENERS = tuple(
    tuple(o.split())
    for o in (
        "please",
        "kindly",
        "now",
        "also",
        "can you",
        "could you",
        "would you",
        "will you",
        "i want you to",
        "i need you to",
        "i would like you to",
        "i'd like you to",
        "help me",
    )
)
CLAUSE_OPENERS = frozenset("given using based for in with according after".split())
FUNCTION_WORDS = frozenset(
    """
a an the this that these those my your our their his her its me us them him it i you we they myself yourself
ourselves themselves one ones some any each every all both either neither no of to for in on at by with about from
into onto as than and or but if so how what which who whom whose why when where whether there here be is are was were
been being do does did have has had can could would should will shall may might must not up out down over under such
very really just only also even then more most less least other another own same
two three four five six seven eight nine ten first second third next last
""".split()
)
ADJECTIVES = frozenset(
    """
following given short brief new simple few many several good great creative detailed funny different possible best
main common interesting unique original appropriate suitable concise catchy persuasive informative random long little
small large big single whole entire comprehensive step-by-step additional relevant specific similar famous popular
important key basic general complex professional formal informal friendly polite clear correct proper potential
hypothetical fictional real real-world short-term long-term well-known better worse
""".split()
)
ADJ_SUFFIXES = ("ous", "ful", "less")
KEEP_PLURAL = frozenset("news series species physics mathematics economics politics ethics statistics".split())
_WORD = re.compile(r"[a-z][a-z'-]*")
_CLAUSE = re.compile(r"[.,:;!?]")


# ------------------------------------------------------------------------------ rows and texts


def read_card_examples(path: str | Path) -> list[Example]:
    """Examples of a canonical JSONL file for a card. A row whose only fault is that no assistant turn is
    trained is read with its `train` flags dropped (a card describes content, not loss masks); any other bad
    row raises DataError naming file:line."""
    return [ex if ex is not None else _flags_dropped(record) for _, record, ex in read_audit_rows(path)]


def _flags_dropped(record: dict[str, Any]) -> Example:
    messages = [{k: v for k, v in m.items() if k != "train"} for m in record["messages"]]
    return Example.from_dict({**record, "messages": messages})


def prompt_text(ex: Example) -> str:
    """Every turn before the final assistant turn, joined by newlines."""
    return "\n".join(m.content for m in ex.prompt_messages)


def instruction_text(ex: Example) -> str:
    """The Alpaca instruction kept in meta, else the first user turn."""
    kept = ex.meta.get("instruction")
    if isinstance(kept, str) and kept.strip():
        return kept
    return next(m.content for m in ex.messages if m.role == "user")


# ------------------------------------------------------------------------------ verb-object heuristic


def leading_verb_object(instruction: str) -> tuple[str, str | None] | None:
    """(verb, object or None) of an instruction by the heuristic above; None when no leading verb."""
    lines = instruction.strip().lower().splitlines()
    clauses = _CLAUSE.split(lines[0]) if lines else []
    for clause in clauses[:3]:
        words = _strip_openers(_WORD.findall(clause))
        if not words or words[0] in CLAUSE_OPENERS:
            continue
        return (words[0], _first_object(words[1:])) if _is_verb(words[0]) else None
    return None


def _strip_openers(words: list[str]) -> list[str]:
    """Drop polite openers ("please", "can you", ...) from the front, repeatedly."""
    stripped = True
    while stripped:
        stripped = False
        for opener in OPENERS:
            if tuple(words[: len(opener)]) == opener and len(words) > len(opener):
                words, stripped = words[len(opener) :], True
    return words


def _is_verb(word: str) -> bool:
    return word in VERBS or (len(word) > 5 and word.endswith(("ize", "ise", "ify", "ate")))


def _first_object(words: Sequence[str]) -> str | None:
    """The first word that is not a function word, listed adjective or -ous/-ful/-less word, in the singular."""
    for w in words:
        if w in FUNCTION_WORDS or w in ADJECTIVES or w.endswith(ADJ_SUFFIXES):
            continue
        return singular(w)
    return None


def singular(word: str) -> str:
    """A noun in the singular by suffix rules (see the module docstring)."""
    if word in KEEP_PLURAL or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def verb_breakdown(instructions: Iterable[str], top: int = 20, objects: int = 4) -> dict[str, Any]:
    """The `top` leading verbs with their counts and their `objects` most common objects."""
    verbs: Counter[str] = Counter()
    objs: defaultdict[str, Counter[str]] = defaultdict(Counter)
    n = 0
    for text in instructions:
        n += 1
        found = leading_verb_object(text)
        if found is not None:
            verbs[found[0]] += 1
            objs[found[0]][found[1] or "(none)"] += 1
    rows = [{"verb": v, "count": c, "objects": _pairs(objs[v], objects)} for v, c in _ranked(verbs)[:top]]
    n_verb = sum(verbs.values())
    return {"n_with_verb": n_verb, "share_with_verb": n_verb / n if n else 0.0, "n_distinct": len(verbs), "top": rows}


# ------------------------------------------------------------------------------ sections


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most common first, ties by name (deterministic)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _pairs(counts: Counter[str], limit: int | None = None) -> list[list[Any]]:
    return [[k, c] for k, c in _ranked(counts)[:limit]]


def composition(examples: Sequence[Example]) -> dict[str, list[list[Any]]]:
    """Rows per source, task and category ("(none)" for an empty field), most common first."""
    return {f: _pairs(Counter(getattr(ex, f) or "(none)" for ex in examples)) for f in COMPOSITION_FIELDS}


def length_summary(lengths: Sequence[int]) -> dict[str, Any]:
    """Mean, percentiles, max and a histogram of word counts."""
    arr = np.asarray(lengths, dtype=np.int64)
    if not arr.size:
        return {"mean": 0.0, "max": 0, "histogram": {"edges": [], "counts": []}}
    counts, edges = np.histogram(arr, bins=HIST_BINS, range=(0, max(int(arr.max()), 1)))
    summary: dict[str, Any] = {"mean": float(arr.mean()), "max": int(arr.max())}
    summary.update({f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES})
    summary["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    return summary


def lengths(examples: Sequence[Example]) -> dict[str, Any]:
    """Prompt and response length distributions in words."""
    prompts = [len(prompt_text(ex).split()) for ex in examples]
    responses = [len(ex.reference.split()) for ex in examples]
    return {"unit": "words", "prompt": length_summary(prompts), "response": length_summary(responses)}


@lru_cache(maxsize=1)
def _lang_factory() -> Any:
    """A private langdetect factory with the bundled profiles, seeded with 0."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def detect_language(text: str) -> str:
    """ISO 639-1 code langdetect (seed 0) assigns to `text`, or "unknown"."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _lang_factory().create()
    detector.append(text)
    try:
        return str(detector.detect())
    except LangDetectException:
        return "unknown"


def language_share(examples: Sequence[Example], sample: int = 2000) -> dict[str, Any]:
    """Share of each language over the user turns of at most `sample` evenly spread rows."""
    n = len(examples)
    picked = sorted({i * n // sample for i in range(sample)}) if n > sample else list(range(n))
    langs = Counter(detect_language(_user_text(examples[i])) for i in picked)
    total = sum(langs.values())
    return {"n_detected": total, "share": [[k, c / total, c] for k, c in _ranked(langs)]}


def _user_text(ex: Example) -> str:
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def near_duplicates(examples: Sequence[Example], near_dup: NearDup) -> dict[str, Any]:
    """Clusters of rows that `near_dup` matches to an earlier row (the cluster's first row), largest first."""
    members: defaultdict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        hit = near_dup(ex, i)
        if isinstance(hit, int) and 0 <= hit < i:
            members[hit].append(i)
    clusters = [_cluster(examples, [first, *rest]) for first, rest in members.items()]
    clusters.sort(key=lambda c: (-c["size"], c["rows"][0]))
    return {"n_clusters": len(clusters), "n_rows": sum(c["size"] for c in clusters), "clusters": clusters}


def _cluster(examples: Sequence[Example], idx: list[int]) -> dict[str, Any]:
    return {
        "size": len(idx),
        "ids": [examples[i].id for i in idx],
        "rows": [i + 1 for i in idx],
        "text": _snippet(instruction_text(examples[idx[0]])),
    }


def _snippet(text: str, width: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def eval_overlap_rows(examples: Sequence[Example], overlap: EvalOverlap) -> dict[str, Any]:
    """Rows sharing text with an eval set (the eval set and the matching text), and counts per set."""
    rows: list[dict[str, Any]] = []
    by_set: Counter[str] = Counter()
    for i, ex in enumerate(examples):
        hit = overlap(ex)
        if hit is not None:
            by_set[hit[0]] += 1
            rows.append({"id": ex.id, "row": i + 1, "eval_set": hit[0], "match": hit[1]})
    return {"n_rows": len(rows), "by_set": dict(_ranked(by_set)), "rows": rows}


def data_card(
    examples: Iterable[Example],
    near_dup: NearDup | None = None,
    eval_overlap: EvalOverlap | None = None,
    language_sample: int = 2000,
    top_verbs: int = 20,
) -> dict[str, Any]:
    """The data card of `examples` as a JSON-ready dict (sections as in the module docstring)."""
    rows = list(examples)
    return {
        "n_examples": len(rows),
        "composition": composition(rows),
        "lengths": lengths(rows),
        "language": language_share(rows, language_sample),
        "verbs": verb_breakdown((instruction_text(ex) for ex in rows), top_verbs),
        "near_duplicates": near_duplicates(rows, near_dup) if near_dup is not None else None,
        "eval_overlap": eval_overlap_rows(rows, eval_overlap) if eval_overlap is not None else None,
    }


# ------------------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    """The figure as a base64 PNG data URI; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _barh(ax: Any, pairs: Sequence[Sequence[Any]], title: str, limit: int = 15) -> None:
    shown = list(pairs)[:limit][::-1]
    ax.barh([str(p[0])[:30] for p in shown], [p[1] for p in shown], color="#4c72b0")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)


def plot_composition(comp: dict[str, list[list[Any]]]) -> str:
    """Bars of rows per source, task and category."""
    fig, axes = _plt().subplots(1, len(COMPOSITION_FIELDS), figsize=(12, 3.6))
    for ax, name in zip(axes, COMPOSITION_FIELDS):
        _barh(ax, comp[name], f"rows per {name}")
    return _png(fig)


def plot_lengths(lens: dict[str, Any]) -> str:
    """Histograms of prompt and response lengths in words."""
    fig, axes = _plt().subplots(1, 2, figsize=(10, 3.2))
    for ax, key in zip(axes, ("prompt", "response")):
        hist = lens[key]["histogram"]
        edges, counts = hist["edges"], hist["counts"]
        if counts:
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#55a868", edgecolor="white")
        ax.set_title(f"{key} length (words)", fontsize=10)
        ax.set_xlabel("words", fontsize=8)
    return _png(fig)


def plot_languages(lang: dict[str, Any]) -> str:
    """Bars of the language share."""
    fig, ax = _plt().subplots(figsize=(6, 3))
    _barh(ax, [[k, s] for k, s, _ in lang["share"]], "language share")
    return _png(fig)


def plot_verbs(verbs: dict[str, Any]) -> str:
    """One bar per leading verb, split into its most common objects (the rest grey)."""
    fig, ax = _plt().subplots(figsize=(9, max(2.5, 0.32 * len(verbs["top"]) + 1)))
    colors = _plt().get_cmap("tab20").colors
    for y, row in enumerate(verbs["top"][::-1]):
        left = 0
        for k, (obj, c) in enumerate(row["objects"]):
            ax.barh(y, c, left=left, color=colors[k * 2 % len(colors)], edgecolor="white")
            if c >= 0.08 * verbs["top"][0]["count"]:
                ax.text(left + c / 2, y, obj[:14], ha="center", va="center", fontsize=7)
            left += c
        ax.barh(y, row["count"] - left, left=left, color="#dddddd", edgecolor="white")
    ax.set_yticks(range(len(verbs["top"])), [r["verb"] for r in verbs["top"][::-1]], fontsize=8)
    ax.set_title("leading verbs and their most common objects", fontsize=10)
    return _png(fig)


# ------------------------------------------------------------------------------ HTML

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; } img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""
LIMITS_NOTE = (
    "A fine-tuned model imitates its data: its quality (wrong or sloppy responses are learned as readily as "
    "good ones), its biases (what is over- or under-represented below) and its superficial patterns (recurring "
    "opening verbs, lengths and phrasings). Read the sections with that in mind."
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if _numeric(c) else f"<td>{_e(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _composition_html(card: dict[str, Any]) -> str:
    n = card["n_examples"] or 1
    tables = "".join(  # each table's first header names its field
        _table([f, "rows", "share"], [[k, c, f"{c / n:.1%}"] for k, c in pairs[:30]])
        for f, pairs in card["composition"].items()
    )
    return _img(plot_composition(card["composition"]), "composition") + tables


def _lengths_html(card: dict[str, Any]) -> str:
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    rows = [[k, *(_fmt(card["lengths"][w].get(k, 0)) for w in ("prompt", "response"))] for k in keys]
    return _img(plot_lengths(card["lengths"]), "lengths") + _table(["words", "prompt", "response"], rows)


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _language_html(card: dict[str, Any]) -> str:
    lang = card["language"]
    note = f'<p class="note">langdetect on the user turns of {lang["n_detected"]} row(s).</p>'
    table = _table(["language", "share", "rows"], [[k, f"{s:.1%}", c] for k, s, c in lang["share"]])
    return note + _img(plot_languages(lang), "languages") + table


def _verbs_html(card: dict[str, Any]) -> str:
    v = card["verbs"]
    note = (
        f'<p class="note">{v["n_with_verb"]} row(s) ({v["share_with_verb"]:.1%}) start with a verb by the '
        f"heuristic; {v['n_distinct']} distinct verbs.</p>"
    )
    rows = [[r["verb"], r["count"], ", ".join(f"{o} ({c})" for o, c in r["objects"])] for r in v["top"]]
    plot = _img(plot_verbs(v), "verbs") if v["top"] else ""
    return note + plot + _table(["verb", "rows", "most common objects"], rows)


def _near_dup_html(card: dict[str, Any]) -> str:
    nd = card["near_duplicates"]
    if nd is None:
        return '<p class="note">not computed.</p>'
    note = f'<p class="note">{nd["n_clusters"]} cluster(s) holding {nd["n_rows"]} row(s).</p>'
    rows = [
        [c["size"], ", ".join(f"{i} (row {r})" for i, r in zip(c["ids"], c["rows"])), c["text"]]
        for c in nd["clusters"][:HTML_ROWS]
    ]
    return note + _table(["rows", "ids", "first row's instruction"], rows)


def _overlap_html(card: dict[str, Any]) -> str:
    ov = card["eval_overlap"]
    if ov is None:
        return '<p class="note">no eval set given.</p>'
    per_set = _table(["eval set", "overlapping rows"], list(ov["by_set"].items()))
    rows = [[r["id"], r["row"], r["eval_set"], r["match"]] for r in ov["rows"][:HTML_ROWS]]
    return _overlap_note(ov) + per_set + _table(["id", "row", "eval set", "match"], rows)


def _overlap_note(ov: dict[str, Any]) -> str:
    """How many rows overlap, against which eval sets (when named) and by which rule (when given)."""
    sets = ", ".join(f"{name} ({k} text(s) for n-grams)" for name, k in ov.get("eval_sets") or [])
    against = f" Eval sets checked: {sets}." if sets else ""
    rule = f'<p class="note">{_e(ov["rule"])}</p>' if ov.get("rule") else ""
    return f'<p class="note">{ov["n_rows"]} row(s) overlap.{_e(against)}</p>{rule}'


SECTIONS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("Composition", _composition_html),
    ("Prompt and response lengths", _lengths_html),
    ("Languages", _language_html),
    ("Leading verbs and their objects", _verbs_html),
    ("Near-duplicate clusters", _near_dup_html),
    ("Overlap with eval sets", _overlap_html),
)


OPTIONAL_SECTIONS = {"Near-duplicate clusters": "near_duplicates", "Overlap with eval sets": "eval_overlap"}


def card_sections_html(card: dict[str, Any], level: int = 2, computed_only: bool = False) -> str:
    """The card's sections as embeddable HTML, headed `<h{level}>`; `computed_only` drops those without data."""
    shown = [(name, render) for name, render in SECTIONS if not computed_only or _computed(card, name)]
    return "".join(f"<section><h{level}>{_e(name)}</h{level}>{render(card)}</section>" for name, render in shown)


def _computed(card: dict[str, Any], section: str) -> bool:
    """Whether the card holds the section's data (the optional ones are None without their matcher)."""
    key = OPTIONAL_SECTIONS.get(section)
    return key is None or card.get(key) is not None


def card_html(card: dict[str, Any], title: str = "Data card") -> str:
    """The card as one self-contained HTML page."""
    body = card_sections_html(card)
    head = f'<h1>{_e(title)}</h1><p>{card["n_examples"]} row(s).</p><p class="note">{_e(LIMITS_NOTE)}</p>'
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>{head}{body}</body></html>\n"
    )


def write_card_html(card: dict[str, Any], path: str | Path, title: str = "Data card") -> Path:
    """Write the card's HTML to `path` atomically (a temp file beside it, then a rename)."""
    out = Path(path)
    text = card_html(card, title)  # plots are drawn before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
