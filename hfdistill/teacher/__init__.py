"""The teacher: its HTTP client (`client`), its start-up probes (`startup`), what vLLM answers read and
validated (`replies`), the pool of endpoints it routes over (`pool`), and what the servers serve (`served`).
Every request goes through the HTTP edge (hfdistill/edge.py)."""
