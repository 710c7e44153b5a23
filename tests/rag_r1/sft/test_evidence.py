"""SFT conversations from evidence: exact text per mode, dropped counts, batching, no retrieved text
in the model's turns, and the CLI against a real BM25 retrieval server on loopback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_r1.llm_agent.prompts import user_content
from rag_r1.search.corpus import split_title
from rag_r1.search.launcher import ServerProcess
from rag_r1.llm_agent.generation import INFO_CLOSE, INFO_OPEN
from rag_r1.llm_agent.modes import build_mode
from rag_r1.sft.evidence import (QUOTE_WORDS, EvidenceQuestion, build_dataset, conversation, evidence_quote, observation,
                                 title_queries, token_cut)
from scripts.data_process import build_sft_from_evidence


PASSAGES = {
    "e0": '"Ada Lovelace"\nAda Lovelace wrote the first program for the Analytical Engine.',
    "e1": '"Analytical Engine"\nThe Analytical Engine was designed by Charles Babbage.',
    "e2": '"Mount Everest"\nMount Everest is the highest mountain on Earth.',
    "e3": '"Tenzing Norgay"\nTenzing Norgay reached the summit in 1953.',
    "e4": '"Paris, Texas"\nParis, Texas is a city in Lamar County.',
}
TITLES = {pid: split_title(contents)[0] for pid, contents in PASSAGES.items()}
SINGLE, MULTI = build_mode("single"), build_mode("multi")

ADA = EvidenceQuestion("q1", "Who designed the machine Ada Lovelace programmed", "Charles Babbage", ("e0", "e1"))
EVEREST = EvidenceQuestion("q2", "When was Everest first climbed?", "1953", ("e2", "e3"))


class StubRetriever:
    """Answers each query with fixed passage ids (an unknown query finds nothing); records every call
    (one call = one request)."""

    def __init__(self, results: dict[str, list[str]]):
        self.results = results
        self.calls: list[tuple[list[str], int]] = []

    def retrieve(self, queries: list[str], topk: int) -> list[list[dict]]:
        self.calls.append((list(queries), topk))
        return [[stub_hit(pid) for pid in self.results.get(q, [])[:topk]] for q in queries]


def counts(**given: int) -> dict[str, int]:
    """build_dataset's counts: the given ones, every other one 0."""
    return {key: given.get(key, 0) for key in
            ("questions", "kept", "dropped_missing_evidence", "dropped_evidence_cut", "observations_cut", "quoted")}


def stub_hit(pid: str) -> dict:
    return {"id": pid, "contents": PASSAGES[pid], "score": 1.0}


def stub() -> StubRetriever:
    return StubRetriever({
        "Ada Lovelace": ["e0", "e1"],
        "Analytical Engine": ["e1", "e0"],
        "Mount Everest": ["e2", "e0"],
        "Tenzing Norgay": ["e4", "e1"],  # misses e3: EVEREST's evidence is incomplete
        "Paris Texas": ["e4"],
        "Paris, Texas": ["e4", "e0"],
    })


COMPARE = EvidenceQuestion("q8", "Who designed the machine Ada Lovelace programmed, the Analytical Engine",
                           "Charles Babbage", ("e0", "e1"))


def test_multi_mode_conversation_exact_text():
    # The question names both titles, so one round searches them together.
    samples, stats = build_dataset([COMPARE], TITLES, stub(), MULTI, topk=2)
    assert stats == counts(questions=1, kept=1)
    assert samples == [{"conversations": [
        {"from": "human", "value": user_content(COMPARE.question, "multi")},
        {"from": "gpt", "value": "<think> I will search Ada Lovelace and Analytical Engine in parallel. </think>\n"
                                 "<search> Ada Lovelace, Analytical Engine </search>"},
        {"from": "observation", "value":
            '\n<information>\n{"query": ["Ada Lovelace", "Analytical Engine"], "documents": ['
            '"Doc 1(Title: Ada Lovelace) Ada Lovelace wrote the first program for the Analytical Engine.\\n'
            'Doc 2(Title: Analytical Engine) The Analytical Engine was designed by Charles Babbage.", '
            '"Doc 1(Title: Analytical Engine) The Analytical Engine was designed by Charles Babbage.\\n'
            'Doc 2(Title: Ada Lovelace) Ada Lovelace wrote the first program for the Analytical Engine."]}'
            '\n</information>\n'},
        {"from": "gpt", "value": "<think> The passages I found give the answer. </think>\n"
                                 "<answer> Charles Babbage </answer>"},
    ]}]
    assert samples[0]["conversations"][0]["value"].endswith(
        "Question: Who designed the machine Ada Lovelace programmed, the Analytical Engine?")


def test_single_mode_searches_one_title_per_round_exact_text():
    samples, _ = build_dataset([ADA], TITLES, stub(), SINGLE, topk=1)
    assert [t["from"] for t in samples[0]["conversations"]] == \
        ["human", "gpt", "observation", "gpt", "observation", "gpt"]
    assert [t["value"] for t in samples[0]["conversations"][1:]] == [
        "<think> To answer this I will first look up Ada Lovelace. </think>\n<search> Ada Lovelace </search>",
        "\n<information>\nDoc 1(Title: Ada Lovelace) Ada Lovelace wrote the first program for the Analytical Engine."
        "\n</information>\n",
        "<think> Next I need to look up Analytical Engine. </think>\n<search> Analytical Engine </search>",
        "\n<information>\nDoc 1(Title: Analytical Engine) The Analytical Engine was designed by Charles Babbage."
        "\n</information>\n",
        "<think> The passages I found give the answer. </think>\n<answer> Charles Babbage </answer>",
    ]
    assert samples[0]["conversations"][0]["value"] == user_content(ADA.question, "single")


BRIDGE = EvidenceQuestion("q6", "Who programmed the Analytical Engine first?", "Ada Lovelace", ("e0", "e1"))


def search_rounds(sample: dict) -> list[str]:
    return [t["value"].split("<search> ")[1].removesuffix(" </search>")
            for t in sample["conversations"] if t["from"] == "gpt" and "<search>" in t["value"]]


def test_the_title_the_question_names_is_searched_first():
    # The question names the Analytical Engine, not Ada Lovelace (its second hop).
    samples, _ = build_dataset([BRIDGE], TITLES, stub(), SINGLE, topk=1)
    assert search_rounds(samples[0]) == ["Analytical Engine", "Ada Lovelace"]


def test_multi_mode_searches_a_bridge_questions_named_title_with_the_question_itself():
    # The question finds nothing here: the unnamed second hop comes in round 2, after reading round 1.
    samples, stats = build_dataset([BRIDGE], TITLES, stub(), MULTI, topk=1)
    assert stats == counts(questions=1, kept=1)
    assert search_rounds(samples[0]) == ["Analytical Engine, Who programmed the Analytical Engine first?",
                                         "Ada Lovelace"]
    assert samples[0]["conversations"][1]["value"].startswith(
        "<think> I will search Analytical Engine and the whole question in parallel. </think>")
    assert samples[0]["conversations"][3]["value"] == "<think> Next I will search Ada Lovelace. </think>\n" \
        "<search> Ada Lovelace </search>"
    # When the question itself brings the second hop back, one round holds all the evidence.
    found = stub()
    found.results[BRIDGE.question] = ["e0"]
    samples, _ = build_dataset([BRIDGE], TITLES, found, MULTI, topk=1)
    assert search_rounds(samples[0]) == ["Analytical Engine, Who programmed the Analytical Engine first?"]
    assert samples[0]["conversations"][1]["value"] == (
        "<think> I will search Analytical Engine and the whole question in parallel. </think>\n"
        "<search> Analytical Engine, Who programmed the Analytical Engine first? </search>")
    assert MULTI.queries_of(search_rounds(samples[0])[0]) == ["Analytical Engine", BRIDGE.question]
    # Single mode keeps one query per round: the named title, then the missing one.
    samples, _ = build_dataset([BRIDGE], TITLES, found, SINGLE, topk=1)
    assert search_rounds(samples[0]) == ["Analytical Engine", "Ada Lovelace"]


def test_a_question_naming_no_title_is_searched_as_asked_first():
    # "Everest" is not the title "Mount Everest": no guessing of titles the question does not give.
    retriever = StubRetriever({EVEREST.question: ["e2"], "Tenzing Norgay": ["e3"], "Mount Everest": ["e2"]})
    for mode in (SINGLE, MULTI):
        samples, stats = build_dataset([EVEREST], TITLES, retriever, mode, topk=1)
        assert stats == counts(questions=1, kept=1)
        assert search_rounds(samples[0]) == ["When was Everest first climbed?", "Tenzing Norgay"]
    # A question with a delimiter reads, in multi mode, as one query.
    commas = EvidenceQuestion("q9", "Where, in Texas, is Paris?", "Lamar County", ("e4",))
    retriever = StubRetriever({"Where in Texas is Paris?": ["e4"]})
    samples, _ = build_dataset([commas], TITLES, retriever, MULTI, topk=1)
    assert search_rounds(samples[0]) == ["Where in Texas is Paris?"]


def test_questions_missing_evidence_are_dropped_and_counted():
    third = EvidenceQuestion("q3", "Which county is Paris, Texas in?", "Lamar County", ("e4",))
    samples, stats = build_dataset([ADA, EVEREST, third], TITLES, stub(), MULTI, topk=3)
    assert stats == counts(questions=3, kept=2, dropped_missing_evidence=1)
    assert [s["conversations"][-1]["value"].split("<answer> ")[1] for s in samples] == \
        ["Charles Babbage </answer>", "Lamar County </answer>"]
    # topk=1 in single mode: "Analytical Engine" still brings e1, but EVEREST still lacks e3.
    _, stats = build_dataset([ADA, EVEREST], TITLES, stub(), SINGLE, topk=1)
    assert stats == counts(questions=2, kept=1, dropped_missing_evidence=1)


def test_each_round_of_the_whole_set_goes_in_batched_requests_each_query_once():
    retriever = stub()
    again = EvidenceQuestion("q4", "Who wrote for the Analytical Engine?", "Ada Lovelace", ("e1", "e0"))
    build_dataset([ADA, EVEREST, again], TITLES, retriever, MULTI, topk=2, batch_size=3)
    # Round 1: each question's named title and the question itself; round 2: only titles still
    # missing (q1 and q4 found both passages by their named title; EVEREST found nothing).
    assert retriever.calls == [
        (["Ada Lovelace", ADA.question, EVEREST.question], 2), (["Analytical Engine", again.question], 2),
        (["Mount Everest", "Tenzing Norgay"], 2),
    ]


def test_model_turns_never_hold_retrieved_text():
    third = EvidenceQuestion("q3", "Which county is Paris, Texas in?", "Lamar County", ("e4",))
    for mode in (SINGLE, MULTI):
        samples, _ = build_dataset([ADA, EVEREST, third], TITLES, stub(), mode, topk=3)
        gpt_values = [t["value"] for s in samples for t in s["conversations"] if t["from"] == "gpt"]
        # kept: q1 and q3, each one round (topk=3 brings q1's second passage with its first) + answer
        assert len(gpt_values) == 4
        for value in gpt_values:
            assert "<information>" not in value and "</information>" not in value
            assert not any(split_title(text)[1] in value for text in PASSAGES.values())


def test_multi_mode_titles_with_the_delimiter_survive_the_agents_split():
    question = EvidenceQuestion("q7", "Did Ada Lovelace ever visit Paris, Texas?", "no", ("e0", "e4", "e0"))
    # Both titles are named in the question, so their order is kept; duplicates go.
    assert title_queries(question, TITLES, SINGLE) == ["Ada Lovelace", "Paris, Texas"]
    queries = title_queries(question, TITLES, MULTI)
    assert queries == ["Ada Lovelace", "Paris Texas"]
    assert MULTI.join_queries(queries) == "Ada Lovelace, Paris Texas"
    assert MULTI.queries_of("Ada Lovelace, Paris Texas") == queries


def test_observations_are_cut_to_the_agents_token_budget(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tags = len(tokenizer.encode(INFO_OPEN, add_special_tokens=False)) + \
        len(tokenizer.encode(INFO_CLOSE, add_special_tokens=False))
    shown = [[[stub_hit("e0")]], [[stub_hit("e1")]]]
    rounds = [["Ada Lovelace"], ["Analytical Engine"]]
    full, seen = conversation(ADA, rounds, shown, SINGLE)
    assert seen == {"e0", "e1"}
    short, seen = conversation(ADA, rounds, shown, SINGLE, cut=token_cut(tokenizer, tags + 12))
    assert seen == set()  # no passage line survives whole
    for whole, cut in zip(full["conversations"], short["conversations"]):
        if whole["from"] != "observation":
            assert cut == whole
            continue
        body = whole["value"].removeprefix(INFO_OPEN).removesuffix(INFO_CLOSE)
        kept = cut["value"].removeprefix(INFO_OPEN).removesuffix(INFO_CLOSE)
        # Exactly the first 12 tokens of the results survive, between the intact tags.
        assert kept == tokenizer.decode(tokenizer.encode(body, add_special_tokens=False)[:12])
        assert body.startswith(kept) and len(kept) < len(body)
    samples, stats = build_dataset([ADA], TITLES, stub(), SINGLE, topk=1, cut=token_cut(tokenizer, tags + 12))
    assert samples == [] and stats == counts(questions=1, dropped_evidence_cut=1, observations_cut=2)
    # A budget that holds everything changes nothing.
    roomy, stats = build_dataset([ADA], TITLES, stub(), SINGLE, topk=1, cut=token_cut(tokenizer, 1000))
    assert roomy == [full] and stats["observations_cut"] == 0
    with pytest.raises(ValueError, match="max_obs_length=3 leaves no room"):
        token_cut(tokenizer, 3)


def test_multi_observation_counts_a_passage_seen_only_when_its_whole_line_survives():
    hits = [[stub_hit("e0"), stub_hit("e1")], [stub_hit("e2")]]
    queries = ["Ada Lovelace", "Analytical Engine"]
    block, seen = observation(queries, hits, MULTI)
    assert seen == {"e0", "e1", "e2"}
    # The JSON string escapes the newline between lines as backslash-n.
    _, seen = observation(queries, hits, MULTI, cut=lambda text: text[:text.index("\\nDoc 2")])
    assert seen == {"e0"}
    _, seen = observation(queries, hits, MULTI, cut=lambda text: text[:text.index('", "Doc 1')])
    assert seen == {"e0", "e1"}


# --- the CLI against the real server -----------------------------------------------------------

def write_files(tmp_path: Path) -> tuple[Path, Path]:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "contents": v}) + "\n" for k, v in PASSAGES.items()))
    questions = tmp_path / "train.jsonl"
    rows = [
        {"id": "q1", "question": ADA.question, "golden_answers": ["Charles Babbage", "Babbage"],
         "supporting_ids": ["e0", "e1"]},
        {"id": "q2", "question": EVEREST.question, "golden_answers": ["1953"], "supporting_ids": ["e2", "e3"]},
        {"id": "q5", "question": "No evidence here?", "golden_answers": ["x"]},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus, questions


@pytest.fixture
def bm25_server(tmp_path):
    from rag_r1.search.bm25 import build_bm25

    corpus, questions = write_files(tmp_path)
    index = build_bm25(corpus, tmp_path / "bm25")
    with ServerProcess(["--retriever", "bm25", "--corpus", corpus, "--index", index], tmp_path / "server.log") as server:
        yield server.retrieve_url, corpus, questions


def test_cli_against_real_bm25_server(bm25_server, tmp_path, capsys):
    url, corpus, questions = bm25_server
    out = tmp_path / "sft" / "multi.jsonl"
    stats = build_sft_from_evidence.main(["--questions", str(questions), "--corpus", str(corpus),
                                          "--retrieval-url", url, "--mode", "multi", "--out", str(out), "--topk", "2"])
    # BM25 finds both of q1's passages and both of q2's ("Mount Everest", "Tenzing Norgay" are in their titles).
    assert stats == {"questions": 2, "kept": 2, "dropped_missing_evidence": 0, "dropped_evidence_cut": 0,
                     "observations_cut": 0, "quoted": 0, "skipped_no_supporting_ids": 1}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kept"] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # "When was Everest first climbed?" names neither title in full: the question is searched as asked,
    # and the title it did not bring back comes next.
    assert rows[1]["conversations"][1]["value"].endswith("<search> When was Everest first climbed? </search>")
    assert rows[1]["conversations"][3]["value"].endswith("<search> Tenzing Norgay </search>")
    observation = rows[1]["conversations"][2]["value"]
    documents = json.loads(observation.removeprefix("\n<information>\n").removesuffix("\n</information>\n"))
    assert documents["query"] == ["When was Everest first climbed?"]
    assert documents["documents"][0].startswith("Doc 1(Title: Mount Everest) Mount Everest is the highest")
    second = rows[1]["conversations"][4]["value"]
    documents = json.loads(second.removeprefix("\n<information>\n").removesuffix("\n</information>\n"))
    assert documents["query"] == ["Tenzing Norgay"]
    assert documents["documents"][0].startswith("Doc 1(Title: Tenzing Norgay) Tenzing Norgay reached")
    assert rows[0]["conversations"][-1]["value"].endswith("<answer> Charles Babbage </answer>")
    from verl.utils.dataset.sft_dataset import parse_row  # the SFT trainer reads the rows as agent trajectories

    assert all(parse_row(row, where=f"row {i}").is_agent_trajectory for i, row in enumerate(rows))


def test_cli_names_a_supporting_id_missing_from_the_corpus(tmp_path):
    corpus, questions = write_files(tmp_path)
    questions.write_text(json.dumps({"id": "bad", "question": "q?", "golden_answers": ["a"],
                                     "supporting_ids": ["e0", "zz"]}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl: question 'bad' names supporting_ids \['zz'\]"):
        build_sft_from_evidence.main(["--questions", str(questions), "--corpus", str(corpus), "--mode", "single",
                                      "--out", str(tmp_path / "o.jsonl")], retriever=stub())


def test_quote_thought_quotes_the_supporting_sentence_that_holds_the_answer():
    yes_no = EvidenceQuestion("q9", "Did Ada Lovelace program the Analytical Engine?", "yes", ("e0", "e1"))
    samples, stats = build_dataset([ADA, yes_no], TITLES, stub(), MULTI, topk=2, final_thought="quote")
    assert stats == counts(questions=2, kept=2, quoted=1)
    assert samples[0]["conversations"][-1]["value"] == (
        "<think> Analytical Engine says: The Analytical Engine was designed by Charles Babbage. </think>\n"
        "<answer> Charles Babbage </answer>")
    # no sentence holds "yes": the fixed thought
    assert samples[1]["conversations"][-1]["value"] == (
        "<think> The passages I found give the answer. </think>\n<answer> yes </answer>")
    # everything before the answer turn is what the fixed thought gives
    fixed, _ = build_dataset([ADA], TITLES, stub(), MULTI, topk=2)
    assert samples[0]["conversations"][:-1] == fixed[0]["conversations"][:-1]
    with pytest.raises(ValueError, match="final_thought='cite'"):
        build_dataset([ADA], TITLES, stub(), MULTI, topk=2, final_thought="cite")


def test_a_long_sentence_is_quoted_as_a_window_around_the_answer():
    words = [f"w{i}" for i in range(40)]
    words[34:36] = ["Jean-Luc", "Picard,"]
    hit = {"contents": '"Star Trek"\nShort one. ' + " ".join(words) + "."}
    quote = evidence_quote("Jean-Luc Picard", [hit])
    body = quote.removeprefix("Star Trek says: ").split()
    assert len(body) == QUOTE_WORDS and "Jean-Luc" in body and body[-1] == "w39."
    assert evidence_quote("Kirk", [hit]) is None


def test_cli_final_thought_quote(tmp_path, capsys):
    corpus, questions = write_files(tmp_path)
    out = tmp_path / "q.jsonl"
    stats = build_sft_from_evidence.main(["--questions", str(questions), "--corpus", str(corpus), "--mode", "single",
                                          "--out", str(out), "--topk", "1", "--final-thought", "quote"],
                                         retriever=stub())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["quoted"] == stats["kept"] == 1  # EVEREST's evidence is incomplete with this stub
    assert rows[0]["conversations"][-1]["value"].startswith(
        "<think> Analytical Engine says: The Analytical Engine was designed by Charles Babbage. </think>")


def test_unseen_passages_shows_the_second_hop_a_repeated_first_hit_would_hide():
    retriever = stub()
    retriever.results["Ada Lovelace"] = ["e1", "e0"]  # round 2's best hit is round 1's passage again
    _, stats = build_dataset([BRIDGE], TITLES, retriever, SINGLE, topk=1)
    assert stats == counts(questions=1, dropped_missing_evidence=1)

    retriever.calls.clear()
    samples, stats = build_dataset([BRIDGE], TITLES, retriever, SINGLE, topk=1, unseen=True)
    assert stats == counts(questions=1, kept=1)
    assert search_rounds(samples[0]) == ["Analytical Engine", "Ada Lovelace"]
    second = samples[0]["conversations"][4]["value"]
    assert "Doc 1(Title: Ada Lovelace)" in second and "Analytical Engine was designed" not in second
    # deep enough for 1 passage after the 2 of at most two earlier rounds (1 + two titles)
    assert [depth for _, depth in retriever.calls] == [3, 3]
