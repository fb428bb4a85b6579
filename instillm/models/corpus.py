"""A small built-in corpus for training the tokenizer of a from-scratch model.

There is no network access in many of the places instillm runs (CI, air-gapped clusters), so
`instillm model init` must be able to build a tokenizer without downloading text. This module
generates English-like text procedurally from a few hundred common words, plus numbers,
punctuation, JSON / CSV / markdown / code snippets and the chat-template strings, so the byte-level
BPE learns merges for the kinds of text instruction data is made of.

The output is fully deterministic for a given `seed` (it uses its own `random.Random`, never the
global one), so the same preset and seed always give the same tokenizer.
"""

from __future__ import annotations

import json
import random

# Roughly 400 common English words, grouped loosely by part of speech so sentences read plausibly.
_DETERMINERS = (
    "the a an this that these those some any every each no my your his her its our their "
    "one two three many few several all both"
).split()

_PRONOUNS = "I you he she it we they me him us them someone everyone nobody something".split()

_NOUNS = (
    "time year people way day man woman child world life hand part place case week company "
    "system program question work government number night point home water room mother area "
    "money story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door "
    "health person art war history party result change morning reason research girl guy moment "
    "air teacher force education food student problem answer list table file model data value "
    "task example step user assistant message function test error output input code language "
    "text sentence paragraph summary title question price market country state school family "
    "group plan report season river mountain tree garden animal dog cat bird fish song music "
    "picture computer phone letter paper street road bridge window kitchen dinner breakfast "
    "lunch coffee tea bread apple orange doctor patient hospital village island ocean sky sun "
    "moon star weather rain snow wind color shape size weight distance speed energy idea"
).split()

_VERBS = (
    "be have do say get make go know take see come think look want give use find tell ask work "
    "seem feel try leave call keep let begin help talk turn start show hear play run move like "
    "live believe hold bring happen write provide sit stand lose pay meet include continue set "
    "learn change lead understand watch follow stop create speak read allow add spend grow open "
    "walk win offer remember love consider appear buy wait serve die send expect build stay fall "
    "cut reach kill remain suggest raise pass sell require report decide pull explain describe "
    "translate summarize classify list compare answer rewrite improve check return count sort"
).split()

_PAST = (
    "was had did said got made went knew took saw came thought looked wanted gave used found told "
    "asked worked seemed felt tried left called kept began helped talked turned started showed "
    "heard played ran moved liked lived believed held brought happened wrote sat stood lost paid "
    "met learned changed led understood watched followed stopped created spoke read added grew "
    "opened walked won remembered loved bought waited built stayed fell explained described"
).split()

_ADJECTIVES = (
    "good new first last long great little own other old right big high different small large "
    "next early young important few public bad same able best better sure free true full "
    "special easy clear recent certain personal open red blue green black white dark bright "
    "short simple hard strong possible whole real left late general happy quick slow quiet "
    "warm cold hot dry wet clean empty heavy light final main local natural careful useful "
    "correct wrong short ready helpful polite formal informal positive negative neutral"
).split()

_ADVERBS = (
    "not also very often however too usually really early never always sometimes together "
    "likely simply generally instead actually again rather almost especially ever quickly "
    "probably already below directly therefore else thus easily eventually exactly certainly "
    "normally currently extremely finally carefully slowly clearly"
).split()

_PREPOSITIONS = (
    "of in to for with on at from by about as into like through after over between out against "
    "during without before under around among across behind beyond near since toward upon"
).split()

_CONJUNCTIONS = "and but or so because although while if when unless until".split()

_NAMES = (
    "Alice Bob Carol David Emma Frank Grace Henry Isabel Jack Karen Liam Maria Noah Olivia Paul "
    "Quinn Rosa Sam Tina Uma Victor Wendy Xavier Yara Zoe London Paris Tokyo Berlin Madrid Rome "
    "Cairo Lima Oslo Seoul Python Linux Monday Tuesday Wednesday Thursday Friday Saturday Sunday "
    "January February March April May June July August September October November December"
).split()

# A few non-ASCII words so common multi-byte sequences get merges too.
_FOREIGN = (
    "café naïve résumé über straße façade jalapeño São Zürich Kraków Москва привет 東京 日本語 "
    "こんにちは 你好 北京 مرحبا שלום Ελλάδα €100 £20 ¥500 °C — … “quoted” ‘single’ ✓ → ★ 😀 🚀 👍"
).split()

_INSTRUCTIONS = (
    "Summarize the following text in one sentence.",
    "Translate the sentence into French.",
    "Classify the sentiment of the review as positive, negative or neutral.",
    "Write a short poem about the sea.",
    "Answer the question using the context below.",
    "List three ideas for a weekend trip.",
    "Explain the concept to a ten year old.",
    "Rewrite the paragraph in a formal tone.",
    "Give me a JSON object with the fields name and age.",
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "Convert the table to CSV.",
    "Fix the bug in this function.",
    "You are a helpful assistant.",
    "You are a concise assistant that answers in one word.",
)


def _sentence(rng: random.Random) -> str:
    """One English-like sentence: subject, verb, optional object and prepositional phrase."""
    pick = rng.choice
    if rng.random() < 0.3:
        subject = pick(_NAMES[:26]) if rng.random() < 0.5 else pick(_PRONOUNS)
    else:
        adj = f"{pick(_ADJECTIVES)} " if rng.random() < 0.4 else ""
        subject = f"{pick(_DETERMINERS)} {adj}{pick(_NOUNS)}"
    verb = pick(_PAST) if rng.random() < 0.5 else pick(_VERBS)
    if rng.random() < 0.3:
        verb = f"{pick(_ADVERBS)} {verb}"
    words = [subject, verb]
    if rng.random() < 0.8:
        adj = f"{pick(_ADJECTIVES)} " if rng.random() < 0.5 else ""
        words.append(f"{pick(_DETERMINERS)} {adj}{pick(_NOUNS)}")
    if rng.random() < 0.5:
        words.append(f"{pick(_PREPOSITIONS)} {pick(_DETERMINERS)} {pick(_NOUNS)}")
    if rng.random() < 0.2:
        words.append(f"{pick(_CONJUNCTIONS)} {pick(_PRONOUNS)} {pick(_VERBS)} {pick(_NOUNS)}s")
    if rng.random() < 0.1:
        words.append(f"in {rng.randint(1900, 2030)}")
    if rng.random() < 0.05:
        words.append(pick(_FOREIGN))
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    end = rng.choices([".", "!", "?", "...", ";", ":"], weights=[70, 8, 12, 3, 3, 4])[0]
    if rng.random() < 0.15:
        # Quoted speech and commas.
        text = f'{text}, "{pick(_ADJECTIVES)} {pick(_NOUNS)}"'
    return text + end


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))


def _number(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randint(0, 100))
    if kind == 1:
        return str(rng.randint(100, 1_000_000))
    if kind == 2:
        return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 4)}f}"
    if kind == 3:
        return f"{rng.randint(1, 99)}%"
    if kind == 4:
        return f"${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}"
    if kind == 5:
        return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    op = rng.choice("+-*")
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a} {op} {b} = {result}"


def _json_snippet(rng: random.Random) -> str:
    obj: dict = {
        "name": rng.choice(_NAMES[:26]),
        "age": rng.randint(1, 99),
        "city": rng.choice(_NAMES[26:36]),
        "tags": [rng.choice(_NOUNS) for _ in range(rng.randint(0, 3))],
        "active": rng.random() < 0.5,
        "score": round(rng.uniform(0, 1), 3),
        "note": None if rng.random() < 0.5 else _sentence(rng),
    }
    keys = rng.sample(list(obj), rng.randint(2, len(obj)))
    obj = {k: obj[k] for k in keys}
    if rng.random() < 0.3:
        return json.dumps(
            {
                "messages": [
                    {"role": "user", "content": _sentence(rng)},
                    {"role": "assistant", "content": _sentence(rng)},
                ]
            }
        )
    return json.dumps(obj, indent=2 if rng.random() < 0.5 else None, ensure_ascii=False)


def _csv_snippet(rng: random.Random) -> str:
    lines = ["id,name,city,amount,date"]
    for i in range(rng.randint(2, 5)):
        lines.append(
            f"{i + 1},{rng.choice(_NAMES[:26])},{rng.choice(_NAMES[26:36])},"
            f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d},{_number_date(rng)}"
        )
    return "\n".join(lines)


def _number_date(rng: random.Random) -> str:
    return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _markdown_snippet(rng: random.Random) -> str:
    title = " ".join(rng.choice(_NOUNS) for _ in range(rng.randint(1, 3))).title()
    parts = [f"{'#' * rng.randint(1, 3)} {title}", "", _sentence(rng), ""]
    for i in range(rng.randint(2, 4)):
        bullet = rng.choice(["-", "*", f"{i + 1}."])
        parts.append(f"{bullet} **{rng.choice(_NOUNS)}**: {_sentence(rng)}")
    if rng.random() < 0.4:
        parts += ["", "| Name | Value |", "|------|-------|"]
        parts += [f"| {rng.choice(_NOUNS)} | {_number(rng)} |" for _ in range(2)]
    if rng.random() < 0.3:
        parts += ["", f"> {_sentence(rng)}", "", f"See [the docs](https://example.com/{rng.choice(_NOUNS)})."]
    return "\n".join(parts)


def _code_snippet(rng: random.Random) -> str:
    name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    arg = rng.choice(_NOUNS)
    if rng.random() < 0.7:
        return (
            f"```python\ndef {name}({arg}s):\n"
            f'    """{_sentence(rng)}"""\n'
            f"    result = []\n"
            f"    for {arg} in {arg}s:\n"
            f"        if {arg} is not None and len({arg}) > {rng.randint(0, 9)}:\n"
            f"            result.append({arg})\n"
            f"    return result\n```"
        )
    return (
        f"```javascript\nfunction {name.replace('_', '')}({arg}) {{\n"
        f"  const value = {arg}.map((x) => x * {rng.randint(2, 9)});\n"
        f"  return value.filter((x) => x !== null);\n}}\n```"
    )


def _chat_snippet(rng: random.Random) -> str:
    """A conversation rendered with the chatml markers, as the training data will look."""
    parts = []
    if rng.random() < 0.5:
        parts.append(f"<|im_start|>system\n{rng.choice(_INSTRUCTIONS[-2:])}<|im_end|>\n")
    for _ in range(rng.randint(1, 3)):
        user = rng.choice(_INSTRUCTIONS[:-2]) + ("\n\n" + _paragraph(rng) if rng.random() < 0.5 else "")
        parts.append(f"<|im_start|>user\n{user}<|im_end|>\n")
        parts.append(f"<|im_start|>assistant\n{_paragraph(rng)}<|im_end|>\n")
    return "<s>" + "".join(parts)


def _alpaca_snippet(rng: random.Random) -> str:
    text = f"### Instruction:\n{rng.choice(_INSTRUCTIONS[:-2])}\n\n"
    if rng.random() < 0.5:
        text += f"### Input:\n{_sentence(rng)}\n\n"
    return text + f"### Response:\n{_paragraph(rng)}</s>"


def builtin_corpus(seed: int = 0, n_docs: int = 3000) -> list[str]:
    """Return `n_docs` deterministic, English-like training texts (a few hundred kilobytes).

    The mix: prose paragraphs, numbers and arithmetic, JSON, CSV, markdown, code, and chatml /
    Alpaca-formatted conversations. Same `seed` and `n_docs` → the same list, always.
    """
    rng = random.Random(seed)
    makers = (
        (_paragraph, 50),
        (lambda r: " ".join(_number(r) for _ in range(r.randint(3, 10))), 5),
        (_arithmetic, 3),
        (_json_snippet, 8),
        (_csv_snippet, 4),
        (_markdown_snippet, 8),
        (_code_snippet, 6),
        (_chat_snippet, 12),
        (_alpaca_snippet, 4),
    )
    fns = [fn for fn, _ in makers]
    weights = [w for _, w in makers]
    docs = [rng.choices(fns, weights=weights)[0](rng) for _ in range(n_docs)]
    # Every vocabulary word at least once, in lower and title case, so each can become one token.
    vocab_words = sorted(
        set(
            _DETERMINERS
            + _PRONOUNS
            + _NOUNS
            + _VERBS
            + _PAST
            + _ADJECTIVES
            + _ADVERBS
            + _PREPOSITIONS
            + _CONJUNCTIONS
            + _NAMES
            + _FOREIGN
        )
    )
    docs.append(" ".join(vocab_words))
    docs.append(" ".join(w.capitalize() for w in vocab_words))
    docs.extend(_INSTRUCTIONS)
    return docs
