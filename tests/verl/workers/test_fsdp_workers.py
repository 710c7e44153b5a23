"""ActorRolloutRefWorker and CriticWorker over Ray: 2 worker processes, FSDP2 over gloo, tiny model.

The single-process references run the same algorithm classes on a plain HF model in the driver.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import ray
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.protocol import DataProto
from verl.single_controller.base import Dispatch, Worker, register
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.trainer.config import schema_node
from verl.utils import fsdp_utils
from verl.workers import fsdp_workers
from verl.workers.actor.dp_actor import DataParallelPPOActor, policy_loss_mask
from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker, _TrainStateMixin
from verl.workers.rollout.base import assemble_output, build_prompt_batch
from verl.workers.rollout.hf_rollout import HFRollout

ROWS, RESPONSE = 8, 6

# Ray would import this test module by name in the workers, where tests/ is not on the path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def actor_config(model_dir, **actor_overrides):
    """The schema's actor_rollout_ref node with the test's model and batch sizes; no gradient clipping.
    Actor, reference and rollout compute in fp32 (unless `fsdp_config` says otherwise), so the workers
    equal the fp32 references on any CPU."""
    fsdp_config = {"dtype": "float32", **actor_overrides.pop("fsdp_config", {})}
    return schema_node("actor_rollout_ref", {
        "model": {"path": str(model_dir)},
        "actor": {"ppo_mini_batch_size": 8, "ppo_micro_batch_size_per_gpu": 2, "grad_clip": 1.0e6,
                  "optim": {"lr": 1e-3, "weight_decay": 0.0}, "fsdp_config": fsdp_config, **actor_overrides},
        "rollout": {"response_length": RESPONSE, "log_prob_micro_batch_size_per_gpu": 3},
        "ref": {"log_prob_micro_batch_size_per_gpu": 4, "fsdp_config": {"param_offload": False,
                                                                        "dtype": fsdp_config["dtype"]}},
    })


def critic_config(model_dir, **overrides):
    """The schema's critic node with the test's model and batch sizes; no clipping of values or
    gradients; fp32 compute."""
    return schema_node("critic", {
        "model": {"path": str(model_dir), "fsdp_config": {"dtype": "float32"}},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "ppo_mini_batch_size": 8, "ppo_micro_batch_size_per_gpu": 2, "forward_micro_batch_size_per_gpu": 3,
        "cliprange_value": 100.0, "grad_clip": 1.0e6, **overrides,
    })


def make_batch(vocab: int, pad_id: int, seed: int = 0) -> DataProto:
    """Random prompts (left padded) and responses (right padded, lengths 1..6), one info span."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in torch.randint(2, 7, (ROWS,), generator=g)]
    batch = build_prompt_batch(prompts, pad_id)
    lengths = torch.randint(1, RESPONSE + 1, (ROWS,), generator=g)
    mask = (torch.arange(RESPONSE) < lengths[:, None]).long()
    responses = torch.where(mask.bool(), torch.randint(3, vocab, (ROWS, RESPONSE), generator=g), pad_id)
    out = assemble_output(batch, responses, mask)
    info = torch.zeros_like(mask)
    info[0, 1:3] = 1 * mask[0, 1:3]  # row 0 carries retrieved tokens: excluded by state_masking
    out.batch["info_mask"] = info
    return out


@pytest.fixture(scope="module")
def groups(ray_local, tiny_model_dir):
    pool = RayResourcePool([2], use_gpu=False, max_colocate_count=2)
    actor = RayWorkerGroup(pool, RayClassWithInitArgs(ray_local.remote(ActorRolloutRefWorker),
                                                      config=actor_config(tiny_model_dir), role="actor_rollout_ref"))
    critic = RayWorkerGroup(pool, RayClassWithInitArgs(CriticWorker, config=critic_config(tiny_model_dir)))
    actor.init_model()
    critic.init_model()
    return actor, critic


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def per_rank(output: DataProto) -> dict[str, float]:
    """An update's metrics but `perf/*` (each rank's own process, and a rerun of the same math
    differs there): the worker group gathers one value per rank (as veRL's concat does), and the
    workers reduce over ranks first, so both ranks report the same number."""
    metrics = output.meta_info["metrics"]
    for key, values in metrics.items():
        assert len(values) == 2 and values[0] == pytest.approx(values[1], rel=1e-6), key
    return {key: values[0] for key, values in metrics.items() if not key.startswith("perf/")}


def local_actor(model, config, optimizer=None):
    return DataParallelPPOActor(config.actor, model, optimizer, mini_batch_size=config.actor.ppo_mini_batch_size)


def test_log_probs_two_ranks_equal_single_process_and_ref(groups, local, tiny_model_dir):
    actor_wg, _ = groups
    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id)
    out = actor_wg.compute_log_prob(data)
    ref = actor_wg.compute_ref_log_prob(data)
    expected, entropy = local_actor(model, actor_config(tiny_model_dir)).compute_log_prob(
        DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}), micro_batch_size=ROWS)
    assert out.batch["old_log_probs"].shape == (ROWS, RESPONSE)
    torch.testing.assert_close(out.batch["old_log_probs"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.batch["entropys"], entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.batch["ref_log_prob"], expected, atol=1e-5, rtol=1e-5)


def test_ranks_stopping_at_different_steps_do_not_deadlock(groups, local, tiny_model_dir):
    """Rank 0's rows hit the stop string at once, rank 1's never: sharded generate must still finish."""
    actor_wg, _ = groups
    model, tok = local
    prompts = build_prompt_batch([tok.encode("Who was born first?")] * 4 + [tok.encode("The")] * 4, tok.pad_token_id)
    prompts.meta_info = {"do_sample": False, "max_new_tokens": RESPONSE}
    first = HFRollout(model, tok, actor_config(tiny_model_dir).rollout).generate_sequences(prompts)
    stop = tok.decode(first.batch["responses"][0, :1])
    assert stop not in tok.decode(first.batch["responses"][4])
    prompts.meta_info["stop"] = [stop]
    # a forward first: FSDP2 then leaves the root's parameters unsharded, which must not hide
    # from the rollout that the module is sharded (it once did, and rank 1 waited forever)
    actor_wg.compute_log_prob(make_batch(len(tok), tok.pad_token_id))
    got = actor_wg.generate_sequences(prompts)
    assert got.batch["response_mask"].sum(-1).tolist() == [1] * 4 + [RESPONSE] * 4
    want = HFRollout(model, tok, actor_config(tiny_model_dir).rollout).generate_sequences(prompts)
    assert torch.equal(got.batch["responses"], want.batch["responses"])


def test_update_raises_log_prob_of_positive_advantage_tokens_and_rollout_follows(groups, local, tiny_model_dir):
    actor_wg, _ = groups
    model, tok = local
    prompts = build_prompt_batch([tok.encode("Who was born first?"), tok.encode("The")] * 4, tok.pad_token_id)
    prompts.meta_info = {"do_sample": False, "max_new_tokens": RESPONSE}
    stale = actor_wg.generate_sequences(prompts)
    # reinforce one token the untrained model does not emit greedily
    target = tok.encode(" Paris")[0]
    assert target not in stale.batch["responses"]
    data = assemble_output(prompts, torch.full((ROWS, RESPONSE), target), torch.ones(ROWS, RESPONSE, dtype=torch.long))
    before = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    data.batch["old_log_probs"] = before
    data.batch["advantages"] = torch.ones(ROWS, RESPONSE)
    metrics = per_rank(actor_wg.update_actor(data))
    # first mini-batch: new == old policy, so ratio 1 and token-mean loss -A = -1, nothing clipped
    assert metrics["actor/pg_loss"] == pytest.approx(-1.0, abs=1e-4)
    assert metrics["actor/pg_clipfrac"] == 0.0
    assert abs(metrics["actor/ppo_kl"]) < 1e-4
    assert metrics["actor/lr"] == pytest.approx(1e-3)
    assert metrics["actor/grad_norm"] > 0
    after = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    assert (after - before).min() > 0.05

    for _ in range(2):  # three Adam steps at lr 1e-3 make the target the greedy choice (measured)
        data.batch["old_log_probs"] = actor_wg.compute_log_prob(data).batch["old_log_probs"]
        actor_wg.update_actor(data)
    # the rollout generates with the updated weights: greedy output equals a local model loaded with them
    model_after = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model_after.load_state_dict(actor_wg.full_state_dict())
    got = actor_wg.generate_sequences(prompts)
    want = HFRollout(model_after, tok, actor_config(tiny_model_dir).rollout).generate_sequences(prompts)
    assert torch.equal(got.batch["responses"], want.batch["responses"])
    assert torch.all(got.batch["responses"] == target)


def test_state_masking_excludes_info_tokens_from_the_gradient(local, tiny_model_dir):
    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=5)
    data.meta_info = {"temperature": 1.0}
    config = actor_config(tiny_model_dir)
    actor = local_actor(model, config, torch.optim.SGD(model.parameters(), lr=0.0))
    data.batch["old_log_probs"], _ = actor.compute_log_prob(data, ROWS)
    data.batch["advantages"] = torch.ones(ROWS, RESPONSE)
    base = actor.update_policy(data)["actor/grad_norm"]
    # huge advantages on the info tokens only: no effect when masked
    data.batch["advantages"] = torch.where(data.batch["info_mask"].bool(), 1e4, 1.0)
    assert data.batch["info_mask"].sum() > 0
    assert actor.update_policy(data)["actor/grad_norm"] == pytest.approx(base, rel=1e-5)
    config.actor.state_masking = False
    unmasked = local_actor(model, config, actor.optimizer)
    data.batch["old_log_probs"], _ = unmasked.compute_log_prob(data, ROWS)  # now scored on info tokens too
    assert unmasked.update_policy(data)["actor/grad_norm"] > 10 * base


def test_micro_batches_equal_one_batch(local, tiny_model_dir):
    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=6)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.linspace(-2, 2, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    # ratios exp(+-0.3) fall outside [0.8, 1.2], so clipping (and dual clipping) is active
    shift = 0.3 * torch.tensor([1.0, -1.0]).repeat(ROWS * RESPONSE // 2).reshape(ROWS, RESPONSE)
    grads = {}
    for micro in (ROWS, 2, 3):  # 3 leaves a short last micro-batch
        config = actor_config(tiny_model_dir, ppo_micro_batch_size_per_gpu=micro, loss_agg_mode="seq-mean-token-mean")
        recorder = _GradRecorder(model.parameters())
        actor = local_actor(model, config, recorder)
        data.batch["old_log_probs"] = actor.compute_log_prob(data, ROWS)[0] + shift
        metrics = actor.update_policy(data)
        grads[micro] = (recorder.grads, metrics)
    for micro in (2, 3):
        for g_one, g_micro in zip(grads[ROWS][0], grads[micro][0]):
            torch.testing.assert_close(g_micro, g_one, atol=1e-6, rtol=1e-5)
        assert grads[micro][1]["actor/pg_loss"] == pytest.approx(grads[ROWS][1]["actor/pg_loss"], abs=1e-6)
    assert grads[ROWS][1]["actor/pg_clipfrac"] > 0


class _GradRecorder(torch.optim.SGD):
    """An optimizer that records the gradients of its step and leaves the weights alone."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)

    def step(self, closure=None):
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"]]


@pytest.mark.parametrize("silent_rows", [[], [4, 5, 6, 7]], ids=["all-rows", "second-rank-without-advantage"])
def test_two_rank_grad_norm_equals_single_process(groups, local, tiny_model_dir, silent_rows):
    """The explicit global denominator makes 2 ranks x micro-batches equal one big batch; with rows of
    zero advantage the ranks backpropagate every row (their collectives must meet) and the single
    process, which only looks at those rows, takes the same step."""
    actor_wg, _ = groups
    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=2)
    model.load_state_dict(actor_wg.full_state_dict())
    data.batch["old_log_probs"] = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    data.batch["advantages"] = torch.linspace(-1, 1, ROWS * RESPONSE).reshape(ROWS, RESPONSE)
    data.batch["advantages"][silent_rows] = 0.0
    config = actor_config(tiny_model_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    local_metrics = local_actor(model, config, optimizer).update_policy(
        DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}))
    metrics = per_rank(actor_wg.update_actor(data))
    assert metrics["actor/grad_norm"] == pytest.approx(local_metrics["actor/grad_norm"], rel=1e-4)
    assert metrics["actor/pg_loss"] == pytest.approx(local_metrics["actor/pg_loss"], abs=1e-5)


def test_critic_regression_lowers_vf_loss(groups, local):
    _, critic_wg = groups
    _, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=3)
    values = critic_wg.compute_values(data).batch["values"]
    assert values.shape == (ROWS, RESPONSE)
    assert torch.all(values == 0)  # the zero-initialised head
    data.batch["returns"] = torch.full((ROWS, RESPONSE), 1.0) * data.batch["response_mask"]
    losses = []
    for _ in range(4):
        data.batch["values"] = critic_wg.compute_values(data).batch["values"]
        metrics = per_rank(critic_wg.update_critic(data))
        losses.append(metrics["critic/vf_loss"])
    assert losses[0] == pytest.approx(0.5, abs=1e-5)  # 0.5 * (0 - 1)^2 on every valid token
    assert losses[-1] < 0.5 * losses[0]
    assert set(metrics) >= {"critic/vf_loss", "critic/vf_clipfrac", "critic/grad_norm", "critic/lr"}


def test_checkpoint_round_trip_restores_params_and_optimizer(groups, local, tmp_path):
    actor_wg, _ = groups
    _, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=4)
    data.batch["old_log_probs"] = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    data.batch["advantages"] = torch.ones(ROWS, RESPONSE)
    actor_wg.save_checkpoint(str(tmp_path / "ckpt"))
    saved = actor_wg.full_state_dict()
    first = per_rank(actor_wg.update_actor(data))
    after_first = actor_wg.full_state_dict()
    actor_wg.load_checkpoint(str(tmp_path / "ckpt"))
    restored = actor_wg.full_state_dict()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # the same step again from the restored state: identical result only if Adam's moments
    # and the lr schedule came back too
    second = per_rank(actor_wg.update_actor(data))
    again = actor_wg.full_state_dict()
    assert second == first
    assert all(torch.equal(after_first[k], again[k]) for k in saved)

    actor_wg.save_hf_model(str(tmp_path / "hf"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert all(torch.equal(exported[k], again[k]) for k in again)


def test_critic_can_exclude_info_tokens(local, tiny_model_dir):
    from verl.utils.model import load_value_model
    from verl.workers.critic.dp_critic import DataParallelPPOCritic

    _, tok = local
    module = load_value_model(schema_node("critic.model", {"path": str(tiny_model_dir)}))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    masking = critic_config(tiny_model_dir, state_masking=True)
    critic = DataParallelPPOCritic(masking, module, optimizer)
    data = make_batch(len(tok), tok.pad_token_id, seed=7)
    data.batch["values"] = critic.compute_values(data)  # all 0: zero-initialised head
    # returns 1 on generated tokens, 100 on retrieved ones
    data.batch["returns"] = torch.where(data.batch["info_mask"].bool(), 100.0, 1.0) * data.batch["response_mask"]
    assert critic.update_critic(data)["critic/vf_loss"] == pytest.approx(0.5)  # 0.5 * (0 - 1)^2
    plain = DataParallelPPOCritic(critic_config(tiny_model_dir), module, optimizer)
    assert plain.update_critic(data)["critic/vf_loss"] > 100


def test_kl_loss_and_entropy_bonus_enter_the_loss(local, tiny_model_dir):
    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=8)
    data.meta_info = {"temperature": 1.0}
    data.batch["advantages"] = torch.zeros(ROWS, RESPONSE)  # no policy-gradient term at all
    recorder = _GradRecorder(model.parameters())
    plain = local_actor(model, actor_config(tiny_model_dir), recorder)
    log_probs, entropys = plain.compute_log_prob(data, ROWS)
    data.batch["old_log_probs"] = log_probs
    data.batch["ref_log_prob"] = log_probs + 0.5
    assert plain.update_policy(data)["actor/grad_norm"] == 0.0

    config = actor_config(tiny_model_dir, use_kl_loss=True, kl_loss_type="kl", kl_loss_coef=0.1)
    metrics = local_actor(model, config, recorder).update_policy(data)
    mask = policy_loss_mask(data, state_masking=True)
    assert metrics["actor/kl_loss"] == pytest.approx(-0.5, abs=1e-5)  # k1 = log p - log p_ref on every token
    assert metrics["actor/grad_norm"] > 0
    assert metrics["actor/entropy"] == pytest.approx(float((entropys * mask).sum() / mask.sum()), rel=1e-5)

    config = actor_config(tiny_model_dir, entropy_coeff=0.01)
    assert local_actor(model, config, recorder).update_policy(data)["actor/grad_norm"] > 0


def test_trimmed_micro_batches_match_the_full_padded_batch(local, tiny_model_dir):
    """One row per micro-batch trims that row's padding; its log-probs, entropies and values equal
    the ones read from a forward pass over the whole padded batch."""
    from verl.utils.model import load_value_model
    from verl.workers.critic.dp_critic import DataParallelPPOCritic

    model, tok = local
    data = make_batch(len(tok), tok.pad_token_id, seed=3)
    # state masking: retrieved tokens are not scored (0), every other response token is
    b, mask = data.batch, policy_loss_mask(data, state_masking=True).bool()
    assert (data.batch["response_mask"].bool() & ~mask).any()
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits[:, -RESPONSE - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    log_probs, entropy = local_actor(model, actor_config(tiny_model_dir)).compute_log_prob(
        DataProto.from_dict(dict(b), meta_info={"temperature": 1.0}), micro_batch_size=1)
    torch.testing.assert_close(log_probs[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(log_probs[~mask] == 0) and torch.all(entropy[~mask] == 0)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy[mask], -(probs * torch.log(probs)).sum(-1)[mask], atol=1e-4, rtol=1e-4)

    module = load_value_model(schema_node("critic.model", {"path": str(tiny_model_dir)}))
    torch.nn.init.normal_(module.value_head.weight)  # non-zero values to compare
    one_row = critic_config(tiny_model_dir, forward_micro_batch_size_per_gpu=1)
    whole = critic_config(tiny_model_dir, forward_micro_batch_size_per_gpu=ROWS)
    torch.testing.assert_close(DataParallelPPOCritic(one_row, module).compute_values(data),
                               DataParallelPPOCritic(whole, module).compute_values(data), atol=1e-5, rtol=1e-5)


class OwnDiskWorker(_TrainStateMixin, Worker):
    """The workers' checkpoint methods on a small sharded model, each rank on a machine of its own:
    a checkpoint directory is taken under the rank's own root, which does not exist beforehand, as
    the same path on two machines without a shared file system."""

    def __init__(self, roots: list[str]):
        super().__init__()
        self.root = Path(roots[self.rank])
        torch.manual_seed(0)  # the same initial weights on both ranks
        self.module = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        mesh = init_device_mesh("cpu", (self.world_size,))
        for layer in self.module[0], self.module[2]:
            fully_shard(layer, mesh=mesh)
        fully_shard(self.module, mesh=mesh)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-2)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 / (1 + step))
        torch.manual_seed(100 + self.rank)  # each rank its own random stream, as when sampling rollouts
        self.released = 0
        fsdp_workers.empty_device_cache = self._count_release  # this worker process's module only

    def _count_release(self) -> None:
        self.released += 1

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> None:
        super().save_checkpoint(str(self.root / directory))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        super().load_checkpoint(str(self.root / directory))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        (self.module(torch.linspace(-1.0, 1.0, 24).reshape(6, 4)) ** 2).sum().backward()
        self.optimizer.step()
        self.lr_scheduler.step()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def draw(self) -> list[float]:
        return torch.rand(3).tolist()

    @register(dispatch_mode=Dispatch.RANK_ZERO)
    def full_params(self) -> dict:
        return fsdp_utils.full_model_state_dict(self.module)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def release_count(self) -> int:
        return self.released


def test_checkpoint_on_machines_without_a_shared_disk(ray_local, tmp_path):
    roots = [tmp_path / "node0", tmp_path / "node1"]
    wg = RayWorkerGroup(RayResourcePool([2], use_gpu=False),
                        RayClassWithInitArgs(OwnDiskWorker, roots=[str(root) for root in roots]))
    wg.train_step()
    wg.save_checkpoint("global_step_1/actor")
    # rank 0 writes the gathered state on its disk; rank 1 only its RNG state, on its own disk
    files = [sorted(p.name for p in (root / "global_step_1/actor").iterdir()) for root in roots]
    assert files == [["lr_scheduler.pt", "model.pt", "optimizer.pt", "rng_rank0.pt"], ["rng_rank1.pt"]]
    saved = wg.full_params()
    draws = wg.draw()
    assert draws[0] != draws[1]
    wg.train_step()
    trained = wg.full_params()

    wg.load_checkpoint("global_step_1/actor")
    restored = wg.full_params()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert wg.draw() == draws  # each rank's random stream, from its own disk
    wg.train_step()  # equal only if Adam's moments and the lr schedule came back too
    again = wg.full_params()
    assert all(torch.equal(trained[k], again[k]) for k in trained)
    assert wg.release_count() == [2, 2]  # after the save's gathers and after the load's broadcasts


@pytest.mark.parametrize("offloads", [False, True])
def test_an_offloaded_optimizer_comes_to_the_device_for_its_work_only(monkeypatch, offloads):
    moves = []
    monkeypatch.setattr(fsdp_utils, "move_optimizer_state", lambda optimizer, target: moves.append(str(target)))
    monkeypatch.setattr(fsdp_workers, "device", lambda: torch.device("cuda", 0))
    worker = _TrainStateMixin()
    worker.optimizer, worker.offloads_optimizer = "the optimizer", offloads
    with worker._optimizer_state_on_device():
        moves.append("update")
    assert moves == (["cuda:0", "update", "cpu"] if offloads else ["update"])


@pytest.mark.cuda
def test_one_gpu_rank_computes_in_bf16_and_learns(ray_gpu, tiny_model_dir):
    """The GPU path on one NCCL rank: FSDP2 with bf16 compute over fp32 master weights, HF rollout on CUDA."""
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    actor_wg = RayWorkerGroup(RayResourcePool([1], use_gpu=True),
                              RayClassWithInitArgs(ActorRolloutRefWorker, role="actor_rollout_ref",
                                                   config=actor_config(tiny_model_dir, fsdp_config={"dtype": "auto"})))
    actor_wg.init_model()

    prompts = build_prompt_batch([tok.encode("Who was born first?"), tok.encode("The")] * 2, tok.pad_token_id)
    prompts.meta_info = {"do_sample": False, "max_new_tokens": RESPONSE}
    generated = actor_wg.generate_sequences(prompts)
    assert generated.batch["responses"].shape == (4, RESPONSE)
    assert torch.equal(generated.batch["prompts"], prompts.batch["input_ids"])
    mask = generated.batch["response_mask"].bool()
    assert mask[:, 0].all() and (generated.batch["responses"][~mask] == tok.pad_token_id).all()

    target = tok.encode(" Paris")[0]
    data = assemble_output(prompts.repeat(2), torch.full((ROWS, RESPONSE), target),
                           torch.ones(ROWS, RESPONSE, dtype=torch.long))
    before = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    fp32, _ = local_actor(fresh, actor_config(tiny_model_dir)).compute_log_prob(
        DataProto.from_dict(dict(data.batch), meta_info={"temperature": 1.0}), micro_batch_size=ROWS)
    # bf16 keeps 8 significant bits: log-probs near ln(1/400) = -6 sit on a grid of 2**-5, so the
    # worker's differ from the fp32 CPU ones by at most a few 1e-2, and by more than nothing
    error = (before - fp32).abs().max().item()
    assert 0 < error < 5e-2

    data.batch["old_log_probs"] = before
    data.batch["advantages"] = torch.ones(ROWS, RESPONSE)
    metrics = actor_wg.update_actor(data).meta_info["metrics"]
    # one rank, so one value each; the ratio is 1 up to bf16 rounding (the update's forward runs
    # other micro-batch shapes than compute_log_prob's), so the token-mean loss -A is about -1
    assert len(metrics["actor/pg_loss"]) == 1 and metrics["actor/pg_loss"][0] == pytest.approx(-1.0, abs=2e-2)
    assert metrics["actor/grad_norm"][0] > 0
    after = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    assert (after - before).mean() > 0.02  # one Adam step at lr 1e-3 raised the advantaged token


class InspectableActor(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.RANK_ZERO)
    def where(self) -> dict[str, set[str]]:
        """The devices of the local shards of the actor's parameters and of Adam's moments."""
        moments = [v for state in self.optimizer.state.values() for k, v in state.items() if k != "step"]
        return {"params": {str(p.to_local().device) for p in self.module.parameters()},
                "moments": {str(m.to_local().device) for m in moments}}


@pytest.mark.cuda
@pytest.mark.parametrize("offload, params_on, moments_on", [
    ("param_offload", "cpu", "cpu"),  # FSDP2's CPUOffloadPolicy: shards, gradients and the step on the CPU
    ("optimizer_offload", "cuda:0", "cpu"),  # only Adam's moments wait in CPU memory between updates
])
def test_one_gpu_rank_trains_and_resumes_with_offload(ray_gpu, tiny_model_dir, tmp_path, offload, params_on, moments_on):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = actor_config(tiny_model_dir, grad_clip=1e-3, fsdp_config={offload: True, "dtype": "auto"})  # clipping bites
    actor_wg = RayWorkerGroup(RayResourcePool([1], use_gpu=True),
                              RayClassWithInitArgs(InspectableActor, config=config, role="actor"))
    actor_wg.init_model()
    data = make_batch(len(tok), tok.pad_token_id, seed=6)
    data.batch["old_log_probs"] = actor_wg.compute_log_prob(data).batch["old_log_probs"]
    data.batch["advantages"] = torch.ones(ROWS, RESPONSE)
    first = actor_wg.update_actor(data).meta_info["metrics"]
    assert math.isfinite(first["actor/grad_norm"][0]) and first["actor/grad_norm"][0] > 1e-3
    assert actor_wg.where() == {"params": {params_on}, "moments": {moments_on}}

    actor_wg.save_checkpoint(str(tmp_path / "ckpt"))
    assert actor_wg.where() == {"params": {params_on}, "moments": {moments_on}}
    actor_wg.update_actor(data)
    trained = actor_wg.full_state_dict()
    actor_wg.load_checkpoint(str(tmp_path / "ckpt"))
    actor_wg.update_actor(data)
    again = actor_wg.full_state_dict()
    assert all(torch.equal(trained[k], again[k]) for k in trained)
