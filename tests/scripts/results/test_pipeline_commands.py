"""The pipeline's SFT and RL commands: they compose with their trainers' schemas, run the agent in
the RL mode its data is built in, and repeat no default but the ones named on purpose."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from repeated_defaults import repeated_defaults
from scripts.results.make_results import PROFILES
from scripts.results.pipeline import DATA_SOURCE, RL_MODE, Pipeline, PipelineConfig
from test_train_ppo import ppo_value


class Ran(Exception):
    """Raised instead of running a stage's command; carries its arguments."""


@pytest.fixture
def pipeline(tmp_path, monkeypatch) -> Pipeline:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        (data / name).write_text("")

    def run(self, title, args):
        raise Ran([str(a) for a in args])

    monkeypatch.setattr(Pipeline, "sh", run)
    # fields the commands pass through, set apart from the trainers' defaults: an override that
    # still repeats a default is then a constant of the pipeline
    return Pipeline(PipelineConfig(data_dir=data, out_dir=tmp_path / "out", topk=2, max_obs_length=600,
                                   lora_rank=8, sft_epochs=2, sft_max_length=1024, round_cost=0.1,
                                   rl_negative_scale=0.5))


def write_questions(pipeline: Pipeline, n: int, extra: tuple[str, ...] = (), split: str = "train") -> list[str]:
    """<split>.jsonl of n questions q0..q{n-1} (and the `extra` rows after them); the question rows."""
    rows = [json.dumps({"id": f"q{i}", "question": f"q{i}?", "golden_answers": ["a"]}) for i in range(n)]
    (pipeline.cfg.data_dir / f"{split}.jsonl").write_text("\n".join([*rows, *extra]) + "\n")
    return rows


def command(stage) -> list[str]:
    with pytest.raises(Ran) as ran:
        stage()
    return ran.value.args[0]


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_rl_command_composes_in_the_rl_mode_and_repeats_no_default(pipeline, tmp_path, algo):
    from rag_r1.llm_agent.loop import agent_config
    from verl.trainer.config import compose_config

    pipeline.cfg.algo = algo
    args = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", "http://127.0.0.1:1/retrieve"))
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    overrides = args[2:]
    agent = agent_config(compose_config(overrides))
    assert (agent.mode, agent.topk, agent.max_obs_length) == (RL_MODE, pipeline.cfg.topk, pipeline.cfg.max_obs_length)
    assert compose_config(overrides).custom_reward_function.reward_kwargs.round_cost == 0.1
    assert compose_config(overrides).algorithm.negative_advantage_scale == 0.5
    # refused before any stage runs, not at the RL stage after SFT
    with pytest.raises(SystemExit, match="rl_negative_scale=1.5: expected a share between 0 and 1"):
        replace(pipeline.cfg, rl_negative_scale=1.5).validate()
    # named on purpose: the mode the RL data is built in, and the algorithm of the GAE branch
    assert set(repeated_defaults(overrides, compose_config, ppo_value)) <= {f"agent.mode={RL_MODE}",
                                                                          "algorithm.adv_estimator=gae"}


def test_a_finished_rl_run_asked_for_more_steps_carries_on_and_sets_its_evaluations_aside(pipeline, tmp_path):
    from verl.utils.checkpoint import mark_latest, save_trainer_state

    out = pipeline.cfg.out_dir
    (out / "checkpoints" / "rl").mkdir(parents=True)
    (out / "checkpoints" / "rl" / "config.json").write_text("{}")
    save_trainer_state(out / "runs" / "rl" / "global_step_10", 10, {})
    mark_latest(out / "runs" / "rl", 10)
    (out / "eval" / "rl-multi" / "test").mkdir(parents=True)
    (out / "eval" / "sft-multi" / "test").mkdir(parents=True)
    url = "http://127.0.0.1:1/retrieve"
    pipeline.cfg.rl_steps = 10
    assert pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", url) == out / "checkpoints" / "rl"
    assert (out / "eval" / "rl-multi").is_dir()  # nothing to add: the evaluations stand

    pipeline.cfg.rl_steps = 24
    args = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", url))
    assert "trainer.total_training_steps=24" in args and f"trainer.default_local_dir={out / 'runs' / 'rl'}" in args
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["rl-multi@step10", "sft-multi"]


def test_sft_command_repeats_no_default(pipeline, tmp_path):
    from verl.trainer.fsdp_sft_trainer import compose_config

    args = command(lambda: pipeline.run_sft(tmp_path / "base", [tmp_path / "multi.jsonl"]))
    assert args[:2] == ["-m", "verl.trainer.fsdp_sft_trainer"]
    assert repeated_defaults(args[2:], compose_config) == []


def test_rl_questions_are_the_seeded_sample_or_its_frontier(pipeline, tmp_path):
    rows = write_questions(pipeline, 10)
    pipeline.cfg.rl_questions, pipeline.cfg.frontier_n = 3, 0
    drawn = pipeline.pick_rl_questions(tmp_path / "sft", "http://127.0.0.1:1/retrieve")  # runs nothing
    picked = drawn.read_text().splitlines()
    assert drawn.name == "train.jsonl"  # build_rl_data names the parquet after it
    assert len(picked) == 3 and set(picked) <= set(rows)
    assert drawn == pipeline.pick_rl_questions(tmp_path / "sft", "http://127.0.0.1:1/retrieve")
    pipeline.cfg.frontier_n = 5
    args = command(lambda: pipeline.pick_rl_questions(tmp_path / "sft", "http://127.0.0.1:1/retrieve"))
    assert args[:2] == ["-m", "rag_r1.eval.frontier"] and args[args.index("--n") + 1] == "5"
    # the frontier filters the very sample a run without it trains on (and so leaves the same dev questions)
    assert open(args[args.index("--questions") + 1]).read().splitlines() == picked


def test_rl_questions_without_yes_no_answers_leave_the_draw_and_the_dev_questions_as_they_were(pipeline, tmp_path):
    answers = ["Yes", "a", "no", "b", "yes.", "c", "NO", "d"]
    (pipeline.cfg.data_dir / "train.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"q{i}?", "golden_answers": [a]}) + "\n" for i, a in enumerate(answers)))
    c = pipeline.cfg
    c.sft_questions, c.rl_questions, c.frontier_n, c.dev_questions = 1, 6, 0, 1
    drawn = pipeline.pick_rl_questions(tmp_path / "sft", "u").read_text().splitlines()
    dev = pipeline.dev_set().read_text()
    c.rl_yes_no = False
    kept = pipeline.pick_rl_questions(tmp_path / "sft", "u")
    assert kept.name == "train.jsonl" and kept.parent != pipeline.rl_candidates().parent
    assert kept.read_text().splitlines() == [r for r in drawn if json.loads(r)["golden_answers"][0] in "abcd"]
    assert 0 < len(kept.read_text().splitlines()) < len(drawn)
    assert pipeline.dev_set().read_text() == dev
    c.frontier_n = 4  # the frontier samples only the questions RL may train on
    args = command(lambda: pipeline.pick_rl_questions(tmp_path / "sft", "u"))
    assert args[args.index("--questions") + 1] == str(kept)


def test_rl_data_and_guides_are_rebuilt_when_their_questions_change(pipeline, tmp_path):
    import os

    questions = pipeline.out / "rl_questions" / "train.jsonl"
    questions.parent.mkdir(parents=True)
    questions.write_text('{"id": "q1", "question": "Who?", "golden_answers": ["Ann"]}\n')
    for product in (pipeline.out / "rl_data" / "train.parquet", pipeline.out / "rl_data" / "guides.jsonl"):
        product.parent.mkdir(exist_ok=True)
        product.write_text("built")
    assert pipeline.build_rl_data(questions) == pipeline.out / "rl_data"  # made after its questions: reused
    assert pipeline.build_guides(questions, "u") == pipeline.out / "rl_data" / "guides.jsonl"
    later = questions.stat().st_mtime + 10
    os.utime(questions, (later, later))
    assert command(lambda: pipeline.build_rl_data(questions))[:2] == ["-m", "scripts.data_process.qa_eval_sets"]
    assert command(lambda: pipeline.build_guides(questions, "u"))[:2] == [
        "-m", "scripts.data_process.build_sft_from_evidence"]


def test_rl_data_rows_are_the_rl_modes_train_rows(pipeline, tmp_path):
    import pandas as pd

    from scripts.data_process import qa_eval_sets

    questions = tmp_path / "rl_questions" / "train.jsonl"
    questions.parent.mkdir()
    questions.write_text('{"id": "q1", "question": "Who?", "golden_answers": ["Ann"], "supporting_ids": ["p1"]}\n')
    args = command(lambda: pipeline.build_rl_data(questions))
    assert args[:2] == ["-m", "scripts.data_process.qa_eval_sets"]
    qa_eval_sets.main(args[2:])
    rows = pd.read_parquet(pipeline.out / "rl_data" / "train.parquet")
    assert list(rows["data_source"]) == [DATA_SOURCE]
    assert rows["extra_info"][0]["split"] == "train" and rows["extra_info"][0]["question"] == "Who?"


def test_rl_questions_balanced_over_types(pipeline, tmp_path):
    # 12 bridge rows and 3 comparisons: a plain draw of 6 would expect one comparison
    rows = [json.dumps({"id": f"{kind}{i}", "question": "q?", "golden_answers": ["a"], "type": kind})
            for kind, n in (("bridge", 12), ("comparison", 3)) for i in range(n)]
    (pipeline.cfg.data_dir / "train.jsonl").write_text("\n".join(rows) + "\n")
    pipeline.cfg.rl_questions, pipeline.cfg.frontier_n, pipeline.cfg.rl_balance_types = 6, 0, True
    picked = [json.loads(r) for r in pipeline.pick_rl_questions(tmp_path / "sft", "u").read_text().splitlines()]
    assert [r["type"] for r in picked].count("comparison") == 3 and len({r["id"] for r in picked}) == 6
    assert [rows.index(json.dumps(r)) for r in picked] == sorted(rows.index(json.dumps(r)) for r in picked)
    # more comparisons asked for than exist: the bridge rows take the turns left
    pipeline.cfg.rl_questions = 10
    kinds = [json.loads(r)["type"] for r in pipeline.pick_rl_questions(tmp_path / "sft", "u").read_text().splitlines()]
    assert kinds.count("comparison") == 3 and kinds.count("bridge") == 7
    untyped = [r.replace(', "type": "bridge"', "") for r in rows]
    (pipeline.cfg.data_dir / "train.jsonl").write_text("\n".join(untyped) + "\n")
    with pytest.raises(SystemExit, match="without a `type` field"):
        pipeline.pick_rl_questions(tmp_path / "sft", "u")


def profile_rl_config(pipeline: Pipeline, tmp_path, profile: str):
    """The trainer config a results profile's RL stage composes."""
    from verl.trainer.config import compose_config

    pipeline.cfg = replace(PROFILES[profile], data_dir=pipeline.cfg.data_dir, out_dir=pipeline.cfg.out_dir)
    args = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", "http://127.0.0.1:1/retrieve"))
    return compose_config(args[2:])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_results_profiles_reward_f1_which_ranks_a_near_miss_above_a_wrong_entity(pipeline, tmp_path, profile):
    from rag_r1.reward import compute_score

    kwargs = profile_rl_config(pipeline, tmp_path, profile).custom_reward_function.reward_kwargs
    gold = {"target": ["Brett Allen Scallions"]}

    def score(answer: str, **scoring) -> float:
        return compute_score(DATA_SOURCE, f"<answer> {answer} </answer>", gold, **scoring)["score"]

    assert kwargs["scorer"] == "f1"
    assert score("Brett Scallions", **kwargs) == pytest.approx(0.8)  # precision 2/2, recall 2/3
    assert score("Ciaran Gribbin", **kwargs) == 0.0
    assert score("Brett Scallions") == 0.0  # the data source's own scorer, EM


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_results_profiles_sample_groups_of_8_at_the_pipelines_cost_per_step(pipeline, tmp_path, profile):
    config = profile_rl_config(pipeline, tmp_path, profile)
    n, batch = config.actor_rollout_ref.rollout.n, config.data.train_batch_size
    own = PipelineConfig(data_dir=pipeline.cfg.data_dir, out_dir=pipeline.cfg.out_dir)
    assert n == 8 and n * batch == own.rl_n * own.rl_batch == 16
    # one question's group per optimizer step: two updates a step, as the pipeline's default makes
    assert batch // config.actor_rollout_ref.actor.ppo_mini_batch_size == own.rl_batch // own.rl_mini_batch == 2


@pytest.mark.parametrize("frontier_n", [0, 4])
def test_dev_questions_are_train_questions_no_sft_or_rl_sample_holds(pipeline, frontier_n):
    write_questions(pipeline, 30)
    c = pipeline.cfg
    c.sft_questions, c.rl_questions, c.frontier_n, c.dev_questions = 6, 8, frontier_n, 10

    def ids(path):
        return {json.loads(row)["id"] for row in path.read_text().splitlines()}

    dev = ids(pipeline.dev_set())
    drawn = ids(pipeline.sft_questions("multi")) | ids(pipeline.sft_questions("single")) | ids(pipeline.rl_candidates())
    assert len(dev) == 10 and not dev & drawn and len(drawn) >= 8
    assert dev == ids(pipeline.dev_set())  # the same draw on a resumed run
    c.dev_questions = 31 - len(drawn)
    with pytest.raises(SystemExit, match=f"only {30 - len(drawn)} train questions are left"):
        pipeline.dev_set()
    write_questions(pipeline, 30, extra=('{"question": "no id?"}',))
    with pytest.raises(SystemExit, match="every train.jsonl row needs an `id`"):
        pipeline.dev_set()


def test_dev_evaluation_runs_in_the_rl_mode_on_the_dev_questions(pipeline, tmp_path):
    write_questions(pipeline, 200)
    pipeline.cfg.dev_questions = 20
    args = command(lambda: pipeline.evaluate("rl", tmp_path / "rl", RL_MODE, "http://127.0.0.1:1/retrieve",
                                             split="dev"))
    out = pipeline.cfg.out_dir / "eval"
    assert args[args.index("--questions") + 1] == str(out / "dev_questions.jsonl")
    assert args[args.index("--out") + 1] == str(out / f"rl-{RL_MODE}" / "dev")
    assert len((out / "dev_questions.jsonl").read_text().splitlines()) == 20


def test_evaluation_is_reused_only_for_the_questions_it_holds(pipeline, tmp_path):
    url = "http://127.0.0.1:1/retrieve"
    write_questions(pipeline, 12, split="test")
    pipeline.cfg.eval_limit = 5
    args = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", url))
    out = pipeline.cfg.out_dir / "eval" / "sft-multi" / "test"
    out.mkdir(parents=True)
    (out / "trajectories.jsonl").write_text(Path(args[args.index("--questions") + 1]).read_text())
    (out / "summary.json").write_text("{}")
    assert pipeline.evaluate("sft", tmp_path / "sft", "multi", url) == out  # runs nothing
    pipeline.cfg.eval_limit = 8  # a resumed run with a larger sample evaluates again (reusing the 5 rows)
    args = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", url))
    assert len(Path(args[args.index("--questions") + 1]).read_text().splitlines()) == 8


def test_an_evaluation_made_with_other_agent_settings_is_handed_to_rag_r1_eval(pipeline, tmp_path):
    from rag_r1.eval.__main__ import parse_args, settings_of

    url = "http://127.0.0.1:1/retrieve"
    write_questions(pipeline, 5, split="test")
    args = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", url))
    out = pipeline.cfg.out_dir / "eval" / "sft-multi" / "test"
    out.mkdir(parents=True)
    (out / "trajectories.jsonl").write_text(Path(args[args.index("--questions") + 1]).read_text())
    (out / "summary.json").write_text("{}")
    # written by the same run from another directory: the checkpoint path differs, nothing else
    settings = settings_of(parse_args([str(a) for a in args[2:]]))
    (out / "config.json").write_text(json.dumps({**settings, "model": "/elsewhere/sft"}))
    assert pipeline.evaluate("sft", tmp_path / "sft", "multi", url) == out  # runs nothing
    # the same questions under unseen passages: rag_r1.eval gets the call (and refuses the directory by name)
    pipeline.cfg.unseen_passages = True
    assert "--unseen-passages" in command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", url))


def test_sft_data_and_guides_think_the_same_final_thought(pipeline, tmp_path):
    write_questions(pipeline, 10)
    url = "http://127.0.0.1:1/retrieve"
    for thought in ("fixed", "quote"):
        pipeline.cfg.sft_thought = thought
        for args in (command(lambda: pipeline.build_sft_data(url, "single")),
                     command(lambda: pipeline.build_guides(tmp_path / "rl_questions.jsonl", url))):
            assert args[:2] == ["-m", "scripts.data_process.build_sft_from_evidence"]
            assert args[args.index("--final-thought") + 1] == thought
    with pytest.raises(SystemExit, match="sft_thought: expected one of fixed, quote, got 'cite'"):
        replace(pipeline.cfg, sft_thought="cite").validate()


def test_unseen_passages_reaches_sft_data_guides_rl_and_evaluation(pipeline, tmp_path):
    from rag_r1.llm_agent.loop import agent_config
    from verl.trainer.config import compose_config

    write_questions(pipeline, 10)
    write_questions(pipeline, 10, split="test")
    url = "http://127.0.0.1:1/retrieve"
    for unseen in (False, True):
        pipeline.cfg.unseen_passages = unseen
        builders = [command(lambda: pipeline.build_sft_data(url, "multi")),
                    command(lambda: pipeline.build_guides(tmp_path / "rl_questions.jsonl", url)),
                    command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", url))]
        assert [("--unseen-passages" in args) for args in builders] == [unseen] * 3
        rl = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", url))
        assert agent_config(compose_config(rl[2:])).unseen_passages is unseen


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_results_profiles_sft_on_twice_the_pipelines_questions_and_leave_50_dev_questions(pipeline, tmp_path, profile):
    # as many questions as hotpotqa_closed's train.jsonl; the profile's SFT, RL and dev draws come out of them
    write_questions(pipeline, 403)
    pipeline.cfg = replace(PROFILES[profile], data_dir=pipeline.cfg.data_dir, out_dir=tmp_path / profile,
                           dev_questions=50)
    own = PipelineConfig(data_dir=pipeline.cfg.data_dir, out_dir=pipeline.cfg.out_dir)
    sft = {mode: pipeline.sft_questions(mode).read_text().splitlines() for mode in ("multi", "single")}
    assert len(sft["multi"]) == len(sft["single"]) == 2 * own.sft_questions == 128
    assert len(pipeline.dev_set().read_text().splitlines()) == 50
