"""What each command does, as library functions: generate, curate, and the summary of a run."""
