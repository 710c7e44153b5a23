"""RAG-R1: teach LLMs to search while they reason (multi-query retrieval-augmented RL)."""
