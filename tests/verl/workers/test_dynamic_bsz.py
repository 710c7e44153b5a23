"""Token-budget micro-batches (use_dynamic_bsz), the on-policy update without recomputed old
log-probs, and gradient checkpointing: each gives the same numbers as the plain path."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from test_fsdp_workers import ROWS, RESPONSE, _GradRecorder, actor_config, critic_config, local_actor, make_batch
from verl.protocol import DataProto
from verl.trainer.config import schema_node
from verl.utils.seqlen_balancing import micro_batch_indices, split_to_count, token_budget_groups
from verl.workers.rollout.base import assemble_output, build_prompt_batch


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def long_batch(pad_id: int, lengths: list[int], prompt: int = 4) -> DataProto:
    """Rows of `prompt` prompt tokens and the given response lengths (right padded to the longest)."""
    width = max(lengths)
    prompts = build_prompt_batch([[5] * prompt for _ in lengths], pad_id)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    responses = torch.where(mask.bool(), torch.randint(3, 200, (len(lengths), width)), pad_id)
    return assemble_output(prompts, responses, mask)


def test_budget_splits_long_sequences_and_keeps_each_group_within_it(tiny_model_dir, model_and_tok):
    _, tok = model_and_tok
    # two 2,000-token trajectories and six short ones, as a multi-turn batch with long observations
    data = long_batch(tok.pad_token_id, [2000, 40, 1900, 60, 30, 50, 20, 10])
    groups = micro_batch_indices(data, micro_batch_size=8, max_token_len=2500)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert groups[0] == [0] and groups[1] == [2]  # the long rows go alone, longest first
    width = data.batch["responses"].shape[1]
    prompt = data.batch["attention_mask"][:, :-width].sum(-1)
    response = data.batch["attention_mask"][:, -width:].sum(-1)
    for group in groups:
        padded = len(group) * int(prompt[group].max() + response[group].max())
        assert padded <= 2500
    assert len(groups) == 3  # the six short rows fit one micro-batch: 6 x (4 + 60) = 384
    # fixed-size micro-batches would have put both long rows with short ones
    assert micro_batch_indices(data, micro_batch_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_row_longer_than_the_budget_goes_alone():
    assert token_budget_groups([10, 10, 10], [500, 5, 5], max_token_len=100) == [[0], [1, 2]]


def test_groups_split_to_the_count_of_the_busiest_rank():
    assert sorted(map(sorted, split_to_count([[0, 1, 2, 3], [4]], 4))) == [[0, 1], [2], [3], [4]]
    with pytest.raises(ValueError, match="cannot make 3 micro-batches of 2 rows"):
        split_to_count([[0], [1]], 3)


def test_dynamic_bsz_update_and_log_probs_equal_fixed_micro_batches(tiny_model_dir, model_and_tok):
    model, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=6)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.linspace(-2, 2, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    shift = 0.3 * torch.tensor([1.0, -1.0]).repeat(ROWS * RESPONSE // 2).reshape(ROWS, RESPONSE)
    results = {}
    for dynamic in (False, True):
        config = actor_config(tiny_model_dir, use_dynamic_bsz=dynamic, ppo_max_token_len_per_gpu=24)
        recorder = _GradRecorder(model.parameters())
        actor = local_actor(model, config, recorder)
        log_probs, entropy = actor.compute_log_prob(data, 2, max_token_len=24 if dynamic else None)
        data.batch["old_log_probs"] = log_probs + shift
        actor.update_policy(data)
        results[dynamic] = (log_probs, entropy, recorder.grads)
    # rows come back in their original order, and the gradient is the same
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-5)
    for g_dynamic, g_fixed in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(g_dynamic, g_fixed, atol=1e-6, rtol=1e-5)
    # at 24 tokens the 8 rows (<= 12 tokens each) need several micro-batches
    assert len(micro_batch_indices(data, 2, 24)) > 2


def test_dynamic_bsz_values_equal_fixed_micro_batches(tiny_model_dir, model_and_tok):
    from verl.utils.model import load_value_model
    from verl.workers.critic.dp_critic import DataParallelPPOCritic

    _, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=9)
    module = load_value_model(schema_node("critic.model", {"path": str(tiny_model_dir)}))
    torch.nn.init.normal_(module.value_head.weight)
    fixed = critic_config(tiny_model_dir)
    dynamic = critic_config(tiny_model_dir, use_dynamic_bsz=True, forward_max_token_len_per_gpu=20)
    torch.testing.assert_close(DataParallelPPOCritic(dynamic, module).compute_values(data),
                               DataParallelPPOCritic(fixed, module).compute_values(data), atol=1e-5, rtol=1e-5)


def test_on_policy_update_without_old_log_probs_has_the_same_gradient(tiny_model_dir, model_and_tok):
    model, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=11)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.linspace(-1, 1, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    config = actor_config(tiny_model_dir)
    with_old = _GradRecorder(model.parameters())
    actor = local_actor(model, config, with_old)
    data.batch["old_log_probs"] = actor.compute_log_prob(data, ROWS)[0]
    first = actor.update_policy(data)
    data.batch.pop("old_log_probs")
    without = _GradRecorder(model.parameters())
    second = local_actor(model, config, without).update_policy(data)
    for a, b in zip(with_old.grads, without.grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert second["actor/pg_loss"] == pytest.approx(first["actor/pg_loss"], abs=1e-6)
    assert second["actor/pg_clipfrac"] == 0.0
    # two mini-batches: the second would no longer be on-policy, so old log-probs are required
    two = local_actor(model, config, without)
    two.mini_batch_size = ROWS // 2
    with pytest.raises(ValueError, match="one epoch over one mini-batch"):
        two.update_policy(data)


def test_gradient_checkpointing_gives_the_same_policy_gradient(tiny_model_dir, model_and_tok):
    from verl.utils.model import load_causal_lm

    _, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=12)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.linspace(-1, 1, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    grads = []
    for checkpointing in (False, True):
        model = load_causal_lm(schema_node("actor_rollout_ref.model", {"path": str(tiny_model_dir),
                                                                 "enable_gradient_checkpointing": checkpointing}))
        assert model.is_gradient_checkpointing == checkpointing
        recorder = _GradRecorder(model.parameters())
        local_actor(model, actor_config(tiny_model_dir), recorder).update_policy(data)
        grads.append(recorder.grads)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def update_counting_rows(actor, data: DataProto) -> tuple[dict, int]:
    """update_policy's metrics and the number of rows it ran forward with a graph (backpropagated)."""
    forward, rows = actor._log_probs, []

    def counting(micro, *args, **kwargs):
        if torch.is_grad_enabled():
            rows.append(len(micro))
        return forward(micro, *args, **kwargs)

    actor._log_probs = counting
    return actor.update_policy(data), sum(rows)


def test_rows_without_advantage_are_only_looked_at_and_the_step_is_the_same(tiny_model_dir, model_and_tok):
    model, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=13)
    data.meta_info = {"temperature": 1.0}
    advantages = torch.linspace(-1, 1, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    advantages[[1, 2, 5, 6]] = 0.0  # a group that scored alike; wrong samples weighed 0
    data.batch["advantages"] = advantages
    config = actor_config(tiny_model_dir, use_dynamic_bsz=True, ppo_max_token_len_per_gpu=24)
    runs = {}
    for skip in (True, False):
        recorder = _GradRecorder(model.parameters())
        actor = local_actor(model, config, recorder)
        if not skip:
            actor._rows_without_advantage = lambda d: torch.zeros(len(d), dtype=torch.bool)
        metrics, backpropagated = update_counting_rows(actor, data)
        runs[skip] = (recorder.grads, metrics, backpropagated)
    assert runs[True][2] == ROWS - 4 and runs[False][2] == ROWS
    for a, b in zip(runs[True][0], runs[False][0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the skipped rows are still in the logged entropy and loss (the same denominator, no graph)
    for key in ("actor/pg_loss", "actor/entropy"):
        assert runs[True][1][key] == pytest.approx(runs[False][1][key], abs=1e-6), key
    assert runs[True][1]["actor/entropy"] > 0.1


def test_a_batch_without_advantage_backpropagates_one_row_to_a_zero_gradient(tiny_model_dir, model_and_tok):
    model, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=14)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.zeros(ROWS, RESPONSE)
    recorder = _GradRecorder(model.parameters())
    _, backpropagated = update_counting_rows(local_actor(model, actor_config(tiny_model_dir), recorder), data)
    # one row: the optimizer gets zero gradients, not none (Adam still moves on its momentum)
    assert backpropagated == 1
    assert recorder.grads and all(torch.count_nonzero(g) == 0 for g in recorder.grads)


def test_an_entropy_bonus_or_a_kl_loss_backpropagates_every_row(tiny_model_dir, model_and_tok):
    model, tok = model_and_tok
    data = make_batch(len(tok), tok.pad_token_id, seed=15)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.zeros(ROWS, RESPONSE)
    data.batch["ref_log_prob"] = torch.full((ROWS, RESPONSE), -3.0)
    for overrides in ({"entropy_coeff": 0.01}, {"use_kl_loss": True}):
        actor = local_actor(model, actor_config(tiny_model_dir, **overrides), _GradRecorder(model.parameters()))
        assert update_counting_rows(actor, data)[1] == ROWS, overrides
