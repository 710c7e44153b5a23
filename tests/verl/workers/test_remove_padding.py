"""use_remove_padding: a micro-batch runs as one packed row of its real tokens. Log-probs, entropies,
values and gradients equal the padded batch's, for rows of very different lengths."""
from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from verl.protocol import DataProto
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.trainer.config import schema_node
from verl.utils.model import load_value_model
from verl.utils.packing import PackedLayout, PaddedLayout
from verl.workers.actor.dp_actor import DataParallelPPOActor
from verl.workers.critic.dp_critic import DataParallelPPOCritic
from verl.workers.fsdp_workers import ActorRolloutRefWorker

from test_fsdp_workers import ROWS, actor_config, critic_config, make_batch, per_rank
from test_logprob_memory import ragged_batch

# rows of 15, 36, 5 and 3 tokens: a 1-token prompt beside a 20-token one, responses of 1 to 16 tokens
PROMPTS, RESPONSES, WIDTH = [1, 20, 3, 2], [14, 16, 2, 1], 16


def packed_critic_config(model_dir, packed: bool):
    config = critic_config(model_dir)
    config.model.use_remove_padding = packed
    return config


def actor_scores(model, data, packed: bool):
    """Log-probs, entropies and the gradients of a loss that weighs both."""
    model.zero_grad()
    actor = DataParallelPPOActor(actor_config("unused").actor, model, use_remove_padding=packed)
    log_probs, entropy = actor._log_probs(data, temperature=0.7, with_entropy=True, entropy_grad=True)
    weights = torch.randn(2, *log_probs.shape, generator=torch.Generator().manual_seed(1))
    ((log_probs * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    return log_probs.detach(), entropy.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_gradients(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, grad in want.items():  # fp32 rounding of other attention shapes, relative to the largest entry
        torch.testing.assert_close(got[name], grad, atol=1e-5 * float(grad.abs().max()), rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_actor_equals_padded(tiny_model_dir, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    data = ragged_batch(model.config.vocab_size, PROMPTS, RESPONSES, WIDTH)
    padded, packed = actor_scores(model, data, packed=False), actor_scores(model, data, packed=True)
    torch.testing.assert_close(packed[0], padded[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1], padded[1], atol=1e-5, rtol=1e-5)
    assert packed[0].count_nonzero() == data.batch["response_mask"].sum() - 2  # less row 0's retrieved span
    assert_same_gradients(packed[2], padded[2])


def test_packed_rows_attend_within_their_own_sequence(tiny_model_dir):
    """What the equality above rests on: transformers reads the boundaries from the position ids.
    Numbered on through the pack, the same row attends to the rows before it and its log-probs change."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = ragged_batch(model.config.vocab_size, PROMPTS, RESPONSES, WIDTH)
    layout = PackedLayout(dict(data.batch), WIDTH)
    assert layout.inputs["attention_mask"] is None and layout.inputs["input_ids"].shape == (1, sum(PROMPTS + RESPONSES))
    with torch.no_grad():
        packed = model(**layout.inputs, use_cache=False).logits
        numbered_on = dict(layout.inputs, position_ids=torch.arange(sum(PROMPTS + RESPONSES))[None])
        leaking = model(**numbered_on, use_cache=False).logits
        alone = model(input_ids=layout.inputs["input_ids"][:, :PROMPTS[0] + RESPONSES[0]], use_cache=False).logits
    first = PROMPTS[0] + RESPONSES[0]
    torch.testing.assert_close(packed[:, :first], alone, atol=1e-5, rtol=1e-5)  # row 0 has nothing before it
    assert (packed[:, first:] - leaking[:, first:]).abs().max() > 0.1


def test_packed_critic_values_and_gradients_equal_padded(tiny_model_dir):
    module = load_value_model(schema_node("critic.model", {"path": str(tiny_model_dir)}))
    torch.manual_seed(0)
    torch.nn.init.normal_(module.value_head.weight)  # non-zero values to compare
    data = ragged_batch(module.backbone.config.vocab_size, PROMPTS, RESPONSES, WIDTH)
    mask = data.batch["response_mask"].bool()
    results = {}
    for packed in (False, True):
        module.zero_grad()
        critic = DataParallelPPOCritic(packed_critic_config(tiny_model_dir, packed), module)
        values = critic._values(dict(data.batch))
        (values * mask).sum().backward()
        results[packed] = (values.detach(), {name: p.grad.clone() for name, p in module.named_parameters()},
                           critic.compute_values(data))
    torch.testing.assert_close(results[True][0][mask], results[False][0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][2], results[False][2], atol=1e-5, rtol=1e-5)
    assert results[True][2].count_nonzero() == mask.sum()
    assert_same_gradients(results[True][1], results[False][1])


def test_layouts_map_response_positions_to_the_model_and_back():
    # prompts [_, 5, 6] and [7, 8, 9]; responses [1, 2] and [3, _]
    batch = {"input_ids": torch.tensor([[0, 5, 6, 1, 2], [7, 8, 9, 3, 0]]),
             "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
             "position_ids": torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])}
    scored = torch.tensor([[True, True], [True, False]])
    packed = PackedLayout(batch, 2)
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 1, 2, 7, 8, 9, 3]]
    assert packed.inputs["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    # token t is predicted at P + t - 1: 6 and 1 in row 0, 9 in row 1
    assert packed.scoring_positions(scored).tolist() == [[False, True, True, False, False, False, True, False]]
    outputs = torch.arange(1.0, 9.0)[None]
    assert packed.at_scoring_positions(outputs).tolist() == [[2.0, 3.0], [7.0, 8.0]]
    padded = PaddedLayout(batch, 2)
    assert padded.inputs["input_ids"].tolist() == batch["input_ids"].tolist()  # no column is padding in every row
    assert padded.scoring_positions(scored).tolist() == [[False, False, True, True, False],
                                                         [False, False, True, False, False]]
    assert padded.at_scoring_positions(torch.arange(10.0).reshape(2, 5)).tolist() == [[2.0, 3.0], [7.0, 8.0]]


def test_packing_refuses_position_ids_that_do_not_restart_at_each_row():
    batch = {"input_ids": torch.tensor([[5, 6, 1], [7, 8, 3]]), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "position_ids": torch.tensor([[0, 1, 2], [3, 4, 5]])}
    with pytest.raises(ValueError, match="position ids 0, 1, 2, ... over the attended tokens of each row"):
        PackedLayout(batch, 1)


def test_an_attention_without_packed_masks_is_refused_by_name(tiny_model_dir):
    """A kernel registered by a user gets no mask from packed position ids: packing would let one
    sequence attend to the previous one, so it is refused; the padded batch still runs with it."""
    AttentionInterface.register("plain_kernel", sdpa_attention_forward)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="plain_kernel")
    with pytest.raises(ValueError, match=r"actor_rollout_ref.model.use_remove_padding=True is not supported with "
                                         r"attn_implementation='plain_kernel'"):
        DataParallelPPOActor(actor_config("unused").actor, model, use_remove_padding=True)
    DataParallelPPOActor(actor_config("unused").actor, model)
    module = load_value_model(schema_node("critic.model", {"path": str(tiny_model_dir)}))
    module.backbone.config._attn_implementation = "plain_kernel"
    with pytest.raises(ValueError, match=r"critic.model.use_remove_padding=True is not supported"):
        DataParallelPPOCritic(packed_critic_config(tiny_model_dir, True), module)


def test_two_fsdp_ranks_packed_equal_one_padded_process(ray_local, tiny_model_dir):
    """The key reaches the workers' actor and reference: log-probs and the update's gradient norm of
    two packed FSDP2 ranks equal those of one padded process."""
    config = actor_config(tiny_model_dir)
    config.model.use_remove_padding = True
    pool = RayResourcePool([2], use_gpu=False, max_colocate_count=1)
    actor_wg = RayWorkerGroup(pool, RayClassWithInitArgs(ray_local.remote(ActorRolloutRefWorker), config=config,
                                                         role="actor_rollout_ref"))
    actor_wg.init_model()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = make_batch(model.config.vocab_size, 0, seed=9)
    local = DataParallelPPOActor(actor_config(tiny_model_dir).actor, model, torch.optim.SGD(model.parameters(), lr=0.0),
                                 mini_batch_size=ROWS)
    expected, _ = local.compute_log_prob(DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}), ROWS)
    torch.testing.assert_close(actor_wg.compute_log_prob(data).batch["old_log_probs"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actor_wg.compute_ref_log_prob(data).batch["ref_log_prob"], expected, atol=1e-5, rtol=1e-5)
    data.batch["old_log_probs"] = expected
    data.batch["advantages"] = torch.linspace(-1, 1, ROWS * data.batch["responses"].shape[1]).reshape(ROWS, -1)
    local_metrics = local.update_policy(DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}))
    metrics = per_rank(actor_wg.update_actor(data))
    assert metrics["actor/grad_norm"] == pytest.approx(local_metrics["actor/grad_norm"], rel=1e-4)
    # packed for real: position ids a padded batch takes are refused by every rank
    data.batch["position_ids"] = data.batch["position_ids"] + 1
    with pytest.raises(ValueError, match="packed sequences need position ids"):
        actor_wg.compute_log_prob(data)
