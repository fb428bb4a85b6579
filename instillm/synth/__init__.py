"""Dataset creation with a teacher LLM: Self-Instruct (bootstrapped from seed tasks, the published
filters and ROUGE-L rejection) and Evol-Instruct (in-depth and in-breadth evolution with
elimination), both on one resumable, journaled pipeline (`pipeline`). The teacher is any
`instillm.llm` backend; curation of the output lives in `instillm.curate`.
"""
