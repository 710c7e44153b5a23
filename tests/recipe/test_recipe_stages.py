"""The recipe's stages: the commands they run (the trainers' compose with their schemas, the agent runs
in the RL mode its data is built in), the question samples they draw and what a re-run reuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.config import load_settings, rl_runs
from recipe.pipeline import Pipeline, latest_step_dir

URL = "http://127.0.0.1:1/retrieve"
# Values set apart from the trainers' and the agent's defaults: an override that still repeats a
# default is then one the recipe's profile set.
APART = ["agent.topk=2", "agent.max_obs_length=600", "rl.actor_rollout_ref.model.lora_rank=8",
         "sft.trainer.total_epochs=2", "sft.data.max_length=1024",
         "rl.custom_reward_function.reward_kwargs.round_cost=0.1", "rl.algorithm.negative_advantage_scale=0.5"]


class Ran(Exception):
    """Raised instead of running a stage's command; carries its arguments."""


def make(tmp_path: Path, *overrides: str, profiles=("base",)) -> Pipeline:
    """A pipeline of `profiles` over an empty data set in tmp_path, whose stages raise Ran instead of running."""
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        if not (data / name).exists():
            (data / name).write_text("")
    settings = load_settings(profiles, [f"recipe.data_dir={data}", f"recipe.out_dir={tmp_path / 'out'}", *APART,
                                        *overrides])
    return running_nothing(Pipeline(settings))


def running_nothing(pipeline: Pipeline) -> Pipeline:
    """`pipeline` with stages that raise Ran instead of running their command."""
    def run(title, args):
        raise Ran([str(a) for a in args])

    pipeline.sh = run
    return pipeline


@pytest.fixture
def pipeline(tmp_path) -> Pipeline:
    return make(tmp_path)


def write_questions(pipeline: Pipeline, n: int, extra: tuple[str, ...] = (), split: str = "train") -> list[str]:
    """<split>.jsonl of n questions q0..q{n-1} (and the `extra` rows after them); the question rows."""
    rows = [json.dumps({"id": f"q{i}", "question": f"q{i}?", "golden_answers": ["a"]}) for i in range(n)]
    (pipeline.cfg.data_dir / f"{split}.jsonl").write_text("\n".join([*rows, *extra]) + "\n")
    return rows


def command(stage) -> list[str]:
    with pytest.raises(Ran) as ran:
        stage()
    return ran.value.args[0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("profiles", [("base",), ("base", "ppo")])
def test_rl_command_composes_with_the_profile_in_the_rl_mode(tmp_path, profiles):
    from rag_r1.llm_agent.loop import agent_config
    from verl.trainer.config import compose_config

    pipeline = make(tmp_path, profiles=profiles)
    args = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    config = compose_config(args[2:])
    agent = agent_config(config)
    assert (agent.mode, agent.topk, agent.max_obs_length) == ("multi", 2, 600)
    assert config.actor_rollout_ref.model.lora_rank == 8
    assert config.custom_reward_function.reward_kwargs.round_cost == 0.1
    assert "+custom_reward_function.reward_kwargs.round_cost=0.1" in args  # a new key of an open mapping
    assert config.algorithm.negative_advantage_scale == 0.5
    assert (config.algorithm.adv_estimator, config.trainer.total_training_steps) == (
        "grpo" if profiles == ("base",) else "gae", 10)
    assert (config.data.train_files, config.actor_rollout_ref.model.path, config.retriever.url) == (
        str(tmp_path / "rl_data" / "train.parquet"), str(tmp_path / "sft"), URL)


def test_ppo_profile_trains_the_critic_on_the_actors_batches(tmp_path):
    from verl.trainer.config import compose_config

    pipeline = make(tmp_path, "rl.actor_rollout_ref.actor.ppo_mini_batch_size=4", profiles=("base", "ppo"))
    config = compose_config(command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))[2:])
    assert (config.critic.ppo_mini_batch_size, config.critic.ppo_max_token_len_per_gpu) == (4, 2048)
    assert config.algorithm.use_kl_in_reward is True


def finished_rl_run(out: Path) -> None:
    """What a finished 10-step `rl` run leaves in `out`: its model, its last step marked, an evaluation."""
    from verl.utils.checkpoint import mark_latest, save_trainer_state

    (out / "checkpoints" / "rl").mkdir(parents=True)
    (out / "checkpoints" / "rl" / "config.json").write_text("{}")
    save_trainer_state(out / "runs" / "rl" / "global_step_10", 10, {})
    mark_latest(out / "runs" / "rl", 10)
    (out / "eval" / "rl-multi" / "test").mkdir(parents=True)


def test_a_finished_rl_run_asked_for_more_steps_carries_on_and_sets_its_evaluations_aside(tmp_path):
    pipeline = make(tmp_path)
    out = pipeline.out
    finished_rl_run(out)
    (out / "eval" / "sft-multi" / "test").mkdir(parents=True)
    assert pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL) == out / "checkpoints" / "rl"
    assert (out / "eval" / "rl-multi").is_dir()  # the profile's 10 steps are done: the evaluations stand

    longer = make(tmp_path, "rl.trainer.total_training_steps=24")
    args = command(lambda: longer.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))
    assert "trainer.total_training_steps=24" in args and f"trainer.default_local_dir={out / 'runs' / 'rl'}" in args
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["rl-multi@step10", "sft-multi"]


def test_sft_command_composes_with_the_profile_and_both_modes_data(pipeline, tmp_path):
    from verl.trainer.fsdp_sft_trainer import compose_config

    data = [tmp_path / "multi.jsonl", tmp_path / "single.jsonl"]
    args = command(lambda: pipeline.run_sft(tmp_path / "base", data))
    assert args[:2] == ["-m", "verl.trainer.fsdp_sft_trainer"]
    config = compose_config(args[2:])
    assert list(config.data.train_files) == [str(p) for p in data]
    assert (config.data.max_length, config.trainer.total_epochs, config.optim.warmup_steps_ratio) == (1024, 2, 0.1)
    assert config.trainer.default_local_dir == str(pipeline.out / "runs" / "sft")


def test_evaluation_and_rl_share_the_agent_but_the_search_rounds_the_profile_sets_apart(pipeline, tmp_path):
    from rag_r1.llm_agent.loop import agent_config
    from verl.trainer.config import compose_config

    write_questions(pipeline, 5, split="test")
    evaluation = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", URL))
    rl = compose_config(command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))[2:])
    agent = agent_config(rl)
    assert [flag(evaluation, "--topk"), flag(evaluation, "--max-obs-length"), flag(evaluation, "--max-new-tokens")] \
        == [str(agent.topk), str(agent.max_obs_length), str(rl.data.max_response_length)]
    # the search rounds RL trains for are those evaluation scores; eval_agent may set them apart
    assert (agent.max_turns, flag(evaluation, "--max-turns")) == (2, "2")
    apart = make(tmp_path, "eval_agent.max_turns=3")
    assert flag(command(lambda: apart.evaluate("sft", tmp_path / "sft", "multi", URL)), "--max-turns") == "3"


def test_rl_questions_are_the_seeded_sample_or_its_frontier(pipeline, tmp_path):
    rows = write_questions(pipeline, 10)
    pipeline.cfg.rl_questions, pipeline.cfg.frontier_n = 3, 0
    drawn = pipeline.pick_rl_questions(tmp_path / "sft", URL)  # runs nothing
    picked = drawn.read_text().splitlines()
    assert drawn.name == "train.jsonl"  # build_rl_data names the parquet after it
    assert len(picked) == 3 and set(picked) <= set(rows)
    assert drawn == pipeline.pick_rl_questions(tmp_path / "sft", URL)
    pipeline.cfg.frontier_n = 5
    args = command(lambda: pipeline.pick_rl_questions(tmp_path / "sft", URL))
    assert args[:2] == ["-m", "rag_r1.eval.frontier"] and flag(args, "--n") == "5"
    # sampled as RL samples: the rollouts' temperature, rounds and per-turn length
    assert [flag(args, name) for name in ("--temperature", "--max-turns", "--max-new-tokens", "--mode")] == [
        "1.0", "2", "96", "multi"]
    # the frontier filters the very sample a run without it trains on (and so leaves the same dev questions)
    assert open(flag(args, "--questions")).read().splitlines() == picked


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
    assert flag(args, "--questions") == str(kept)


def test_rl_data_and_guides_are_rebuilt_when_their_questions_change(pipeline):
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
    assert args[:2] == ["-m", "scripts.data_process.qa_eval_sets"] and flag(args, "--mode") == "multi"
    qa_eval_sets.main(args[2:])
    rows = pd.read_parquet(pipeline.out / "rl_data" / "train.parquet")
    assert list(rows["data_source"]) == ["closed_multihop"]
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
    args = command(lambda: pipeline.evaluate("rl", tmp_path / "rl", pipeline.agent.mode, URL, split="dev"))
    out = pipeline.out / "eval"
    assert flag(args, "--questions") == str(out / "dev_questions.jsonl")
    assert flag(args, "--out") == str(out / "rl-multi" / "dev")
    assert len((out / "dev_questions.jsonl").read_text().splitlines()) == 20


def finished_evaluation(pipeline: Pipeline, args: list[str]) -> Path:
    """eval/sft-multi/test as rag_r1.eval leaves it after `args`: a row per question and a summary."""
    out = pipeline.out / "eval" / "sft-multi" / "test"
    out.mkdir(parents=True)
    (out / "trajectories.jsonl").write_text(Path(flag(args, "--questions")).read_text())
    (out / "summary.json").write_text("{}")
    return out


def test_evaluation_is_reused_only_for_the_questions_it_holds(pipeline, tmp_path):
    write_questions(pipeline, 12, split="test")
    pipeline.cfg.eval_questions = 5
    out = finished_evaluation(pipeline, command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", URL)))
    assert pipeline.evaluate("sft", tmp_path / "sft", "multi", URL) == out  # runs nothing
    pipeline.cfg.eval_questions = 8  # a resumed run with a larger sample evaluates again (reusing the 5 rows)
    args = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", URL))
    assert len(Path(flag(args, "--questions")).read_text().splitlines()) == 8


def test_an_evaluation_made_with_other_agent_settings_is_handed_to_rag_r1_eval(pipeline, tmp_path):
    from rag_r1.eval.__main__ import parse_args, settings_of

    write_questions(pipeline, 5, split="test")
    args = command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", URL))
    out = finished_evaluation(pipeline, args)
    # written by the same run from another directory: the checkpoint path differs, nothing else
    settings = settings_of(parse_args([str(a) for a in args[2:]]))
    (out / "config.json").write_text(json.dumps({**settings, "model": "/elsewhere/sft"}))
    assert pipeline.evaluate("sft", tmp_path / "sft", "multi", URL) == out  # runs nothing
    # the same questions under unseen passages: rag_r1.eval gets the call (and refuses the directory by name)
    unseen = make(tmp_path, "agent.unseen_passages=true")
    assert "--unseen-passages" in command(lambda: unseen.evaluate("sft", tmp_path / "sft", "multi", URL))


def test_sft_data_and_guides_think_the_same_final_thought(tmp_path):
    for thought in ("fixed", "quote"):
        pipeline = make(tmp_path, f"recipe.sft_thought={thought}")
        write_questions(pipeline, 10)
        for args in (command(lambda: pipeline.build_sft_data(URL, "single")),
                     command(lambda: pipeline.build_guides(tmp_path / "rl_questions.jsonl", URL))):
            assert args[:2] == ["-m", "scripts.data_process.build_sft_from_evidence"]
            assert flag(args, "--final-thought") == thought


def test_unseen_passages_reaches_sft_data_guides_rl_and_evaluation(tmp_path):
    from rag_r1.llm_agent.loop import agent_config
    from verl.trainer.config import compose_config

    for unseen in (False, True):
        pipeline = make(tmp_path, f"agent.unseen_passages={str(unseen).lower()}")
        write_questions(pipeline, 10)
        write_questions(pipeline, 10, split="test")
        builders = [command(lambda: pipeline.build_sft_data(URL, "multi")),
                    command(lambda: pipeline.build_guides(tmp_path / "rl_questions.jsonl", URL)),
                    command(lambda: pipeline.evaluate("sft", tmp_path / "sft", "multi", URL))]
        assert [("--unseen-passages" in args) for args in builders] == [unseen] * 3
        rl = command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))
        assert agent_config(compose_config(rl[2:])).unseen_passages is unseen


def test_missing_data_names_the_file(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(SystemExit, match="train.jsonl is missing"):
        Pipeline(load_settings(["base"], [f"recipe.data_dir={tmp_path}", f"recipe.out_dir={tmp_path / 'out'}"]))


def test_latest_step_dir_orders_numerically(tmp_path):
    for step in (2, 10, 9):
        (tmp_path / f"global_step_{step}").mkdir()
    assert latest_step_dir(tmp_path).name == "global_step_10"


def test_demo_profile_draws_as_many_comparison_as_bridge_questions_and_evaluates_every_held_out_one(tmp_path):
    from recipe.config import REPO

    pipeline = running_nothing(Pipeline(load_settings(["demo"], [f"recipe.out_dir={tmp_path}"])))
    kinds = [json.loads(row)["type"] for row in pipeline.rl_candidates().read_text().splitlines()]
    assert len(kinds) == 16 and kinds.count("comparison") == kinds.count("bridge") == 8
    args = command(lambda: pipeline.evaluate("rl", tmp_path / "rl", "multi", URL))
    assert flag(args, "--questions") == str(REPO / "data" / "demo" / "test.jsonl")
    # 64-token turns and two search rounds in RL and evaluation alike
    assert [flag(args, name) for name in ("--topk", "--max-new-tokens", "--max-turns")] == ["2", "64", "2"]


# ---------------------------------------------------------------- what the results profiles set

def results_pipeline(tmp_path: Path, profile: str) -> Pipeline:
    return make(tmp_path, profiles=(profile,))


def profile_rl_config(tmp_path: Path, profile: str):
    """The trainer config a results profile's RL stage composes."""
    from verl.trainer.config import compose_config

    pipeline = results_pipeline(tmp_path, profile)
    return compose_config(command(lambda: pipeline.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL))[2:])


@pytest.mark.parametrize("profile", ["results", "long"])
def test_results_profiles_reward_f1_which_ranks_a_near_miss_above_a_wrong_entity(tmp_path, profile):
    from rag_r1.reward import compute_score

    kwargs = profile_rl_config(tmp_path, profile).custom_reward_function.reward_kwargs
    gold = {"target": ["Brett Allen Scallions"]}

    def score(answer: str, **scoring) -> float:
        return compute_score("closed_multihop", f"<answer> {answer} </answer>", gold, **scoring)["score"]

    assert kwargs["scorer"] == "f1"
    assert score("Brett Scallions", **kwargs) == pytest.approx(0.8)  # precision 2/2, recall 2/3
    assert score("Ciaran Gribbin", **kwargs) == 0.0
    assert score("Brett Scallions") == 0.0  # the data source's own scorer, EM


@pytest.mark.parametrize("profile", ["demo", "results", "long"])
def test_profiles_take_one_optimizer_step_of_four_questions_of_four_samples_a_step(tmp_path, profile):
    config = profile_rl_config(tmp_path / profile, profile)
    base = profile_rl_config(tmp_path / "base", "base")
    actor = config.actor_rollout_ref.actor
    assert (config.actor_rollout_ref.rollout.n, config.data.train_batch_size, actor.ppo_mini_batch_size) == (4, 4, 4)
    # as the base profile: four questions, one optimizer step
    assert (base.data.train_batch_size, base.actor_rollout_ref.actor.ppo_mini_batch_size) == (4, 4)


@pytest.mark.parametrize("profile", ["results", "long"])
def test_results_profiles_sft_on_twice_the_base_questions_and_leave_50_dev_questions(tmp_path, profile):
    from recipe.config import RecipeConfig

    pipeline = results_pipeline(tmp_path, profile)
    # as many questions as hotpotqa_closed's train.jsonl; the profile's SFT, RL and dev draws come out of them
    write_questions(pipeline, 403)
    pipeline.cfg.dev_questions = 50
    sft = {mode: pipeline.sft_questions(mode).read_text().splitlines() for mode in ("multi", "single")}
    assert len(sft["multi"]) == len(sft["single"]) == 2 * RecipeConfig.sft_questions == 128
    assert len(pipeline.dev_set().read_text().splitlines()) == 50


# ---------------------------------------------------------------- RL seeds and the guide-only control

def producing(pipeline: Pipeline) -> list[list[str]]:
    """`pipeline` with stages that record their command and leave what the tool would (RL: a checkpoint
    at the last step; guides: their file); the recorded commands."""
    ran: list[list[str]] = []

    def run(title, args):
        args = [str(a) for a in args]
        ran.append(args)
        if args[1] == "verl.trainer.main_ppo":
            keys = dict(a.split("=", 1) for a in args[2:])
            step = Path(keys["trainer.default_local_dir"]) / f"global_step_{keys['trainer.total_training_steps']}"
            (step / "actor" / "huggingface").mkdir(parents=True)
            (step / "actor" / "huggingface" / "config.json").write_text("{}")
        elif args[1] == "scripts.data_process.build_sft_from_evidence":
            Path(flag(args, "--out")).parent.mkdir(parents=True, exist_ok=True)
            Path(flag(args, "--out")).write_text("")

    pipeline.sh = run
    return ran


def rl_configs(ran: list[list[str]]):
    """The trainer configs of the recorded RL commands, in order."""
    from verl.trainer.config import compose_config

    return [compose_config(args[2:]) for args in ran if args[1] == "verl.trainer.main_ppo"]


def test_each_seed_trains_its_own_rl_model_and_the_control_imitates_the_guides_alone(tmp_path):
    pipeline = make(tmp_path, "recipe.rl_seeds=[0,1]", "recipe.guide_control=true", "recipe.guides=false",
                    "rl.algorithm.guides.keep=unsolved", "rl.algorithm.guides.guided_weight=0.25")
    questions = tmp_path / "rl_questions.jsonl"
    questions.write_text("")
    ran = producing(pipeline)
    models = pipeline.train_rl(tmp_path / "sft", tmp_path / "rl_data", questions, URL)
    out = pipeline.out
    assert models == {name: out / "checkpoints" / name for name in ("rl", "rl_seed1", "control", "control_seed1")}
    assert all((model / "config.json").exists() for model in models.values())
    # guides are built for the control alone: recipe.guides is off
    assert ran[0][:2] == ["-m", "scripts.data_process.build_sft_from_evidence"]
    guides = flag(ran[0], "--out")
    configs = rl_configs(ran)
    assert [(c.trainer.default_local_dir, c.data.seed, c.actor_rollout_ref.rollout.seed) for c in configs] == [
        (str(out / "runs" / "rl"), 0, 0), (str(out / "runs" / "rl_seed1"), 1, 1), (str(out / "runs" / "control"), 0, 0),
        (str(out / "runs" / "control_seed1"), 1, 1)]
    assert [c.agent.get("guide_file") for c in configs] == [None, None, guides, guides]
    # the control: the guides alone, nothing sampled; all else (the guides' weight included) the RL stage's
    assert [(c.algorithm.guides.only, c.algorithm.guides.keep, c.algorithm.guides.guided_weight)
            for c in configs] == [(False, "unsolved", 0.25)] * 2 + [(True, "unsolved", 0.25)] * 2
    assert {c.actor_rollout_ref.model.lora_rank for c in configs} == {8}
    assert {c.actor_rollout_ref.actor.optim.lr for c in configs} == {3e-4}
    assert {c.trainer.total_training_steps for c in configs} == {10}


def test_every_seeds_model_and_control_are_evaluated(tmp_path):
    pipeline = make(tmp_path, "recipe.rl_seeds=[0,3]", "recipe.guide_control=true",
                    "recipe.eval_runs=[sft-multi,rl-single,rl-multi]", "recipe.sft_questions=2",
                    "recipe.rl_questions=4", "recipe.dev_questions=4")
    write_questions(pipeline, 5, split="test")
    write_questions(pipeline, 30)
    ran = producing(pipeline)
    models = {name: tmp_path / name for name in ("sft", "rl", "rl_seed3", "control", "control_seed3")}
    pipeline.evaluate_all(models, URL)
    evaluated = [(Path(flag(args, "--out")).relative_to(pipeline.out / "eval"), flag(args, "--model"),
                  flag(args, "--mode")) for args in ran]
    assert evaluated == [(Path(label, split), str(tmp_path / label.split("-")[0]), label.split("-")[1])
                         for label, split in (("sft-multi", "test"), ("rl-single", "test"), ("rl_seed3-single", "test"),
                                              ("rl-multi", "test"), ("rl_seed3-multi", "test"),
                                              ("control-multi", "test"), ("control_seed3-multi", "test"),
                                              ("sft-multi", "dev"), ("rl-multi", "dev"), ("rl_seed3-multi", "dev"),
                                              ("control-multi", "dev"), ("control_seed3-multi", "dev"))]


def test_a_finished_seed_is_skipped_and_carries_its_evaluations(tmp_path):
    pipeline = make(tmp_path, "recipe.rl_seeds=[0,1]", "recipe.guides=false")
    out = pipeline.out
    finished_rl_run(out)
    ran = producing(pipeline)
    pipeline.train_rl(tmp_path / "sft", tmp_path / "rl_data", tmp_path / "q.jsonl", URL)
    assert [c.trainer.default_local_dir for c in rl_configs(ran)] == [str(out / "runs" / "rl_seed1")]
    pipeline.train_rl(tmp_path / "sft", tmp_path / "rl_data", tmp_path / "q.jsonl", URL)
    assert len(ran) == 1  # both seeds finished: nothing runs again
    # more steps asked for: each run carries on, and only its own evaluations move aside
    (out / "eval" / "rl_seed1-multi" / "test").mkdir(parents=True)
    longer = make(tmp_path, "recipe.rl_seeds=[0,1]", "recipe.guides=false", "rl.trainer.total_training_steps=12")
    ran = producing(longer)
    longer.run_rl(tmp_path / "sft", tmp_path / "rl_data", URL, run=rl_runs(longer.cfg)[1])
    assert [(c.trainer.default_local_dir, c.trainer.total_training_steps) for c in rl_configs(ran)] == [
        (str(out / "runs" / "rl_seed1"), 12)]
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["rl-multi", "rl_seed1-multi@step10"]


def test_results_profile_trains_two_seeds_and_a_control_for_each(tmp_path):
    assert [(run.name, run.seed, run.guided, run.control) for run in rl_runs(load_settings(["results"]).recipe)] == [
        ("rl", 0, True, False), ("rl_seed1", 1, True, False), ("control", 0, True, True),
        ("control_seed1", 1, True, True)]
    assert [run.name for run in rl_runs(load_settings(["demo"]).recipe)] == ["rl", "control"]
