"""The recipe's stages: index -> retrieval server -> SFT data -> SFT -> RL questions -> RL data -> RL (one run
per seed, and a guide-only control per seed) -> evaluation -> report.

Every stage runs the same command-line tool a researcher would run by hand (each command is printed
and appended to OUT/commands.sh) and writes under OUT; a stage whose output is complete is skipped on
re-run, so an interrupted run continues where it stopped. What each tool is told comes from the
profile (recipe/config.py): the trainers get its rl and sft keys, the data builders, the frontier and
evaluation its agent keys as their flags.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rag_r1.eval.metrics import is_yes_no
from rag_r1.eval.report import read_jsonl
from recipe.config import REPO, RLRun, Settings, check_settings, rl_overrides, rl_runs, sft_overrides
from recipe.samples import built_from, sampled, write_if_changed


class Pipeline:
    def __init__(self, settings: Settings, python: str = sys.executable):
        """Checks the whole profile (recipe/config.py: check_settings) and the data before any stage runs."""
        checked = check_settings(settings)
        self.settings = settings
        self.cfg = settings.recipe
        self.rl = checked.rl  # the RL stage's trainer config: the values the other stages share with it
        self.agent = checked.agent
        self.eval_agent = checked.eval_agent
        self.python = python
        for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
            if not (self.cfg.data_dir / name).is_file():
                raise SystemExit(f"recipe.data_dir: {self.cfg.data_dir / name} is missing (need corpus.jsonl, "
                                 "train.jsonl, test.jsonl; scripts/data_process/closed_corpus.py writes them)")
        self.out = self.cfg.out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.out / "checkpoints"

    # ------------------------------------------------------------------ the recipe, top to bottom
    def run(self, command: str | None = None) -> Path:
        """The whole recipe; `command` (how it was invoked) goes into the report."""
        started = time.time()
        base = self.base_model()
        index = self.build_index()
        with self.retrieval_server(index) as url:
            sft_data = [self.build_sft_data(url, mode) for mode in ("multi", "single")]
            sft = self.run_sft(base, sft_data)
            rl_questions = self.pick_rl_questions(sft, url)
            rl_data = self.build_rl_data(rl_questions)
            models = {"base": base, "sft": sft, **self.train_rl(sft, rl_data, rl_questions, url)}
            self.evaluate_all(models, url)
        from recipe.report import write_results_readme

        readme = write_results_readme(self.out, wall_seconds=time.time() - started, command=command)
        print(f"report: {readme}", flush=True)
        return readme

    # ------------------------------------------------------------------ stages
    def base_model(self) -> Path:
        target = self.ckpt / "base"
        if not (target / "config.json").exists():
            if self.cfg.model is None:
                from rag_r1.models.smollm2 import convert

                source = convert()
            else:
                source = Path(self.cfg.model)
            shutil.copytree(source, target, dirs_exist_ok=True)
        return target

    def build_index(self) -> Path:
        index_dir = self.out / "index"
        index = index_dir / "flat.index"
        if index.exists():
            return index
        corpus = self.cfg.data_dir / "corpus.jsonl"
        self.sh("embed corpus", ["-m", "scripts.build_corpus.build_corpus_embedding", "--corpus", corpus,
                                 "--out", index_dir / "emb", "--model", self.cfg.encoder, "--num-shards", "1"])
        self.sh("build index", ["-m", "scripts.build_corpus.build_corpus_index", "--embeddings", index_dir / "emb",
                                "--out", index, "--factory", "Flat", "--corpus", corpus])
        return index

    @contextmanager
    def retrieval_server(self, index: Path):
        from rag_r1.search.launcher import ServerProcess

        encoder = self.encoder_path()
        server = ServerProcess(["--retriever", "dense", "--corpus", self.cfg.data_dir / "corpus.jsonl",
                                "--index", index, "--encoder", encoder, "--topk", self.agent.topk],
                               self.out / "logs" / "retrieval_server.log", python=self.python)
        self.record(server.command())
        try:
            server.start(timeout=600)
        except RuntimeError as err:
            raise SystemExit(str(err)) from err
        try:
            (self.out / "config.json").write_text(json.dumps(
                {"retriever": "dense", "encoder": str(encoder), "index": "Flat (inner product)", "topk": self.agent.topk,
                 "corpus": str(self.cfg.data_dir / "corpus.jsonl"), "profile": self.settings.as_profile()},
                indent=2) + "\n")
            print(f"retrieval server ready at {server.retrieve_url}", flush=True)
            yield server.retrieve_url
        finally:
            server.stop()

    def build_sft_data(self, url: str, mode: str) -> Path:
        out = self.out / "sft_data" / f"{mode}.jsonl"
        if not out.exists():
            self.evidence_trajectories(f"SFT data ({mode})", self.sft_questions(mode), url, mode, out)
        return out

    def sft_questions(self, mode: str) -> Path:
        return sampled(self.cfg.data_dir / "train.jsonl", self.cfg.sft_questions,
                       self.out / "sft_data" / f"sft_{mode}_questions.jsonl", self.cfg.seed)

    def build_guides(self, questions: Path, url: str) -> Path:
        """Gold trajectories of the RL questions in the RL mode, to mix into their groups."""
        out = self.out / "rl_data" / "guides.jsonl"
        if not built_from(out, questions):
            self.evidence_trajectories("guides", questions, url, self.agent.mode, out)
        return out

    def evidence_trajectories(self, title: str, questions: Path, url: str, mode: str, out: Path) -> None:
        self.sh(title, ["-m", "scripts.data_process.build_sft_from_evidence", "--questions", questions,
                        "--corpus", self.cfg.data_dir / "corpus.jsonl", "--retrieval-url", url,
                        "--mode", mode, "--out", out, "--topk", str(self.agent.topk),
                        "--tokenizer", self.ckpt / "base", "--max-obs-length", str(self.agent.max_obs_length),
                        *(["--unseen-passages"] if self.agent.unseen_passages else []),
                        "--final-thought", self.cfg.sft_thought])

    def pick_rl_questions(self, sft: Path, url: str) -> Path:
        """The RL questions: those of the seeded sample at the SFT model's frontier, or the sample
        itself when frontier_n is 0. Either is a file named train.jsonl: the RL data is named after it."""
        if self.cfg.frontier_n:
            return self.frontier(sft, url, self.rl_draw())
        return self.rl_draw()

    def rl_draw(self) -> Path:
        """The seeded sample (rl_candidates), less its yes/no questions unless rl_yes_no."""
        drawn = self.rl_candidates()
        if self.cfg.rl_yes_no:
            return drawn
        rows = drawn.read_text(encoding="utf-8").splitlines()
        kept = "".join(row + "\n" for row in rows if not is_yes_no(json.loads(row)["golden_answers"]))
        return write_if_changed(self.out / "rl_questions" / "open" / "train.jsonl", kept)

    def rl_candidates(self) -> Path:
        """The seeded sample of train questions RL draws from: its questions, or the frontier's candidates.
        One draw either way, so runs with and without the frontier start from the same questions and
        leave the same dev questions."""
        return sampled(self.cfg.data_dir / "train.jsonl", self.cfg.rl_questions,
                       self.out / "rl_questions" / "train.jsonl", self.cfg.seed, by_type=self.cfg.rl_balance_types)

    def frontier(self, model: Path, url: str, candidates: Path) -> Path:
        """The `candidates` that `model` answers right sometimes but not always (frontier/train.jsonl;
        frontier/samples.jsonl has every question's hits), sampled as RL samples: the RL agent,
        temperature and per-turn length, frontier_n times a question."""
        out = self.out / "frontier"
        if built_from(out / "counts.json", candidates):
            return out / "train.jsonl"
        self.sh("frontier", ["-m", "rag_r1.eval.frontier", "--model", model, "--questions", candidates,
                             "--retrieval-url", url, "--mode", self.agent.mode, "--out", out,
                             "--n", str(self.cfg.frontier_n),
                             "--temperature", str(self.rl.actor_rollout_ref.rollout.temperature),
                             "--batch-size", str(self.cfg.eval_batch_size), *self.agent_flags(self.agent),
                             *(["--keep-never"] if self.cfg.guides else [])])
        return out / "train.jsonl"

    def build_rl_data(self, questions: Path) -> Path:
        out = self.out / "rl_data"
        if not built_from(out / "train.parquet", questions):
            self.sh("RL data", ["-m", "scripts.data_process.qa_eval_sets", "--input-dir", questions.parent,
                                "--sets", questions.stem, "--split", "train", "--mode", self.agent.mode,
                                "--data-source", self.cfg.data_source, "--out", out])
        return out

    def run_sft(self, base: Path, data: list[Path]) -> Path:
        target = self.ckpt / "sft"
        if (target / "config.json").exists():
            return target
        run_dir = self.out / "runs" / "sft"
        overrides = sft_overrides(self.settings, {"data.train_files": data, "model.partial_pretrain": base,
                                                  "trainer.default_local_dir": run_dir})
        self.sh("SFT", ["-m", "verl.trainer.fsdp_sft_trainer", *overrides])
        shutil.copytree(latest_step_dir(run_dir), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pt"))
        return target

    def train_rl(self, sft: Path, rl_data: Path, questions: Path, url: str) -> dict[str, Path]:
        """Every RL run (recipe/config.py: rl_runs), each from the SFT model on the same data; the guides
        of the RL questions are built when a run mixes them in. Their models by run name."""
        runs = rl_runs(self.cfg)
        guides = self.build_guides(questions, url) if any(run.guided for run in runs) else None
        return {run.name: self.run_rl(sft, rl_data, url, guides if run.guided else None, run) for run in runs}

    def run_rl(self, sft: Path, rl_data: Path, url: str, guides: Path | None = None, run: RLRun | None = None) -> Path:
        """One RL run from the SFT model (`run`; None: the first seed's), with `guides` in its groups when
        given; the trainer saves every step, so a rerun resumes at the last one. A finished run asked
        for more steps (PROFILE=long on a results run) carries on from its last step; the evaluations of
        the model it had exported move aside (`set_aside_evaluations`)."""
        run = run or rl_runs(self.cfg)[0]
        target = self.ckpt / run.name
        run_dir = self.out / "runs" / run.name
        if (target / "config.json").exists():
            done, wanted = trained_steps(run_dir), self.rl.trainer.total_training_steps
            if done is None or wanted is None or done >= wanted:
                return target
            set_aside_evaluations(self.out / "eval", run.name, done)
        title = f"RL ({self.rl.algorithm.adv_estimator}, {run.name}, seed {run.seed})"
        self.sh(title, ["-m", "verl.trainer.main_ppo", *self.rl_overrides(sft, rl_data, url, run_dir, guides, run)])
        shutil.copytree(latest_step_dir(run_dir) / "actor" / "huggingface", target, dirs_exist_ok=True)
        return target

    def rl_overrides(self, sft: Path, rl_data: Path, url: str, run_dir: Path, guides: Path | None = None,
                     run: RLRun | None = None) -> list[str]:
        """The trainer's `key=value` overrides of one RL run (None: the first seed's; also the learning
        benchmark's base)."""
        stage = {"data.train_files": rl_data / "train.parquet", "data.val_files": rl_data / "train.parquet",
                 "actor_rollout_ref.model.path": sft, "trainer.default_local_dir": run_dir, "retriever.url": url}
        if guides is not None:
            stage["agent.guide_file"] = guides
        return rl_overrides(self.settings, stage, run)

    def evaluate_all(self, models: dict[str, Path], url: str) -> None:
        """The eval_runs (`rl-<mode>` evaluates every seed's model), every seed's control in agent.mode, and
        with dev questions the SFT, RL and control models on them in agent.mode."""
        runs = rl_runs(self.cfg)
        seeds = [run.name for run in runs if not run.control]
        controls = [run.name for run in runs if run.control]
        for label in self.cfg.eval_runs:
            name, mode = label.split("-")
            for model in seeds if name == "rl" else [name]:
                self.evaluate(model, models[model], mode, url)
        for model in controls:
            self.evaluate(model, models[model], self.agent.mode, url)
        for model in ["sft", *seeds, *controls] if self.cfg.dev_questions else ():
            self.evaluate(model, models[model], self.agent.mode, url, split="dev")

    def evaluate(self, name: str, model: Path, mode: str, url: str, split: str = "test") -> Path:
        """`model` in `mode` on the evaluated test questions, or (split "dev") on the dev questions."""
        out = self.out / "eval" / f"{name}-{mode}" / split
        if split == "test":
            questions = sampled(self.cfg.data_dir / "test.jsonl", self.cfg.eval_questions,
                                self.out / "eval" / "test_questions.jsonl", self.cfg.seed)
        else:
            questions = self.dev_set()
        args = ["-m", "rag_r1.eval", "--model", model, "--questions", questions,
                "--retrieval-url", url, "--mode", mode, "--out", out, "--batch-size", str(self.cfg.eval_batch_size),
                *self.agent_flags(self.eval_agent)]
        if evaluated_on(out, questions, args[2:]):
            return out
        self.sh(f"eval {name} ({mode}{', dev' if split == 'dev' else ''})", args)
        return out

    def dev_set(self) -> Path:
        """A seeded sample of dev_questions train questions (eval/dev_questions.jsonl) whose ids no SFT
        or RL sample holds."""
        rows = self.cfg.data_dir.joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()
        ids = [json.loads(row).get("id") for row in rows]
        if None in ids:
            raise SystemExit("recipe.dev_questions: every train.jsonl row needs an `id` to tell the questions SFT "
                             "and RL drew from the others")
        # the samples are rows of train.jsonl, so their ids exist once the rows' ids do
        drawn = [self.sft_questions("multi"), self.sft_questions("single"), self.rl_candidates()]
        seen = {json.loads(row)["id"] for path in drawn for row in path.read_text(encoding="utf-8").splitlines()}
        left = [row for row, qid in zip(rows, ids) if qid not in seen]
        if len(left) < self.cfg.dev_questions:
            raise SystemExit(f"recipe.dev_questions={self.cfg.dev_questions}: only {len(left)} train questions are "
                             "left outside the SFT and RL samples (lower recipe.sft_questions or recipe.rl_questions)")
        pool = self.out / "eval" / "dev_pool.jsonl"
        pool.parent.mkdir(parents=True, exist_ok=True)
        pool.write_text("".join(row + "\n" for row in left), encoding="utf-8")
        return sampled(pool, self.cfg.dev_questions, self.out / "eval" / "dev_questions.jsonl", self.cfg.seed)

    # ------------------------------------------------------------------ plumbing
    def agent_flags(self, agent) -> list[str]:
        """The flags of rag_r1.eval and its frontier that say how `agent` runs: its search rounds, its
        passages and the per-turn length the RL rollouts generate."""
        return ["--topk", str(agent.topk), "--max-turns", str(agent.max_turns),
                "--max-new-tokens", str(self.rl.data.max_response_length),
                "--max-obs-length", str(agent.max_obs_length),
                *(["--unseen-passages"] if agent.unseen_passages else [])]

    def encoder_path(self) -> str:
        if self.cfg.encoder == "minilm":
            from rag_r1.search.encoder import default_minilm_path

            return str(default_minilm_path())
        return self.cfg.encoder

    def record(self, args: list) -> None:
        line = " ".join(shlex.quote(str(a)) for a in args)
        with (self.out / "commands.sh").open("a") as f:
            f.write(line + "\n")
        print(f"$ {line}", flush=True)

    def sh(self, title: str, args: list) -> None:
        print(f"\n=== {title}", flush=True)
        full = [self.python, *args]
        self.record(full)
        started = time.time()
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run([str(a) for a in full], cwd=REPO, env=env)
        if done.returncode != 0:
            raise SystemExit(f"stage '{title}' failed (exit {done.returncode}); re-run to resume from it")
        with (self.out / "stage_times.jsonl").open("a") as f:
            f.write(json.dumps({"stage": title, "seconds": round(time.time() - started, 1)}) + "\n")


def evaluated_on(out: Path, questions: Path, eval_args: list) -> bool:
    """Whether out/ holds a summary of exactly these questions, made with the agent settings of these
    rag_r1.eval arguments. A resumed run whose sample changed (another seed, eval limit or dev draw)
    evaluates again, and rag_r1.eval reuses the rows it has; one whose agent settings changed is
    handed to rag_r1.eval too, which refuses it by name instead of the old numbers passing for new
    ones. The checkpoint's path may differ (a run's stages copied into another directory)."""
    from rag_r1.eval.__main__ import changed_settings, parse_args, settings_of

    if not (out / "summary.json").exists():
        return False
    if changed_settings(out, settings_of(parse_args([str(a) for a in eval_args])), ignore=("model",)):
        return False
    return ({row["id"] for row in read_jsonl(out / "trajectories.jsonl", missing_ok=True)}
            == {row["id"] for row in read_jsonl(questions)})


def trained_steps(run_dir: Path) -> int | None:
    """The step of the checkpoint `latest_step_dir` would export; None without one (an exported model
    copied alone)."""
    steps = step_dirs(run_dir)
    return step_of(steps[-1]) if steps else None


def set_aside_evaluations(eval_dir: Path, name: str, step: int) -> None:
    """eval/<name>-<mode>/ becomes eval/<name>-<mode>@step<step>/: the evaluations of the model the RL
    run `name` had exported at `step`, kept (the report lists them as their own rows) instead of
    passing for the model that more steps will export under the same path."""
    for old in sorted(eval_dir.glob(f"{name}-*")):
        if old.is_dir() and "@" not in old.name:
            old.rename(old.with_name(f"{old.name}@step{step}"))


def step_of(step_dir: Path) -> int:
    return int(step_dir.name.rsplit("_", 1)[1])


def step_dirs(run_dir: Path) -> list[Path]:
    """run_dir's global_step_* checkpoints, in step order."""
    return sorted(run_dir.glob("global_step_*"), key=step_of)


def latest_step_dir(run_dir: Path) -> Path:
    steps = step_dirs(run_dir)
    if not steps:
        raise SystemExit(f"no global_step_* checkpoint under {run_dir}")
    return steps[-1]
