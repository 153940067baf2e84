"""The pure layer: values, errors, parsing, scoring, templates, prompts, the rollout loop and row shaping.

Nothing here talks to a server; everything above builds on it.
"""
