"""The teacher: its HTTP client (`client`), its start-up probes (`startup`), what vLLM answers read and
validated (`replies`), the pool of endpoints it routes over (`pool`), what the servers serve (`served`), whether the
servers hfdistill runs are up (`lifecycle`), and those servers themselves (`serve/`). Every request goes through the
HTTP edge (hfdistill/edge.py)."""
