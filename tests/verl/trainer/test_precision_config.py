"""The compute-dtype keys of both trainers: veRL's names, one default (auto), the engine following
the actor, every bad value named."""
from __future__ import annotations

import re

import pytest

from verl.trainer import fsdp_sft_trainer
from verl.trainer.config import compose_config

REQUIRED = ["data.train_files=train.parquet", "data.val_files=val.parquet", "actor_rollout_ref.model.path=m"]
ACTOR, REF, ROLLOUT = ("actor_rollout_ref.actor.fsdp_config.dtype", "actor_rollout_ref.ref.fsdp_config.dtype",
                       "actor_rollout_ref.rollout.dtype")
CRITIC = "critic.model.fsdp_config.dtype"


def dtypes(*overrides: str) -> tuple[str, str, str, str]:
    config = compose_config(REQUIRED + list(overrides))
    arr = config.actor_rollout_ref
    return arr.actor.fsdp_config.dtype, arr.ref.fsdp_config.dtype, arr.rollout.dtype, config.critic.model.fsdp_config.dtype


def test_every_model_computes_in_auto_by_default_and_the_engine_follows_the_actor():
    assert dtypes() == ("auto", "auto", "auto", "auto")
    assert dtypes(f"{ACTOR}=float32") == ("float32", "auto", "float32", "auto")
    assert dtypes(f"{ACTOR}=float32", f"{ROLLOUT}=bf16", f"{REF}=fp32", f"{CRITIC}=bfloat16") == \
        ("float32", "fp32", "bf16", "bfloat16")


def test_bad_dtypes_are_named():
    with pytest.raises(ValueError) as error:
        compose_config(REQUIRED + [f"{ACTOR}=float16", f"{ROLLOUT}=half", f"{CRITIC}=int8"])
    message = str(error.value)
    assert f"{ACTOR}='float16': expected auto | bfloat16 | bf16 | float32 | fp32" in message
    assert f"{ROLLOUT}='half': expected auto | bfloat16 | bf16 | float32 | fp32 | float16 | fp16" in message
    assert f"{CRITIC}='int8'" in message


def test_verls_critic_dtype_key_points_to_ours_and_its_model_dtype_is_fp32():
    with pytest.raises(ValueError, match="critic.fsdp.dtype=bfloat16 is not supported here: set "
                                         "critic.model.fsdp_config.dtype"):
        compose_config(REQUIRED + ["critic.fsdp.dtype=bfloat16"])
    with pytest.raises(ValueError, match="model_dtype=bf16 is not supported here: the master weights are fp32; "
                                         "fsdp_config.dtype sets the compute dtype"):
        compose_config(REQUIRED + ["actor_rollout_ref.actor.fsdp_config.model_dtype=bf16"])
    compose_config(REQUIRED + ["actor_rollout_ref.actor.fsdp_config.model_dtype=fp32"])


def test_the_sft_trainer_computes_in_auto_by_default_and_names_a_bad_dtype():
    sft = ["data.train_files=x", "model.partial_pretrain=y"]
    assert fsdp_sft_trainer.compose_config(sft).model.fsdp_config.dtype == "auto"
    assert fsdp_sft_trainer.compose_config(sft + ["model.fsdp_config.dtype=bf16"]).model.fsdp_config.dtype == "bf16"
    with pytest.raises(ValueError, match=re.escape("model.fsdp_config.dtype='fp16': expected auto | bfloat16")):
        fsdp_sft_trainer.compose_config(sft + ["model.fsdp_config.dtype=fp16"])
