"""Publishing an output: its dataset card (`card`, merged into an existing one by `merge`), the Hub
push (`hub`), and readable renderings (`render` for the terminal, `report` for a self-contained HTML page)."""
