"""The teacher: its HTTP client (`client`), the pool of endpoints it routes over (`pool`), and the
retry policy every HTTP call of hfdistill follows (`retry`)."""
