"""`python -m hfdistill` runs the command-line interface."""

from hfdistill.cli import main

raise SystemExit(main())
