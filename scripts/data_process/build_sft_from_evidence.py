r"""Build SFT conversations (sharegpt JSONL) for questions that name their evidence passages.

    python start_retrieval.py --retriever dense --corpus DATA/corpus.jsonl --index DATA.faiss &
    python scripts/data_process/build_sft_from_evidence.py --questions DATA/train.jsonl \
        --corpus DATA/corpus.jsonl --retrieval-url http://127.0.0.1:8000/retrieve --mode multi \
        --out data/sft/evidence_multi.jsonl [--topk K] [--tokenizer MODEL_DIR --max-obs-length N]

For every question with `supporting_ids`: per round a short plan and a `<search>` aimed at its
supporting passages (round 1: the titles the question names, and in multi mode the question as
asked alongside; later rounds: the titles of passages not found yet; single mode: one query per
round), the `<information>` the retrieval server returns for those queries,
formatted as the agent formats it (and, with --tokenizer, cut to max_obs_length tokens as the
rollout cuts it), then the first golden answer; rag_r1/sft/evidence.py writes the text.
A question is dropped and counted when its searches did not bring back all its supporting passages
(`dropped_missing_evidence`) or the cut left one of them out (`dropped_evidence_cut`). All queries
of the set go to the server in batched requests. Prints the counts as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rag_r1.search.client import RetrievalClient
from rag_r1.search.corpus import iter_passages, split_title
from rag_r1.llm_agent.config import MODES, AgentConfig
from rag_r1.llm_agent.modes import build_mode
from rag_r1.sft.evidence import FINAL_THOUGHTS, build_dataset, read_evidence_questions, token_cut


def main(argv: list[str] | None = None, retriever=None) -> dict[str, int]:
    """`retriever` replaces the HTTP client (anything with `.retrieve(queries, topk)`), for tests."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, required=True, help="question JSONL with supporting_ids")
    parser.add_argument("--corpus", type=Path, required=True, help="the corpus the server serves (for titles)")
    parser.add_argument("--retrieval-url", required=retriever is None, nargs="+",
                        help="retrieval server URL(s), e.g. http://127.0.0.1:8000/retrieve")
    parser.add_argument("--mode", choices=MODES, required=True, help="single: one query per round; multi: up to --max-queries per round")
    parser.add_argument("--out", type=Path, required=True, help="sharegpt JSONL to write")
    parser.add_argument("--topk", type=int, default=AgentConfig.topk,
                        help="passages per query, as agent.topk (default %(default)s)")
    parser.add_argument("--max-queries", type=int, default=AgentConfig.max_queries,
                        help="multi mode: queries per round, as agent.max_queries (default %(default)s)")
    parser.add_argument("--delimiter", default=AgentConfig.query_delimiter,
                        help="multi mode: query separator, as agent.query_delimiter (default %(default)r)")
    parser.add_argument("--batch-size", type=int, default=256, help="queries per retrieval request (default 256)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer dir of the model to train: cut each observation to --max-obs-length "
                             "tokens as the rollout does (default: no cut)")
    parser.add_argument("--max-obs-length", type=int, default=AgentConfig.max_obs_length,
                        help="tokens of one <information> block, tags included, as agent.max_obs_length "
                             "(default %(default)s)")
    parser.add_argument("--final-thought", choices=FINAL_THOUGHTS, default="fixed",
                        help="the thought before the answer: fixed, or quote (the supporting sentence holding the "
                             "answer, the fixed one when none does) (default %(default)s)")
    parser.add_argument("--unseen-passages", action="store_true",
                        help="show each passage once per conversation, as agent.unseen_passages")
    args = parser.parse_args(argv)
    for path in (args.questions, args.corpus):
        if not path.is_file():
            parser.error(f"file not found: {path}")
    if args.topk < 1 or args.max_queries < 1 or args.batch_size < 1:
        parser.error("--topk, --max-queries and --batch-size must be >= 1")

    titles = {p["id"]: split_title(p["contents"])[0] for p in iter_passages(args.corpus)}
    questions, without = read_evidence_questions(args.questions, titles)
    if retriever is None:
        retriever = RetrievalClient(args.retrieval_url)
    cut = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        cut = token_cut(AutoTokenizer.from_pretrained(args.tokenizer), args.max_obs_length)
    mode = build_mode(args.mode, args.max_queries, args.delimiter)
    samples, stats = build_dataset(questions, titles, retriever, mode, args.topk, args.batch_size, cut,
                                   args.final_thought, args.unseen_passages)
    stats["skipped_no_supporting_ids"] = without
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    print(json.dumps({**stats, "mode": args.mode, "out": str(args.out)}))
    return stats


if __name__ == "__main__":
    main()
