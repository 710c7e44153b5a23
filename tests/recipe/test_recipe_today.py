"""The demo and results profiles run the commands the pipeline before the recipe ran
(today_commands.json, recorded from it): the same tools with the same flags, the same question
samples, and trainer overrides that compose to the same configs (a default left out, order aside)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.config import REPO, load_settings
from recipe.pipeline import Pipeline

TODAY = json.loads((Path(__file__).parent / "today_commands.json").read_text())
URL = "http://127.0.0.1:8000/retrieve"
TRAINERS = ("verl.trainer.main_ppo", "verl.trainer.fsdp_sft_trainer")


class Stop(Exception):
    """Raised instead of a stage's command where the stage would go on to use its output."""


def run_stages(pipeline: Pipeline, monkeypatch) -> dict:
    """Every command the stages of `pipeline` emit, run by nothing, with paths as today_commands.json spells them."""
    import rag_r1.search.launcher as launcher

    monkeypatch.setattr(launcher, "free_port", lambda: 8000)
    monkeypatch.setattr(launcher.ServerProcess, "start", lambda self, timeout=0: self)
    monkeypatch.setattr(launcher.ServerProcess, "stop", lambda self: None)
    stages, recorded, stop = [], [], {"on": False}

    def sh(title, args):
        stages.append({"title": title, "args": [str(a) for a in args]})
        if stop["on"]:
            raise Stop

    monkeypatch.setattr(pipeline, "sh", sh)
    monkeypatch.setattr(pipeline, "record", lambda args: recorded.append([str(a) for a in args]))
    out, base, sft, rl = pipeline.out, pipeline.ckpt / "base", pipeline.ckpt / "sft", pipeline.ckpt / "rl"
    with pipeline.retrieval_server(pipeline.build_index()):
        pass
    data = [pipeline.build_sft_data(URL, mode) for mode in ("multi", "single")]
    stop["on"] = True
    with pytest.raises(Stop):
        pipeline.run_sft(base, data)
    stop["on"] = False
    questions = pipeline.pick_rl_questions(sft, URL)
    rl_data = pipeline.build_rl_data(questions)
    guides = pipeline.build_guides(questions, URL)
    stages.append({"title": f"RL ({pipeline.rl.algorithm.adv_estimator})",
                   "args": ["-m", TRAINERS[0], *pipeline.rl_overrides(sft, rl_data, URL, out / "runs" / "rl", guides)]})
    models = {"base": base, "sft": sft, "rl": rl}
    for run in pipeline.cfg.eval_runs:
        name, mode = run.split("-")
        pipeline.evaluate(name, models[name], mode, URL)
    for name in ("sft", "rl") if pipeline.cfg.dev_questions else ():
        pipeline.evaluate(name, models[name], pipeline.agent.mode, URL, split="dev")
    samples = {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
               for f in sorted(out.rglob("*.jsonl"))}
    text = json.dumps({"server": recorded[0], "stages": stages, "samples": samples})
    text = text.replace(pipeline.encoder_path(), "ENCODER").replace(str(out), "OUT")
    return json.loads(text.replace(str(pipeline.cfg.data_dir), "DATA").replace(f"{REPO}/", "REPO/"))


def composed(args: list[str]):
    """(the trainer config without its free-form agent node, the AgentConfig the loop builds from it)."""
    from rag_r1.llm_agent.config import AgentConfig
    from verl.trainer.config import compose_config as compose_ppo
    from verl.trainer.fsdp_sft_trainer import compose_config as compose_sft

    overrides = [o for o in args[2:] if not o.startswith("agent.guide_file=")]  # a path that must exist
    if args[1] == TRAINERS[1]:
        return OmegaConf.to_container(compose_sft(overrides), resolve=True), None
    config = compose_ppo(overrides)
    values = OmegaConf.to_container(config, resolve=True)
    values.pop("agent")
    return values, AgentConfig.from_config(config)


@pytest.mark.parametrize("profile", ["demo", "results", "long"])
def test_profiles_run_the_commands_the_pipeline_ran(profile, tmp_path, monkeypatch, shared_data):
    pipeline = Pipeline(load_settings([profile], [f"recipe.out_dir={tmp_path}"]), python="PYTHON")
    now, before = run_stages(pipeline, monkeypatch), TODAY[profile]
    assert now["server"] == before["server"]
    assert now["samples"] == before["samples"]
    assert [s["title"] for s in now["stages"]] == [s["title"] for s in before["stages"]]
    for stage, old in zip(now["stages"], before["stages"]):
        if stage["args"][1] not in TRAINERS:
            assert stage["args"] == old["args"], stage["title"]
            continue
        assert composed(stage["args"]) == composed(old["args"]), stage["title"]
        guide = [a for a in stage["args"] if a.startswith("agent.guide_file=")]
        assert guide == [a for a in old["args"] if a.startswith("agent.guide_file=")]
        # what the profile leaves to the schemas' defaults: only repeated defaults went
        assert sorted(set(old["args"]) - set(stage["args"])) == {
            ("demo", "SFT"): [], ("demo", "RL (grpo)"): []}.get(
            (profile, stage["title"]), {"SFT": ["data.max_length=2048", "trainer.total_epochs=1"],
                                        "RL (grpo)": ["agent.max_obs_length=1000", "agent.topk=3"]}[stage["title"]])
        assert set(stage["args"]) <= set(old["args"])
