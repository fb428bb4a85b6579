"""The built-in skills suite: procedural instruction tasks, seeded, no external data.

Made for a tiny model trained from scratch in minutes on CPU: short inputs and answers, a small
made-up vocabulary, and phrasings that share each family's keywords. See `families` for the task
families and `suite` for the splits::

    from instillm.data.skills import SuiteConfig, build_suite, write_suite
    paths = write_suite(build_suite(SuiteConfig(seed=0)), "data/skills")
"""

from instillm.data.skills.families import (
    CATEGORIES,
    DEFAULT_HELDOUT_FAMILIES,
    FAMILIES,
    Family,
    render,
)
from instillm.data.skills.suite import (
    EVAL_SPLITS,
    SPLITS,
    SuiteConfig,
    baseline_exact_match,
    build_suite,
    check,
    family_of,
    heldout_family_names,
    list_families,
    make_example,
    write_suite,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_HELDOUT_FAMILIES",
    "EVAL_SPLITS",
    "FAMILIES",
    "Family",
    "SPLITS",
    "SuiteConfig",
    "baseline_exact_match",
    "build_suite",
    "check",
    "family_of",
    "heldout_family_names",
    "list_families",
    "make_example",
    "render",
    "write_suite",
]
