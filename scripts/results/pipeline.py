"""The whole RAG-R1 recipe as resumable stages: index -> server -> SFT data -> SFT -> frontier -> RL -> eval
-> report.

`make results` (scripts/results/make_results.py) and `make demo` (scripts/quickstart/demo.py) are this
pipeline with different sizes and data. Every stage runs the same command-line tool a researcher would
run by hand (each command is printed and appended to OUT/commands.sh), and writes its output under OUT;
a stage whose output is complete is skipped on re-run, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag_r1.eval.metrics import is_yes_no
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.sft.evidence import FINAL_THOUGHTS
from scripts.results.report import read_jsonl
from verl.trainer.config import AlgorithmConfig, share_problems

REPO = Path(__file__).resolve().parents[2]
DATA_SOURCE = "closed_multihop"  # scored by exact match (rag_r1.reward.REWARDS)
# RL runs in multi-query mode; its questions (frontier), prompts (RL data), guides and agent.mode
# are all built in it, so they agree whatever AgentConfig's default mode is.
RL_MODE = "multi"


@dataclass
class PipelineConfig:
    data_dir: Path  # corpus.jsonl, train.jsonl, test.jsonl (scripts/data_process/closed_corpus.py output)
    out_dir: Path
    model: str | None = None  # base HF checkpoint; None = the pip-shipped SmolLM2-135M-Instruct, converted
    encoder: str = "minilm"  # sentence-transformers dir/name, or "minilm" for the pip-shipped MiniLM
    topk: int = AgentConfig.topk  # passages per query, in every stage
    seed: int = 0  # picks the SFT questions and the evaluated test questions
    # SFT on evidence trajectories of both modes, so the model follows whichever instruction it gets.
    sft_questions: int = 64  # train questions per mode (a seeded sample) turned into SFT conversations
    sft_epochs: int = 1
    sft_steps: int | None = None  # steps of the SFT run, whatever sft_epochs (None = sft_epochs over the data)
    sft_batch: int = 8
    sft_lr: float = 1e-4
    sft_max_length: int = 2048
    # The thought before the answer in SFT conversations and guides: "fixed" (one sentence for every
    # answer) or "quote" (the supporting sentence that holds the answer; rag_r1.sft.evidence).
    sft_thought: str = "fixed"
    # RL on top of SFT, multi-query mode. GRPO needs no critic and learns from groups of samples
    # of one question; ppo is the paper's GAE with a critic.
    algo: str = "grpo"  # grpo | ppo
    rl_steps: int = 10
    rl_batch: int = 4  # questions per step
    # questions per optimizer step (veRL's ppo_mini_batch_size): rl_batch / rl_mini_batch updates per
    # step from the same samples, so a short run learns more per generated token
    rl_mini_batch: int = 2
    rl_n: int = 4  # samples per question (GRPO's group; 1 is plain PPO sampling)
    rl_lr: float = 1e-4  # of the LoRA adapter (rank lora_rank), or of all weights when lora_rank is 0
    rl_critic_lr: float = 5e-5  # ppo only
    rl_max_turns: int = 2
    rl_response_length: int = 96  # tokens generated per turn
    # Sampling temperature of RL rollouts and of the frontier: at 1.0 a 135M policy derails often
    # enough (an SFT model right 44 % greedy was right 5 % of the time) that groups rarely hold a success.
    rl_temperature: float = 0.7
    lora_rank: int = 16  # 0 = full fine-tuning of the actor
    lora_alpha: float = 32
    # Reward of a trajectory (rag_r1.reward scorers): em (the paper's), f1 (partial credit), format
    # (EM plus small credits for a well formed answer and search, capped at 1).
    reward: str = "em"
    # Share of a rewarded score lost per search round after the first (rag_r1.reward); 0 = the paper's
    # reward, which pays one parallel round and several sequential ones alike.
    round_cost: float = 0.0
    # Share of a below-average sample's negative advantage kept (algorithm.negative_advantage_scale):
    # 1 = GRPO/PPO as published, 0 = learn only from samples better than their group.
    rl_negative_scale: float = AlgorithmConfig.negative_advantage_scale
    # DAPO's dynamic sampling: groups whose samples all score the same are dropped and the batch
    # refilled, at most max_gen_batches generation batches per step.
    filter_groups: bool = True
    max_gen_batches: int = 3
    # RL questions: a seeded sample of rl_questions train questions (None = all). With frontier_n > 0
    # the SFT model answers each frontier_n times first and RL keeps those at its frontier: right
    # sometimes but not always (with guides, never too). frontier_n = 0 trains on the sample as drawn.
    rl_questions: int | None = 64
    frontier_n: int = 0
    # Draw the RL questions evenly over the rows' `type` (e.g. bridge / comparison) instead of in the
    # train set's proportions, so a rare type still teaches its own search pattern.
    rl_balance_types: bool = False
    # Whether the RL questions may be answered by "yes" or "no". A one-bit answer scores a fixed guess
    # half the time, and dynamic sampling keeps only the groups whose guess was sometimes wrong, so on
    # those RL mostly teaches which guess to make, not to read (the long profile's model answers "yes"
    # to 8 of 10 such test questions). False drops them from the draw; the dev questions stay the same.
    rl_yes_no: bool = True
    rl_token_budget: int = 2048  # padded tokens per micro-batch in every RL pass (use_dynamic_bsz)
    # Mix the gold evidence trajectory of each RL question into its group (rag_r1.llm_agent.guides).
    guides: bool = True
    # Tokens of one <information> block (SFT data, PPO and eval alike): a multi-query round of two
    # queries x 3 passages needs ~720 (median) on hotpotqa_closed; at 600, 18% of the multi-mode SFT
    # trajectories lose evidence to the cut.
    max_obs_length: int = AgentConfig.max_obs_length
    # agent.unseen_passages for SFT data, guides, RL and evaluation alike: a search shows only passages
    # its trajectory has not been shown yet, so a second round always brings new text.
    unseen_passages: bool = AgentConfig.unseen_passages
    # Evaluation on test.jsonl
    # model-mode pairs evaluated (model: base | sft | rl; mode: single | multi), in this order
    eval_runs: tuple[str, ...] = ("base-multi", "sft-single", "sft-multi", "rl-single", "rl-multi")
    eval_limit: int | None = 50  # a seeded sample of N test questions (~9 s each per model and mode); None = all
    # Train questions that neither SFT nor RL drew, on which the SFT and RL models are evaluated in the RL
    # mode too (eval/<model>-multi/dev): a held-out set to compare settings on, so that test.jsonl is read
    # for the final numbers only. 0 = none (each model takes 5-7 s a question on 2 cores).
    dev_questions: int = 0
    eval_max_turns: int = 3
    eval_max_new_tokens: int = 96
    eval_batch_size: int = 16
    python: str = field(default_factory=lambda: sys.executable)

    def validate(self) -> None:
        for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
            if not (self.data_dir / name).is_file():
                raise SystemExit(f"data_dir: {self.data_dir / name} is missing (need corpus.jsonl, train.jsonl, "
                                 "test.jsonl; scripts/data_process/closed_corpus.py writes them)")
        known = {f"{model}-{mode}" for model in ("base", "sft", "rl") for mode in ("single", "multi")}
        unknown = set(self.eval_runs) - known
        if unknown:
            raise SystemExit(f"eval_runs: unknown {sorted(unknown)}; expected model-mode pairs of base, sft, rl "
                             "and single, multi (e.g. rl-multi)")
        if self.sft_thought not in FINAL_THOUGHTS:
            raise SystemExit(f"sft_thought: expected one of {', '.join(FINAL_THOUGHTS)}, got {self.sft_thought!r}")
        if self.algo not in ("grpo", "ppo"):
            raise SystemExit(f"algo: expected grpo or ppo, got {self.algo!r}")
        if self.reward not in ("em", "f1", "format"):
            raise SystemExit(f"reward: expected em, f1 or format, got {self.reward!r}")
        if self.rl_batch % self.rl_mini_batch:
            raise SystemExit(f"rl_mini_batch={self.rl_mini_batch} must divide rl_batch={self.rl_batch}")
        if problems := share_problems("rl_negative_scale", self.rl_negative_scale):
            raise SystemExit("; ".join(problems))
        if self.algo == "grpo" and self.rl_n < 2:
            raise SystemExit("rl_n: GRPO compares samples of one question, so it needs rl_n >= 2")


class Pipeline:
    def __init__(self, config: PipelineConfig):
        config.validate()
        self.cfg = config
        self.out = config.out_dir
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
            guides = self.build_guides(rl_questions, url) if self.cfg.guides else None
            rl = self.run_rl(sft, rl_data, url, guides)
            models = {"base": base, "sft": sft, "rl": rl}
            for run in self.cfg.eval_runs:
                name, mode = run.split("-")
                self.evaluate(name, models[name], mode, url)
            for name in ("sft", "rl") if self.cfg.dev_questions else ():
                self.evaluate(name, models[name], RL_MODE, url, split="dev")
        from scripts.results.report import write_results_readme

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
                                "--index", index, "--encoder", encoder, "--topk", self.cfg.topk],
                               self.out / "logs" / "retrieval_server.log", python=self.cfg.python)
        self.record(server.command())
        try:
            server.start(timeout=600)
        except RuntimeError as err:
            raise SystemExit(str(err)) from err
        try:
            (self.out / "config.json").write_text(json.dumps(
                {"retriever": "dense", "encoder": str(encoder), "index": "Flat (inner product)", "topk": self.cfg.topk,
                 "corpus": str(self.cfg.data_dir / "corpus.jsonl"), "pipeline": jsonable(asdict(self.cfg))},
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
        return self.sampled(self.cfg.data_dir / "train.jsonl", self.cfg.sft_questions,
                            self.out / "sft_data" / f"sft_{mode}_questions.jsonl")

    def build_guides(self, questions: Path, url: str) -> Path:
        """Gold trajectories of the RL questions in the RL mode, to mix into their groups."""
        out = self.out / "rl_data" / "guides.jsonl"
        if not built_from(out, questions):
            self.evidence_trajectories("guides", questions, url, RL_MODE, out)
        return out

    def evidence_trajectories(self, title: str, questions: Path, url: str, mode: str, out: Path) -> None:
        self.sh(title, ["-m", "scripts.data_process.build_sft_from_evidence", "--questions", questions,
                        "--corpus", self.cfg.data_dir / "corpus.jsonl", "--retrieval-url", url,
                        "--mode", mode, "--out", out, "--topk", str(self.cfg.topk),
                        "--tokenizer", self.ckpt / "base", "--max-obs-length", str(self.cfg.max_obs_length),
                        *self.unseen_flag(),
                        "--final-thought", self.cfg.sft_thought])

    def pick_rl_questions(self, sft: Path, url: str) -> Path:
        """The RL questions: those of the seeded sample at the SFT model's frontier, or the sample
        itself when frontier_n is 0. Either is a file named train.jsonl: the RL data is named after it."""
        if self.cfg.frontier_n:
            return self.frontier(sft, url)
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
        return self.sampled(self.cfg.data_dir / "train.jsonl", self.cfg.rl_questions,
                            self.out / "rl_questions" / "train.jsonl", by_type=self.cfg.rl_balance_types)

    def frontier(self, model: Path, url: str) -> Path:
        """Train questions the SFT model answers right sometimes but not always (frontier/train.jsonl)."""
        out = self.out / "frontier"
        c = self.cfg
        candidates = self.rl_draw()
        if built_from(out / "counts.json", candidates):
            return out / "train.jsonl"
        self.sh("frontier", ["-m", "rag_r1.eval.frontier", "--model", model, "--questions", candidates,
                             "--retrieval-url", url, "--mode", RL_MODE, "--out", out, "--n", str(c.frontier_n),
                             "--temperature", str(c.rl_temperature), "--batch-size", str(c.eval_batch_size),
                             *self.agent_flags(c.rl_max_turns, c.rl_response_length),
                             *(["--keep-never"] if c.guides else [])])
        return out / "train.jsonl"

    def build_rl_data(self, questions: Path) -> Path:
        out = self.out / "rl_data"
        if not built_from(out / "train.parquet", questions):
            self.sh("RL data", ["-m", "scripts.data_process.qa_eval_sets", "--input_dir", questions.parent,
                                "--sets", questions.stem, "--split", "train", "--mode", RL_MODE,
                                "--data_source", DATA_SOURCE, "--out", out])
        return out

    def run_sft(self, base: Path, data: list[Path]) -> Path:
        target = self.ckpt / "sft"
        if (target / "config.json").exists():
            return target
        run_dir = self.out / "runs" / "sft"
        overrides = [f"data.train_files=[{','.join(str(p) for p in data)}]",
                     f"data.max_length={self.cfg.sft_max_length}", f"data.train_batch_size={self.cfg.sft_batch}",
                     f"model.partial_pretrain={base}", f"optim.lr={self.cfg.sft_lr}", "optim.warmup_steps_ratio=0.1",
                     f"trainer.total_epochs={self.cfg.sft_epochs}", f"trainer.default_local_dir={run_dir}",
                     "trainer.logger=[console,jsonl]", "trainer.device=cpu"]
        if self.cfg.sft_steps is not None:
            overrides.append(f"trainer.total_training_steps={self.cfg.sft_steps}")
        self.sh("SFT", ["-m", "verl.trainer.fsdp_sft_trainer", *overrides])
        shutil.copytree(latest_step_dir(run_dir), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pt"))
        return target

    def run_rl(self, sft: Path, rl_data: Path, url: str, guides: Path | None = None) -> Path:
        """GRPO or PPO from the SFT model; saves every step, so a rerun resumes at the last one. A
        finished run asked for more steps (PROFILE=long on a default run) carries on from its last
        step; the evaluations of the model it had exported move aside (`set_aside_rl_evaluations`)."""
        target = self.ckpt / "rl"
        run_dir = self.out / "runs" / "rl"
        c = self.cfg
        if (target / "config.json").exists():
            done = trained_steps(run_dir)
            if done is None or done >= c.rl_steps:
                return target
            set_aside_rl_evaluations(self.out / "eval", done)
        self.sh(f"RL ({c.algo})", ["-m", "verl.trainer.main_ppo", *self.rl_overrides(sft, rl_data, url, run_dir, guides)])
        shutil.copytree(latest_step_dir(run_dir) / "actor" / "huggingface", target, dirs_exist_ok=True)
        return target

    def rl_overrides(self, sft: Path, rl_data: Path, url: str, run_dir: Path, guides: Path | None = None) -> list[str]:
        """The trainer's `key=value` overrides of the RL stage (also the learning benchmark's base)."""
        c = self.cfg
        overrides = [
            f"data.train_files={rl_data / 'train.parquet'}", f"data.val_files={rl_data / 'train.parquet'}",
            f"data.train_batch_size={c.rl_batch}", "data.max_prompt_length=4096", "data.max_start_length=1024",
            f"data.max_response_length={c.rl_response_length}",
            f"actor_rollout_ref.model.path={sft}", f"actor_rollout_ref.model.lora_rank={c.lora_rank}",
            f"actor_rollout_ref.model.lora_alpha={c.lora_alpha}",
            f"actor_rollout_ref.actor.optim.lr={c.rl_lr}", f"actor_rollout_ref.actor.ppo_mini_batch_size={c.rl_mini_batch}",
            "actor_rollout_ref.actor.use_dynamic_bsz=true",
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={c.rl_token_budget}",
            "actor_rollout_ref.actor.entropy_coeff=0.001",
            "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop",
            f"actor_rollout_ref.rollout.n={c.rl_n}", f"actor_rollout_ref.rollout.temperature={c.rl_temperature}",
            f"algorithm.filter_groups.enable={str(c.filter_groups).lower()}",
            f"algorithm.filter_groups.max_num_gen_batches={c.max_gen_batches}",
            f"agent.mode={RL_MODE}", f"agent.max_turns={c.rl_max_turns}", f"agent.topk={c.topk}",
            f"agent.max_obs_length={c.max_obs_length}", f"retriever.url={url}",
            "custom_reward_function.path=rag_r1.reward:compute_score",
            f"+custom_reward_function.reward_kwargs.scorer={c.reward}",
            f"trainer.total_training_steps={c.rl_steps}",
            "trainer.save_freq=1", "trainer.max_actor_ckpt_to_keep=1", "trainer.max_critic_ckpt_to_keep=1",
            "trainer.val_before_train=false",
            "trainer.logger=[console,jsonl]", f"trainer.default_local_dir={run_dir}",
            f"trainer.experiment_name={c.algo}_{RL_MODE}",
            "ray_init.include_dashboard=false",  # a local run; the dashboard only costs start-up time and a port
        ]
        if guides is not None:
            overrides.append(f"agent.guide_file={guides}")
        if c.unseen_passages:
            overrides.append("agent.unseen_passages=true")
        if c.round_cost:
            overrides.append(f"+custom_reward_function.reward_kwargs.round_cost={c.round_cost}")
        if c.rl_negative_scale != AlgorithmConfig.negative_advantage_scale:
            overrides.append(f"algorithm.negative_advantage_scale={c.rl_negative_scale}")
        if c.algo == "grpo":
            overrides += ["algorithm.adv_estimator=grpo"]
        else:  # the paper's PPO: GAE with a critic (named, as grpo is above), KL to the reference in the reward
            overrides += [
                "algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true",
                f"critic.optim.lr={c.rl_critic_lr}", f"critic.ppo_mini_batch_size={c.rl_mini_batch}",
                "critic.use_dynamic_bsz=true", f"critic.ppo_max_token_len_per_gpu={c.rl_token_budget}"]
        return overrides

    def evaluate(self, name: str, model: Path, mode: str, url: str, split: str = "test") -> Path:
        """`model` in `mode` on the evaluated test questions, or (split "dev") on the dev questions."""
        out = self.out / "eval" / f"{name}-{mode}" / split
        if split == "test":
            questions = self.sampled(self.cfg.data_dir / "test.jsonl", self.cfg.eval_limit,
                                     self.out / "eval" / "test_questions.jsonl")
        else:
            questions = self.dev_set()
        args = ["-m", "rag_r1.eval", "--model", model, "--questions", questions,
                "--retrieval-url", url, "--mode", mode, "--out", out, "--batch-size", str(self.cfg.eval_batch_size),
                *self.agent_flags(self.cfg.eval_max_turns, self.cfg.eval_max_new_tokens)]
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
            raise SystemExit("dev_questions: every train.jsonl row needs an `id` to tell the questions SFT and RL "
                             "drew from the others")
        # the samples are rows of train.jsonl, so their ids exist once the rows' ids do
        drawn = [self.sft_questions("multi"), self.sft_questions("single"), self.rl_candidates()]
        seen = {json.loads(row)["id"] for path in drawn for row in path.read_text(encoding="utf-8").splitlines()}
        left = [row for row, qid in zip(rows, ids) if qid not in seen]
        if len(left) < self.cfg.dev_questions:
            raise SystemExit(f"dev_questions={self.cfg.dev_questions}: only {len(left)} train questions are left "
                             "outside the SFT and RL samples (lower --sft-questions or --rl-questions)")
        pool = self.out / "eval" / "dev_pool.jsonl"
        pool.parent.mkdir(parents=True, exist_ok=True)
        pool.write_text("".join(row + "\n" for row in left), encoding="utf-8")
        return self.sampled(pool, self.cfg.dev_questions, self.out / "eval" / "dev_questions.jsonl")

    # ------------------------------------------------------------------ plumbing
    def agent_flags(self, max_turns: int, max_new_tokens: int) -> list[str]:
        """The rag_r1.eval flags of the agent's shape, shared by evaluation and the frontier."""
        return ["--topk", str(self.cfg.topk), "--max-turns", str(max_turns), "--max-new-tokens", str(max_new_tokens),
                "--max-obs-length", str(self.cfg.max_obs_length), *self.unseen_flag()]

    def unseen_flag(self) -> list[str]:
        """`--unseen-passages` when the run sets it: rag_r1.eval and build_sft_from_evidence spell it alike."""
        return ["--unseen-passages"] if self.cfg.unseen_passages else []

    def encoder_path(self) -> str:
        if self.cfg.encoder == "minilm":
            from rag_r1.search.encoder import default_minilm_path

            return str(default_minilm_path())
        return self.cfg.encoder

    def sampled(self, questions: Path, limit: int | None, out: Path, by_type: bool = False) -> Path:
        """`limit` rows of a JSONL file drawn with the run's seed, in file order, written to `out` (the
        file itself when it is no longer). A sample, not the first rows: a converted set may be
        sorted by question type (hotpotqa_closed lists its bridge questions before its comparisons).
        The draw depends on the seed and `out`'s name, so each use gets its own sample; it is drawn
        again on every call, so a resumed run with another seed or limit does not reuse a stale file.
        `by_type`: as many rows of each `type` as there are (evenly_by_type)."""
        rows = questions.read_text(encoding="utf-8").splitlines()
        if limit is None or len(rows) <= limit:
            return questions
        rng = random.Random(f"{self.cfg.seed}:{out.name}")
        if by_type:
            picked = evenly_by_type([json.loads(row).get("type") for row in rows], limit, rng, questions)
        else:
            picked = sorted(rng.sample(range(len(rows)), limit))
        return write_if_changed(out, "".join(rows[i] + "\n" for i in picked))

    def record(self, args: list) -> None:
        line = " ".join(shlex.quote(str(a)) for a in args)
        with (self.out / "commands.sh").open("a") as f:
            f.write(line + "\n")
        print(f"$ {line}", flush=True)

    def sh(self, title: str, args: list) -> None:
        print(f"\n=== {title}", flush=True)
        full = [self.cfg.python, *args]
        self.record(full)
        started = time.time()
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run([str(a) for a in full], cwd=REPO, env=env)
        if done.returncode != 0:
            raise SystemExit(f"stage '{title}' failed (exit {done.returncode}); re-run to resume from it")
        with (self.out / "stage_times.jsonl").open("a") as f:
            f.write(json.dumps({"stage": title, "seconds": round(time.time() - started, 1)}) + "\n")


def evenly_by_type(kinds: list[str | None], limit: int, rng: random.Random, source: Path) -> list[int]:
    """`limit` row indices, sorted, taken in turns from each kind (a kind that runs out leaves its
    turns to the others), each kind's rows in an order drawn by `rng`."""
    if None in kinds:
        raise SystemExit(f"rl_balance_types: {source} has rows without a `type` field to balance over")
    queues = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in sorted(set(kinds))}
    for queue in queues.values():
        rng.shuffle(queue)
    picked: list[int] = []
    while len(picked) < limit:
        for queue in queues.values():
            if queue and len(picked) < limit:
                picked.append(queue.pop())
    return sorted(picked)


def write_if_changed(path: Path, text: str) -> Path:
    """Write `text` to `path` unless it already holds it: a question sample keeps its modification time
    while its rows stay the same, which is what `built_from` reads."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def built_from(product: Path, source: Path) -> bool:
    """Whether `product` exists and was made after `source` last changed. The question samples are
    rewritten only when their rows change (`write_if_changed`), so a resumed run with another draw
    (seed, sizes, rl_yes_no) rebuilds what was made from the old one instead of training on it."""
    return product.exists() and product.stat().st_mtime >= source.stat().st_mtime


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
    return ({row["id"] for row in read_jsonl(out / "trajectories.jsonl")}
            == {row["id"] for row in read_jsonl(questions)})


def trained_steps(run_dir: Path) -> int | None:
    """The step of the checkpoint `latest_step_dir` would export; None without one (an exported model
    copied alone)."""
    steps = step_dirs(run_dir)
    return step_of(steps[-1]) if steps else None


def set_aside_rl_evaluations(eval_dir: Path, step: int) -> None:
    """eval/rl-<mode>/ becomes eval/rl-<mode>@step<step>/: the evaluations of the RL model a run had
    exported at `step`, kept (the report lists them as their own rows) instead of passing for the
    model that more steps will export under the same path."""
    for old in sorted(eval_dir.glob("rl-*")):
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


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def optional_int(text: str) -> int | None:
    """An integer flag where `none` or `all` lifts the cap."""
    return None if text.lower() in ("none", "all") else int(text)


def flag_bool(text: str) -> bool:
    """true/false (also yes/no, 1/0); anything else is refused, so a misspelled value is not read as false."""
    value = text.lower()
    if value not in ("true", "yes", "1", "false", "no", "0"):
        raise ValueError(text)
    return value in ("true", "yes", "1")


def invocation(module: str, argv: list[str] | None) -> str:
    """The command line that ran `module` with `argv` (None: this process's arguments), with the
    DATA/OUT variables that parse_config reads."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("DATA", "OUT") if os.environ.get(k)]
    args = sys.argv[1:] if argv is None else argv
    return " ".join([*env, "python", "-m", module, *(shlex.quote(a) for a in args)])


def parse_config(defaults: PipelineConfig, argv: list[str] | None, description: str) -> PipelineConfig:
    """A flag per PipelineConfig field (`--ppo-steps 20`), defaulting to `defaults`; `DATA=` and `OUT=`
    from the environment (how `make results DATA=...` passes them) come before the flags."""
    import argparse
    import dataclasses

    # no abbreviations: a flag cut short or misspelled at its end is refused by name, not read as another
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    for f in dataclasses.fields(PipelineConfig):
        if f.name == "python":
            continue
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, nargs="+", default=value, help=f"default: {' '.join(value)}")
        elif isinstance(value, bool):
            parser.add_argument(flag, type=flag_bool, default=value)
        else:
            # Fields whose default is None still take a typed value on the command line.
            kind = {"model": str, "sft_steps": optional_int, "eval_limit": optional_int,
                    "rl_questions": optional_int}.get(f.name) or type(value)
            parser.add_argument(flag, type=kind, default=value, help=f"default: {value}")
    env = {"data_dir": os.environ.get("DATA"), "out_dir": os.environ.get("OUT")}
    for key, value in env.items():
        if value:
            parser.set_defaults(**{key: Path(value)})
    args = vars(parser.parse_args(argv))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return PipelineConfig(**args)
