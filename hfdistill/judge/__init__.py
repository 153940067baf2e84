"""The LLM judge: its client, its prompt and the verdicts it gives."""
