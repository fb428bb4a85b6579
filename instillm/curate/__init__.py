"""Curation of canonical data: dedup (exact, MinHash-LSH, greedy ROUGE-L), decontamination against
eval sets, filters (length, language, blacklist, response quality) and quality scores (IFD, LLM
ratings).

Every step reads canonical JSONL, writes the kept examples to OUT and every removed row, with its
reason, to OUT.rejects.jsonl (the importer's rejects format), so that `n_kept + rejected == n_in`.
`common` holds the shared plumbing.
"""
