import json
from pathlib import Path

import pytest

from scripts.results.pipeline import PipelineConfig, invocation, latest_step_dir, parse_config
from scripts.results.report import evidence_table, write_results_readme


def write_summary(root: Path, label: str, split: str = "test", **summary) -> None:
    path = root / "eval" / label / split / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))


def summary(em, rounds, qpr, recall_by_round):
    return dict(n=4, em=em, f1=em, rounds=rounds, queries_per_round=qpr, tokens=50.0, seconds_per_question=2.0,
                evidence_recall=recall_by_round[-1], evidence_all=0.25, evidence_recall_by_round=recall_by_round,
                retrieved_per_question=6.0)


def write_trajectories(root: Path, label: str, rows: list[dict], split: str = "test") -> None:
    path = root / "eval" / label / split / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def trajectory(qid: str, em: float, queries: list[list[str]], kind: str) -> dict:
    return {"id": qid, "question": qid, "em": em, "searches": len(queries), "queries": queries, "type": kind}


def test_results_readme_has_tables_evidence_and_curves(tmp_path):
    write_summary(tmp_path, "base-multi", **summary(0.0, 1.0, 1.0, [0.25]))
    write_summary(tmp_path, "sft-multi", **summary(0.25, 1.5, 1.5, [0.5, 0.75]))
    write_summary(tmp_path, "rl-multi", **summary(0.5, 1.5, 2.0, [0.5, 0.75]))
    write_trajectories(tmp_path, "sft-multi", [trajectory("q1", 1.0, [["a"]], "bridge"),
                                              trajectory("q2", 0.0, [["b"], ["c"]], "comparison")])
    write_trajectories(tmp_path, "rl-multi", [trajectory("q1", 1.0, [["a"]], "bridge"),
                                             trajectory("q2", 1.0, [["b", "c"]], "comparison")])
    write_trajectories(tmp_path, "base-multi", [trajectory("q1", 0.0, [], "bridge"),
                                               trajectory("q2", 0.0, [], "comparison")])
    write_summary(tmp_path, "rl-single", **summary(0.5, 2.0, 1.0, [0.5, 0.75]))
    write_trajectories(tmp_path, "rl-single", [trajectory("q2", 1.0, [["b"], ["c"]], "comparison")])
    runs = tmp_path / "runs" / "rl"
    runs.mkdir(parents=True)
    rows = [{"step": 1, "sampling/score_mean": 0.25, "env/search_calls_mean": 1.0},
            {"step": 2, "sampling/score_mean": 0.5, "env/search_calls_mean": 1.5}]
    (runs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "stage_times.jsonl").write_text(json.dumps({"stage": "RL (grpo)", "seconds": 12.5}) + "\n")
    (tmp_path / "frontier").mkdir()
    (tmp_path / "frontier" / "counts.json").write_text(json.dumps(
        {"questions": 10, "always": 3, "sometimes": 5, "never": 2, "n": 4, "kept": 5}))

    sft = tmp_path / "runs" / "sft"
    sft.mkdir(parents=True)
    (sft / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.5}) + "\n"
                                       + json.dumps({"step": 2, "train/loss": 0.25}) + "\n")

    readme = write_results_readme(tmp_path, wall_seconds=600, command="python -m x --rl-steps 2").read_text()

    assert "- command: `python -m x --rl-steps 2`" in readme
    assert "- wall time of this invocation: 10.0 min" in readme
    assert readme.index("| base-multi |") < readme.index("| sft-multi |") < readme.index("| rl-multi |")
    assert "| rl-multi | 0.500 | 0.750 |" in readme  # evidence recall after round 1, 2
    assert "| base-multi | 0.250 | – |" in readme
    assert "| step | sampling/score_mean | env/search_calls_mean |\n|---|---|---|\n| 1 | 0.25 | 1 |\n| 2 | 0.5 | 1.5 |" \
        in readme
    assert "first quarter of the 2 steps 0.250, last quarter 0.500" in readme
    assert "- EM in multi mode rises untrained < SFT < SFT+RL (0.000 < 0.500 < 1.000): **yes**" \
        in readme
    assert "- RL reward of the last quarter of the steps above the first (0.250 -> 0.500): **yes**" in readme
    assert ("comparison questions take fewer rounds in multi mode than in single mode (1.00 vs 2.00) at 1.5 "
            "queries per round or more (2.00): **yes**") in readme
    # both questions paired: +0.5, one gained, none lost; every resample keeps a difference in [0, 1]
    assert "| multi | 2 | 0.500 | 1.000 | +0.500 | [+0.000, +1.000] | 1 / 0 |" in readme
    assert "| rl-multi | comparison | 1 | 1.000 | 1.00 | 2.00 |" in readme
    assert "| sft-multi | comparison | 1 | 0.000 | 2.00 | 1.00 |" in readme
    assert "right every time on 3, never on 2, sometimes on 5; 5 were kept for RL (the sometimes ones)." in readme
    assert "SFT loss per step: 1.5, 0.25" in readme
    assert "| RL (grpo) | 12.5 |" in readme
    for png in ("eval.png", "curves.png", "evidence_by_round.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_question_type_without_a_type_field_is_read_from_the_titles():
    from scripts.results.report import question_type

    titles = {"p1": "Paris, Texas", "p2": "Kiss and Tell (1945 film)"}
    row = {"question": "Is Paris Texas older than Kiss and Tell?", "supporting_ids": ["p1", "p2"]}
    assert question_type(row, titles) == "comparison"
    assert question_type({**row, "question": "Who starred in Kiss and Tell?"}, titles) == "bridge"
    assert question_type({**row, "type": "bridge"}, titles) == "bridge"


def test_evidence_table_pads_shorter_runs():
    assert evidence_table({"a": [0.5], "b": [0.25, 1.0]}).splitlines() == [
        "| Method | after round 1 | after round 2 |", "|---|---|---|", "| a | 0.500 | – |", "| b | 0.250 | 1.000 |"]


def test_parse_config_flags_and_env(tmp_path, monkeypatch):
    defaults = PipelineConfig(data_dir=tmp_path / "d", out_dir=tmp_path / "o")
    monkeypatch.setenv("DATA", str(tmp_path / "other"))
    config = parse_config(defaults, ["--rl-steps", "20", "--eval-runs", "rl-multi", "--eval-limit", "5",
                                     "--algo", "ppo", "--rl-questions", "all"], "x")
    assert (config.data_dir, config.rl_steps, config.eval_runs, config.eval_limit, config.algo) == (
        tmp_path / "other", 20, ("rl-multi",), 5, "ppo")
    assert config.rl_questions is None
    assert config.sft_lr == defaults.sft_lr and config.model is None
    assert parse_config(defaults, ["--eval-limit", "all"], "x").eval_limit is None
    assert parse_config(defaults, ["--guides", "no"], "x").guides is False


@pytest.mark.parametrize("argv", [["--rl-negative-scal", "0"], ["--guides", "flase"]])
def test_parse_config_refuses_a_shortened_flag_and_a_misspelled_bool(tmp_path, argv, capsys):
    defaults = PipelineConfig(data_dir=tmp_path / "d", out_dir=tmp_path / "o")
    with pytest.raises(SystemExit):
        parse_config(defaults, argv, "x")
    assert argv[0] in capsys.readouterr().err


def test_missing_data_names_the_file(tmp_path):
    from scripts.results.pipeline import Pipeline

    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(SystemExit, match="train.jsonl is missing"):
        Pipeline(PipelineConfig(data_dir=tmp_path, out_dir=tmp_path / "out"))
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit, match="rl_n: GRPO compares samples"):
        Pipeline(PipelineConfig(data_dir=tmp_path, out_dir=tmp_path / "out", rl_n=1))
    with pytest.raises(SystemExit, match="eval_runs: unknown \\['ppo-multi'\\]"):
        Pipeline(PipelineConfig(data_dir=tmp_path, out_dir=tmp_path / "out", eval_runs=("ppo-multi",)))
    with pytest.raises(SystemExit, match="reward: expected em, f1 or format"):
        Pipeline(PipelineConfig(data_dir=tmp_path, out_dir=tmp_path / "out", reward="bleu"))


def test_latest_step_dir_orders_numerically(tmp_path):
    for step in (2, 10, 9):
        (tmp_path / f"global_step_{step}").mkdir()
    assert latest_step_dir(tmp_path).name == "global_step_10"


def test_sampled_questions_are_a_seeded_draw_in_file_order(tmp_path):
    from scripts.results.pipeline import Pipeline

    data = tmp_path / "data"
    data.mkdir()
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        (data / name).write_text("")
    # Sorted by type, as hotpotqa_closed is: 20 bridge rows, then 20 comparisons.
    rows = [json.dumps({"id": f"{kind}{i}"}) for kind in ("b", "c") for i in range(20)]
    source = data / "train.jsonl"
    source.write_text("\n".join(rows) + "\n")
    pipeline = Pipeline(PipelineConfig(data_dir=data, out_dir=tmp_path / "out", seed=3))

    first = pipeline.sampled(source, 10, tmp_path / "out" / "a.jsonl")
    picked = [json.loads(line)["id"] for line in first.read_text().splitlines()]
    assert len(set(picked)) == 10 and sorted(picked, key=lambda i: rows.index(json.dumps({"id": i}))) == picked
    assert {i[0] for i in picked} == {"b", "c"}  # not the first ten (all bridge)
    again = Pipeline(PipelineConfig(data_dir=data, out_dir=tmp_path / "again", seed=3))
    assert again.sampled(source, 10, tmp_path / "again" / "a.jsonl").read_text() == first.read_text()
    other = [json.loads(line)["id"] for line in pipeline.sampled(source, 10, tmp_path / "out" / "b.jsonl")
             .read_text().splitlines()]
    assert other != picked
    # Resumed with another limit: the file is drawn again, not reused.
    assert len(pipeline.sampled(source, 5, tmp_path / "out" / "a.jsonl").read_text().splitlines()) == 5
    assert pipeline.sampled(source, None, tmp_path / "out" / "c.jsonl") == source
    assert pipeline.sampled(source, 40, tmp_path / "out" / "c.jsonl") == source


def test_invocation_names_the_module_args_and_data(monkeypatch):
    monkeypatch.setenv("DATA", "/data/my set")
    monkeypatch.delenv("OUT", raising=False)
    assert invocation("scripts.results.make_results", ["--rl-steps", "2", "--model", "a b"]) == \
        "DATA='/data/my set' python -m scripts.results.make_results --rl-steps 2 --model 'a b'"


def test_learning_checks_say_no_when_a_check_fails(tmp_path):
    from scripts.results.report import learning_checks

    for label, em, queries in (("base-multi", 0.0, [["a"]]), ("sft-multi", 1.0, [["a", "b"]]),
                               ("rl-multi", 1.0, [["a"], ["b", "c"]]), ("rl-single", 1.0, [["a"], ["b"]])):
        (tmp_path / "eval" / label / "test").mkdir(parents=True)
        write_trajectories(tmp_path, label, [trajectory("q1", em, queries, "comparison")])
    rl = [{"step": i, "sampling/score_mean": v} for i, v in enumerate([0.5, 0.4, 0.3, 0.2], 1)]
    assert learning_checks(tmp_path, rl, {}) == [
        "- EM in multi mode rises untrained < SFT < SFT+RL (0.000 < 1.000 < 1.000): **no**",
        "- RL reward of the last quarter of the steps above the first (0.500 -> 0.200): **no**",
        "- after RL, comparison questions take fewer rounds in multi mode than in single mode (2.00 vs 2.00) at "
        "1.5 queries per round or more (1.50): **no**"]
    # an F1 reward: the check names it, and the policy's own EM (logged beside the score) gets a line
    (tmp_path / "config.json").write_text(json.dumps({"pipeline": {"reward": "f1", "round_cost": 0.0}}))
    rl = [{**row, "sampling/em": em} for row, em in zip(rl, [0.0, 0.1, 0.2, 0.25])]
    assert learning_checks(tmp_path, rl, {})[1:3] == [
        "- RL reward (f1) of the last quarter of the steps above the first (0.500 -> 0.200): **no**",
        "- EM of the policy's own RL samples (the reward is not EM) of the last quarter of the steps above the "
        "first (0.000 -> 0.250): **yes**"]
    assert learning_checks(tmp_path / "nothing", [], {}) == []


def test_dev_split_gets_its_own_comparison_and_stays_out_of_the_test_tables(tmp_path):
    for label, em in (("sft-multi", 0.5), ("rl-multi", 0.5)):
        write_summary(tmp_path, label, **summary(em, 1.5, 1.5, [0.5]))
        write_trajectories(tmp_path, label, [trajectory("t1", 1.0, [["a"]], "bridge"),
                                            trajectory("t2", 0.0, [["b"]], "bridge")])
    write_summary(tmp_path, "sft-multi", split="dev", **summary(0.0, 1.0, 2.0, [0.5]))
    write_summary(tmp_path, "rl-multi", split="dev", **summary(0.67, 1.0, 2.0, [0.5]))
    write_trajectories(tmp_path, "sft-multi", [trajectory(q, 0.0, [["a"]], "bridge") for q in ("d1", "d2", "d3")],
                       split="dev")
    write_trajectories(tmp_path, "rl-multi", [trajectory(q, em, [["a"]], "bridge")
                                             for q, em in (("d1", 1.0), ("d2", 1.0), ("d3", 0.0))], split="dev")

    readme = write_results_readme(tmp_path).read_text()
    assert "without yes/no" not in readme  # no question here is answered by yes or no

    test_part, dev_part = readme.split("## RL vs SFT on held-out train questions (dev)")
    assert "| multi | 2 | 0.500 | 0.500 | +0.000 | [+0.000, +0.000] | 0 / 0 |" in test_part
    assert "The same comparison on 3 train questions that neither SFT nor RL drew" in dev_part
    assert "| multi | 3 | 0.000 | 0.667 | +0.667 |" in dev_part and "| 2 / 0 |" in dev_part
    assert "| Method | test | Avg. |" in test_part  # no dev column: the split is not one of the sets


def test_outcome_table_splits_wrong_answers_into_reading_and_search_misses(tmp_path):
    info = "<information> Doc 1(Title: Kaiser) founded by Henry J. Kaiser </information>"

    def answered(qid, answer, em, text=info):
        return {"id": qid, "question": "Who founded Kaiser Ventures?", "answer": answer, "em": em,
                "golden_answers": ["Henry J. Kaiser"], "text": text, "retrieved": [["p1"]], "searches": 1,
                "queries": [["q"]]}

    write_summary(tmp_path, "sft-multi", **summary(0.0, 1.0, 1.0, [0.5]))
    never_retrieved = answered("q2", "Kaiser Ventures", 0.0, text="<information> x </information>")
    write_trajectories(tmp_path, "sft-multi", [answered("q1", "Kaiser Ventures", 0.0), never_retrieved])
    write_summary(tmp_path, "rl-multi", **summary(0.5, 1.0, 1.0, [0.5]))
    write_trajectories(tmp_path, "rl-multi", [answered("q1", "Henry J. Kaiser", 1.0), answered("q2", None, 0.0)])
    write_summary(tmp_path, "base-multi", **summary(0.0, 1.0, 1.0, [0.5]))
    write_trajectories(tmp_path, "base-multi", [trajectory("q1", 0.0, [], "bridge")])  # no text kept: no row

    readme = write_results_readme(tmp_path).read_text()

    assert "## Where the answers went wrong" in readme
    assert "| sft-multi | 2 | 0 | 1 | 1 | 0 | 2 | 0 of 0 / 0 / 0 |" in readme
    assert "| rl-multi | 2 | 1 | 0 | 0 | 1 | 0 | 0 of 0 / 0 / 0 |" in readme
    assert "| base-multi | 1 |" not in readme


def test_rl_vs_sft_has_a_row_without_the_yes_no_questions(tmp_path):
    def row(qid, gold, em):
        return {**trajectory(qid, em, [["a"]], "comparison"), "golden_answers": [gold]}

    sft = [row("y1", "yes", 0.0), row("n1", "No", 1.0), row("o1", "Paris", 0.0), row("o2", "Lyon", 1.0)]
    rl = [row("y1", "yes", 1.0), row("n1", "No", 0.0), row("o1", "Paris", 1.0), row("o2", "Lyon", 1.0)]
    for label, rows in (("sft-multi", sft), ("rl-multi", rl)):
        write_summary(tmp_path, label, **summary(0.5, 1.0, 1.0, [0.5]))
        write_trajectories(tmp_path, label, rows)

    readme = write_results_readme(tmp_path).read_text()

    assert "| multi | 4 | 0.500 | 0.750 | +0.250 |" in readme and "| 2 / 1 |" in readme
    assert "| multi, without yes/no | 2 | 0.500 | 1.000 | +0.500 | [+0.000, +1.000] | 1 / 0 |" in readme
