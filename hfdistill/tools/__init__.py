"""Tools that do I/O, behind the tool seam of `core.tools`: `open` (a document of the embedded corpus) and
MCP servers' tools; `toolset` assembles what a run offers."""
