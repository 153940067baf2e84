"""A run's bookkeeping: the input, its identity, the journal, the account of every rollout, the output."""
