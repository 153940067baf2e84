"""The teacher: its HTTP client (`client`), what vLLM answers read and validated (`replies`), the
pool of endpoints it routes over (`pool`), and what the servers were found to serve (`served`)."""
