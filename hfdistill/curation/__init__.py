"""Curation: what turns a run's rollouts into training data, as pure functions over rows.

`flags` (quality flags of one trajectory), `judge` (the LLM judge's prompt and the parsing of its
verdict), `select` (one notion of "correct", pass rates, `--keep`, best-of-n, down-sampling),
`tokens` (the length of a row as verl renders it for the student) and `funnel` (the yield of every
stage). They import only core modules; `generate` and `curate` apply them when a file is written.
"""
