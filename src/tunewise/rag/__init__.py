"""Retrieval over the user's documents, measured as arms beside prompting and fine-tuning.

    ingest    documents (Markdown, text, HTML) -> chunks, with what was skipped and why
    index     chunks -> a content-addressed, versioned index (BM25 + dense embeddings)
    retrieve  a query -> the top passages, BM25 and dense fused by reciprocal rank

The arms (`rag`, `rag+fine-tuned`) put the passages in the prompt; see docs/rag.md.
"""
