"""Retrieval: the Search-R1 API (`protocol`), its HTTP client (`http`), a corpus's passages and terms
(`corpus`), the embedded BM25 index and retriever (`bm25_index`, `bm25`), dense retrieval (`encoder`,
`faiss_file`, `topk`, `knn`, `batcher`, `corpus_rows`, `dense_index`, `dense`, `extras`), their fusion
(`hybrid`), the choice among them (`embedded`), Search-R1's published wiki-18 (`download`), a corpus's
fingerprint (`fingerprint`), and a Search-R1-compatible server over any of them (`server`).

Submodules are imported where used: the BM25 ones bring numpy and bm25s, the dense ones torch,
transformers and (on CPU) faiss, the server aiohttp's web.
"""
