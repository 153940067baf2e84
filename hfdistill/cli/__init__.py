"""The command line: the only code that reads argv and environment variables (`hfdistill.cli.main`)."""
