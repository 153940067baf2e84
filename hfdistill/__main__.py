"""`python -m hfdistill` runs the command-line interface."""

from hfdistill.cli.main import main

raise SystemExit(main())
