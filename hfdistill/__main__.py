"""`python -m hfdistill` runs the command-line interface."""

from hfdistill.cli.main import main

if __name__ == "__main__":  # (a worker process started with `spawn` imports this module too)
    raise SystemExit(main())
