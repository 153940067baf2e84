"""Run inside the vLLM venv (not the project's): tiny models and a scripted logits processor for the real-engine tests.

Nothing here imports hfdistill. `build_model` and `scripted` import torch / transformers / vLLM, which only the
vLLM venv has; `scenarios` is pure Python and is shared with the tests.
"""
