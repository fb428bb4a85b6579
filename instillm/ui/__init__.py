"""`instillm ui`: a browser UI over the library, built on Gradio (the `ui` extra).

Tabs: Data (rows rendered as training renders them, the mask audit, rejects, a keep/drop/edit review
and the data card), Runs (config, plan, live curves, before/after tables, a failure browser) and Chat
(two models, or a model and an OpenAI-compatible endpoint, side by side). The logic lives in plain
functions, one module per tab (`data_tab`, `runs_tab`, `chat_tab`), testable without Gradio;
`app` wires them into a `gr.Blocks` and is the only module that imports Gradio.
"""
