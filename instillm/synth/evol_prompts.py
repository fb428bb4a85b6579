"""The Evol-Instruct prompts (WizardLM, arXiv:2304.12244, and nlpxucan/WizardLM Evol_Instruct/).

In-depth evolving: one base prompt with a method line per operation (depth.py), plus the
"complicate input" prompt of the paper's appendix, which asks for data of a given format
(XML, SQL, code...) as input. In-breadth evolving: breadth.py's "Prompt Creator". Elimination:
the paper's equality prompt (Appendix G), "requirments" typo included. Lines are joined with "\\n"
where the originals use "\\r\\n" plus source indentation (an artifact of Python line continuation).
"""

from __future__ import annotations

_DEPTH_BASE = (
    "I want you act as a Prompt Rewriter.\n"
    "Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems "
    "(e.g., chatgpt and GPT4) a bit harder to handle.\n"
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
    "Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#:. "
    "Also, please do not omit the input in #The Given Prompt#. \n"
    "You SHOULD complicate the given prompt using the following method: \n"
    "{method} \n"
)

_INPUT_BASE = (
    "I want you act as a Prompt Rewriter.\n"
    "Your objective is to rewrite a given prompt into a more complex version using dataformat to make those "
    "famous AI systems (e.g., chatgpt and GPT4) more difficult to handle.\n"
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
    "You must add {data_format} format text as input data in #Rewritten Prompt#\n"
)

_DEPTH_TAIL = (
    "You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# can only "
    "add 10 to 20 words into #The Given Prompt#. \n"
    "'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear "
    "in #Rewritten Prompt#\n"
    "#The Given Prompt#: \n {instruction} \n"
    "#Rewritten Prompt#:\n"
)

DEPTH_METHODS = {
    "add_constraints": "Please add one more constraints/requirements into #The Given Prompt#'",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
    "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can "
    "rewrite it to explicitly request multiple-step reasoning.",
}

BREADTH = (
    "I want you act as a Prompt Creator.\n"
    "Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.\n"
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.\n"
    "The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.\n"
    "The #Created Prompt# must be reasonable and must be understood and responded by humans.\n"
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#\n"
    "#Given Prompt#: \n {instruction} \n"
    "#Created Prompt#:\n"
)

EQUALITY = (
    "Here are two Instructions to ChatGPT AI, do you think they are equal to each other, which meet the "
    "following requirements:\n"
    "1. They have same constraints and requirments.\n"
    "2. They have same depth and breadth of the inquiry.\n"
    "The First Prompt: {first}\n"
    "The Second Prompt: {second}\n"
    "Your Judgement (Just answer: Equal or Not Equal. No need to explain the reason.):"
)

OPERATIONS = (*DEPTH_METHODS, "complicate_input", "breadth")


def evolve_prompt(operation: str, instruction: str, data_format: str = "") -> str:
    """The evolving prompt of `operation` for `instruction` (`data_format` for complicate_input)."""
    if operation == "breadth":
        return BREADTH.format(instruction=instruction)
    if operation == "complicate_input":
        return _INPUT_BASE.format(data_format=data_format) + _DEPTH_TAIL.format(instruction=instruction)
    if operation not in DEPTH_METHODS:
        raise KeyError(operation)
    return _DEPTH_BASE.format(method=DEPTH_METHODS[operation]) + _DEPTH_TAIL.format(instruction=instruction)


def equality_prompt(first: str, second: str) -> str:
    """The paper's "are these two instructions equal?" prompt."""
    return EQUALITY.format(first=first, second=second)
