"""A stand-in for vLLM in fast tests (see api_server.py)."""
