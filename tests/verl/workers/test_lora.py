"""LoRA on the actor (peft, veRL's keys): adapters train, the base is the reference, checkpoints hold
the adapter, and the HF export is the merged model. Two FSDP2 ranks over gloo, tiny model."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from verl.protocol import DataProto
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.utils.lora import merged_state_dict
from verl.workers.actor.dp_actor import DataParallelPPOActor
from verl.workers.fsdp_workers import ActorRolloutRefWorker

from test_fsdp_workers import ROWS, actor_config, make_batch

RANK, ALPHA = 4, 8.0


def lora_config(model_dir):
    config = actor_config(model_dir)
    config.model.lora_rank, config.model.lora_alpha = RANK, ALPHA
    config.model.target_modules = ["q_proj", "v_proj", "down_proj"]
    return config


@pytest.fixture(scope="module")
def lora_wg(ray_local, tiny_model_dir):
    pool = RayResourcePool([2], use_gpu=False, max_colocate_count=1)
    wg = RayWorkerGroup(pool, RayClassWithInitArgs(ray_local.remote(ActorRolloutRefWorker),
                                                   config=lora_config(tiny_model_dir), role="actor_rollout_ref"))
    wg.init_model()
    return wg


def base_log_probs(model_dir, data):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    actor = DataParallelPPOActor(actor_config(model_dir).actor, model)
    return actor.compute_log_prob(DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}), ROWS)[0]


def test_lora_trains_the_adapter_only_and_the_reference_stays_the_base(lora_wg, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = make_batch(len(tok), tok.pad_token_id)
    base = base_log_probs(tiny_model_dir, data)
    # lora_B starts at zero: the adapted policy is the base policy
    torch.testing.assert_close(lora_wg.compute_log_prob(data).batch["old_log_probs"], base, atol=1e-5, rtol=1e-5)

    before = lora_wg.full_state_dict()
    data.batch["old_log_probs"] = base
    data.batch["advantages"] = torch.ones_like(base)
    lora_wg.update_actor(data)
    after = lora_wg.full_state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed and all(".lora_" in k for k in changed)  # only adapter tensors moved
    assert any(".lora_B." in k for k in changed)
    moved = lora_wg.compute_log_prob(data).batch["old_log_probs"]
    assert (moved - base).abs().max() > 1e-3
    # the reference policy is the actor with its adapters switched off: still the base model
    torch.testing.assert_close(lora_wg.compute_ref_log_prob(data).batch["ref_log_prob"], base, atol=1e-5, rtol=1e-5)

    # checkpoint: adapter tensors only, in our layout and in peft's
    lora_wg.save_checkpoint(str(tmp_path / "actor"))
    saved = torch.load(tmp_path / "actor" / "model.pt", weights_only=True)
    assert saved and all(".lora_" in k for k in saved)
    assert (tmp_path / "actor" / "lora_adapter" / "adapter_model.safetensors").is_file()

    # the HF export is the merged model: a plain model loaded from it gives the adapted log-probs
    lora_wg.save_hf_model(str(tmp_path / "hf"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    actor = DataParallelPPOActor(actor_config(tiny_model_dir).actor, merged)
    got = actor.compute_log_prob(DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}), ROWS)[0]
    torch.testing.assert_close(got, moved, atol=1e-5, rtol=1e-5)

    # resuming loads the adapter onto the base again
    lora_wg.update_actor(data)
    lora_wg.load_checkpoint(str(tmp_path / "actor"))
    torch.testing.assert_close(lora_wg.compute_log_prob(data).batch["old_log_probs"], moved, atol=1e-6, rtol=1e-6)


def test_merged_state_dict_equals_peft_merge(tiny_model_dir):
    from peft import get_peft_model

    from verl.utils.lora import lora_config as build_lora_config

    torch.manual_seed(0)
    cfg = lora_config(tiny_model_dir).model
    injected = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), build_lora_config(cfg))
    for name, param in injected.named_parameters():
        if ".lora_B." in name:  # non-zero B, so the merge has something to add
            torch.nn.init.normal_(param, std=0.1)
    state = {k.removeprefix("base_model.model."): v.clone() for k, v in injected.state_dict().items()}
    ours = merged_state_dict(state, scaling=ALPHA / RANK)
    theirs = injected.merge_and_unload().state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=1e-6)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], state["model.layers.0.self_attn.q_proj.base_layer.weight"])
