"""The recipe's report (recipe/report.py) on what a run leaves, and the shared tables it takes from
rag_r1.eval.report."""
import json
from pathlib import Path

from rag_r1.eval.report import evidence_table, question_type
from recipe.__main__ import invocation, split_words
from recipe.report import control_comparisons, imitation_share, learning_checks, write_results_readme


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
    assert ("| step | sampling/score_mean | env/search_calls_mean |\n| --- | --- | --- |\n| 1 | 0.25 | 1 |\n"
            "| 2 | 0.5 | 1.5 |") in readme
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
    for png in ("eval.png", "curves.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_question_type_without_a_type_field_is_read_from_the_titles():
    titles = {"p1": "Paris, Texas", "p2": "Kiss and Tell (1945 film)"}
    row = {"question": "Is Paris Texas older than Kiss and Tell?", "supporting_ids": ["p1", "p2"]}
    assert question_type(row, titles) == "comparison"
    assert question_type({**row, "question": "Who starred in Kiss and Tell?"}, titles) == "bridge"
    assert question_type({**row, "type": "bridge"}, titles) == "bridge"


def test_evidence_table_pads_shorter_runs():
    assert evidence_table({"a": [0.5], "b": [0.25, 1.0]}).splitlines() == [
        "| Method | after round 1 | after round 2 |", "| --- | --- | --- |", "| a | 0.500 | – |",
        "| b | 0.250 | 1.000 |"]


def test_invocation_names_the_profiles_overrides_and_data(monkeypatch):
    monkeypatch.setenv("DATA", "/data/my set")
    monkeypatch.delenv("OUT", raising=False)
    argv = ["results", "rl.trainer.total_training_steps=2", "recipe.model=a b", "ppo"]
    assert split_words(argv) == (["results", "ppo"], ["rl.trainer.total_training_steps=2", "recipe.model=a b"])
    assert invocation(argv) == ("DATA='/data/my set' python -m recipe results rl.trainer.total_training_steps=2 "
                                "'recipe.model=a b' ppo")


def test_learning_checks_say_no_when_a_check_fails(tmp_path):
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
    (tmp_path / "config.json").write_text(json.dumps({"profile": {"rl": {
        "custom_reward_function.reward_kwargs.scorer": "f1"}}}))
    rl = [{**row, "sampling/em": em} for row, em in zip(rl, [0.0, 0.1, 0.2, 0.25])]
    assert learning_checks(tmp_path, rl, {})[1:3] == [
        "- RL reward (f1) of the last quarter of the steps above the first (0.500 -> 0.200): **no**",
        "- EM of the policy's own RL samples (the reward is not EM) of the last quarter of the steps above the "
        "first (0.000 -> 0.250): **yes**"]
    assert learning_checks(tmp_path / "nothing", [], {}) == []


def test_learning_checks_order_sft_and_rl_when_the_untrained_model_is_not_evaluated(tmp_path):
    for label, em in (("sft-multi", 0.0), ("rl-multi", 1.0)):
        (tmp_path / "eval" / label / "test").mkdir(parents=True)
        write_trajectories(tmp_path, label, [trajectory("q1", em, [["a"]], "bridge")])
    assert learning_checks(tmp_path, [], {}) == ["- EM in multi mode rises SFT < SFT+RL (0.000 < 1.000): **yes**"]
    write_trajectories(tmp_path, "rl-multi", [trajectory("q1", 0.0, [["a"]], "bridge")])
    assert learning_checks(tmp_path, [], {}) == ["- EM in multi mode rises SFT < SFT+RL (0.000 < 0.000): **no**"]


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


def write_metrics(root: Path, run: str, rows: list[dict]) -> None:
    path = root / "runs" / run / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_seeds_are_reported_each_and_pooled_beside_the_guide_only_control(tmp_path):
    em = {"sft": [0, 0, 1, 0], "rl": [1, 1, 1, 0], "rl_seed1": [1, 0, 1, 1], "control": [1, 0, 1, 0]}
    for model, scores in em.items():
        write_summary(tmp_path, f"{model}-multi", **summary(sum(scores) / 4, 1.0, 1.0, [0.5]))
        write_trajectories(tmp_path, f"{model}-multi", [trajectory(f"q{i}", float(s), [["a"]], "bridge")
                                                       for i, s in enumerate(scores, 1)])
    write_metrics(tmp_path, "rl", [
        {"step": 1, "sampling/score_mean": 0.25, "adv/guide_positive_share": 0.6, "adv/guided_rows": 2.0,
         "actor/entropy": 1.234, "rollout/logprob_diff_max": 0.0123},
        {"step": 2, "sampling/score_mean": 0.5, "adv/guide_positive_share": 0.4, "adv/guided_rows": 2.0,
         "actor/entropy": 1.1, "rollout/logprob_diff_max": 0.02}])
    write_metrics(tmp_path, "rl_seed1", [{"step": 1, "sampling/score_mean": 0.3, "adv/guide_positive_share": 0.5,
                                          "adv/guided_rows": 2.0, "actor/entropy": 1.3,
                                          "rollout/logprob_diff_max": 0.01}])
    write_metrics(tmp_path, "control", [{"step": 1, "sampling/score_mean": 0.2, "adv/guide_positive_share": 1.0,
                                         "adv/guided_rows": 2.0, "actor/entropy": 1.25}])

    readme = write_results_readme(tmp_path).read_text()

    assert readme.index("| sft-multi |") < readme.index("| rl-multi |") < readme.index("| rl_seed1-multi |") \
        < readme.index("| control-multi |")
    # the mean over seeds per question: 1, .5, 1, .5 against SFT's 0, 0, 1, 0; its differences 1, .5, 0, .5
    # resample as 1/8 of a Binomial(8, 1/2), whose 2.5 % and 97.5 % points are 1/8 and 7/8
    assert ("| mode | questions | SFT EM | SFT+RL EM | difference | 95 % interval | gained / lost |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n"
            "| multi, rl | 4 | 0.250 | 0.750 | +0.500 | [+0.000, +1.000] | 2 / 0 |\n"
            "| multi, rl_seed1 | 4 | 0.250 | 0.750 | +0.500 | [+0.000, +1.000] | 2 / 0 |\n"
            "| multi, mean of 2 seeds | 4 | 0.250 | 0.750 | +0.500 | [+0.125, +0.875] | 3 / 0 |\n") in readme
    assert ("| comparison | questions | EM from | EM to | difference | 95 % interval | gained / lost |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n"
            "| multi: SFT -> control | 4 | 0.250 | 0.500 | +0.250 | [+0.000, +0.750] | 1 / 0 |\n"
            "| multi: control -> RL (mean of 2 seeds) | 4 | 0.500 | 0.750 | +0.250 | [+0.000, +0.500] | 2 / 0 |\n"
            "| multi: SFT -> RL (mean of 2 seeds) | 4 | 0.250 | 0.750 | +0.500 | [+0.125, +0.875] | 3 / 0 |\n"
            "\nIn multi mode, imitation of the guides alone gives +0.250 EM of RL's +0.500 over SFT (50%), on 4 "
            "questions.\n") in readme
    assert ("- RL (mean of 2 seeds) above the guide-only control in multi mode (0.500 -> 0.750, 95 % interval of the "
            "difference [+0.000, +0.500]): **yes**") in readme
    assert ("| run | step | reward (own samples) | guide share of positive advantage | guide rows | entropy | "
            "log-prob diff max |\n| --- | --- | --- | --- | --- | --- | --- |\n"
            "| rl | 1 | 0.250 | 0.600 | 2 | 1.234 | 0.0123 |\n"
            "| rl | 2 | 0.500 | 0.400 | 2 | 1.100 | 0.02 |\n"
            "| rl_seed1 | 1 | 0.300 | 0.500 | 2 | 1.300 | 0.01 |\n"
            "| control | 1 | 0.200 | 1.000 | 2 | 1.250 | – |\n") in readme
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_control_per_seed_is_pooled_as_the_rl_seeds_are(tmp_path):
    em = {"sft": [0, 0, 1, 0], "rl": [1, 1, 1, 0], "rl_seed1": [1, 0, 1, 1], "control": [1, 0, 1, 0],
          "control_seed1": [0, 0, 1, 1]}
    for model, scores in em.items():
        write_summary(tmp_path, f"{model}-multi", **summary(sum(scores) / 4, 1.0, 1.0, [0.5]))
        write_trajectories(tmp_path, f"{model}-multi", [trajectory(f"q{i}", float(s), [["a"]], "bridge")
                                                       for i, s in enumerate(scores, 1)])

    readme = write_results_readme(tmp_path).read_text()

    assert readme.index("| rl_seed1-multi |") < readme.index("| control-multi |") \
        < readme.index("| control_seed1-multi |")
    # per question the controls' mean is .5, 0, 1, .5 and RL's 1, .5, 1, .5: control -> RL differs by .5 on two
    # questions, so a resample's mean is 1/8 of a Binomial(4, 1/2), whose 2.5 % and 97.5 % points are 0 and 4
    assert ("| multi: SFT -> control (mean of 2 seeds) | 4 | 0.250 | 0.500 | +0.250 | [+0.000, +0.500] | 2 / 0 |\n"
            "| multi: control (mean of 2 seeds) -> RL (mean of 2 seeds) | 4 | 0.500 | 0.750 | +0.250 | "
            "[+0.000, +0.500] | 2 / 0 |\n") in readme
    assert ("- RL (mean of 2 seeds) above the guide-only control (mean of 2 seeds) in multi mode (0.500 -> 0.750, "
            "95 % interval of the difference [+0.000, +0.500]): **yes**") in readme


def test_the_control_check_says_no_and_the_sentence_says_when_rl_gains_nothing(tmp_path):
    for model, scores in {"sft": [1, 0], "rl": [1, 0], "control": [1, 1]}.items():
        (tmp_path / "eval" / f"{model}-multi" / "test").mkdir(parents=True)
        write_trajectories(tmp_path, f"{model}-multi", [trajectory(f"q{i}", float(s), [["a"]], "bridge")
                                                       for i, s in enumerate(scores)])
    results = control_comparisons(tmp_path)
    assert imitation_share(results) == [
        "In multi mode RL gains no EM over SFT (+0.000); imitation of the guides alone gives +0.500, on 2 questions."]
    # control -> RL: 1, 1 -> 1, 0; the difference's resamples are 0, -0.5 or -1
    assert learning_checks(tmp_path, [], {}) == [
        "- EM in multi mode rises SFT < SFT+RL (0.500 < 0.500): **no**",
        "- RL above the guide-only control in multi mode (1.000 -> 0.500, 95 % interval of the difference "
        "[-1.000, +0.000]): **no**"]


def test_the_sentence_says_when_imitation_gives_none_of_rls_gain(tmp_path):
    for model, scores in {"sft": [1, 0, 1], "rl": [1, 1, 1], "control": [0, 0, 1]}.items():
        (tmp_path / "eval" / f"{model}-multi" / "test").mkdir(parents=True)
        write_trajectories(tmp_path, f"{model}-multi", [trajectory(f"q{i}", float(s), [["a"]], "bridge")
                                                       for i, s in enumerate(scores)])
    assert imitation_share(control_comparisons(tmp_path)) == [
        "In multi mode, imitation of the guides alone gives -0.333 EM over SFT: none of RL's +0.333, on 3 questions."]
