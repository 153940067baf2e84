"""Curation: what turns a run's rollouts into training data, as pure functions over rows.

`flags` (quality flags of one trajectory), `select` (one notion of "correct", pass rates, `--keep`,
best-of-n, down-sampling), `tokens` (the length of a row as verl renders it for the student),
`funnel` (the yield of every stage), `rows` (output rows with their flags and verdict) and
`pipeline` (applying them question by question). The judge itself is `judge/`; `commands.generate`
and `commands.curate` apply curation when a file is written.
"""
