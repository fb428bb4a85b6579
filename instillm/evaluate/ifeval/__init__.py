"""IFEval: Google's verifiable instruction-following benchmark, implemented from its semantics."""

from instillm.evaluate.ifeval.evaluate import (
    PromptResult,
    evaluate_responses,
    load_inputs,
    load_responses,
    score_file,
    summarize,
    write_outputs,
)
from instillm.evaluate.ifeval.registry import INSTRUCTIONS, check, get_checker

__all__ = [
    "INSTRUCTIONS",
    "PromptResult",
    "check",
    "evaluate_responses",
    "get_checker",
    "load_inputs",
    "load_responses",
    "score_file",
    "summarize",
    "write_outputs",
]
