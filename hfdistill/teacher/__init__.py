"""The teacher: its HTTP client (`client`), what vLLM answers read and validated (`replies`), the
pool of endpoints it routes over (`pool`), and the retry policy every HTTP call follows (`retry`)."""
