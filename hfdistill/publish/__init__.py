"""Publishing an output: its dataset card (`card`), the Hub push (`hub`), and readable renderings
(`render` for the terminal, `report` for a self-contained HTML page)."""
