"""Retrieval: the Search-R1 API (`protocol`), its HTTP client (`http`), a corpus's passages and terms
(`corpus`), the embedded BM25 index and retriever (`bm25_index`, `bm25`), and a Search-R1-compatible
server over it (`server`).

Submodules are imported where used: the BM25 ones bring numpy and bm25s, the server aiohttp's web.
"""
