"""RAG-R1's HotpotQA RL split -> train/test parquet with the MULTI-query instruction.

    python -m scripts.data_process.hotpotqa_search_mq --input-dir ../shared/data/ragr1_rl/hotpotqa_train_filter_mq \
        --out data/hotpotqa_mq

Same arguments and output as `hotpotqa_search` (which holds the implementation).
"""
from __future__ import annotations

from scripts.data_process.hotpotqa_search import main

if __name__ == "__main__":
    main(mode="multi")
