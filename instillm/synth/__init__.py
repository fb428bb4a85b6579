"""Dataset creation and curation: dedup (exact, MinHash-LSH, greedy ROUGE-L), decontamination, filters.

Every curation step reads canonical JSONL, writes the kept examples to OUT and every removed
row, with its reason, to OUT.rejects.jsonl (the importer's rejects format), so that
`n_kept + rejected == n_in`. See `curate` (shared plumbing), `dedup`, `decontaminate` and
`filters`.
"""
