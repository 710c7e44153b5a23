import math

import numpy as np
import pytest
import torch

from verl.trainer.ppo import core_algos as ca

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_values_with_right_padding():
    # gamma 0.9, lam 0.5 -> gamma*lam 0.45; the last position is padding (its value 9 is ignored).
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = ca.compute_gae_advantage_return(rewards, values, mask, gamma=0.9, lam=0.5)
    # t2: delta = 1 + 0.9*0 - 0.6 = 0.4                         A2 = 0.4
    # t1: delta = 0 + 0.9*0.6 - 0.4 = 0.14   A1 = 0.14 + 0.45*0.4  = 0.32
    # t0: delta = 0 + 0.9*0.4 - 0.2 = 0.16   A0 = 0.16 + 0.45*0.32 = 0.304
    # returns = A + V = [0.504, 0.72, 1.0], 0 on padding
    torch.testing.assert_close(ret, torch.tensor([[0.504, 0.72, 1.0, 0.0]]))
    # whitened over the 3 valid tokens: mean 0.3413.., unbiased std from torch.std
    raw = torch.tensor([0.304, 0.32, 0.4])
    expected = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=True) + 1e-8)
    torch.testing.assert_close(adv, torch.cat([expected, torch.zeros(1)]).unsqueeze(0))


def test_gae_skips_masked_information_tokens():
    # Positions 1-2 are retrieved tokens (mask 0): their rewards (5) and values (7) must not matter,
    # and they must not discount. t3: delta = 1 - 0.6 = 0.4, A3 = 0.4;
    # t0 bootstraps from V(t3) = 0.6: delta = 0.9*0.6 - 0.2 = 0.34, A0 = 0.34 + 0.45*0.4 = 0.52.
    rewards = torch.tensor([[0.0, 5.0, 5.0, 1.0]])
    values = torch.tensor([[0.2, 7.0, 7.0, 0.6]])
    mask = torch.tensor([[1, 0, 0, 1]])
    _, ret = ca.compute_gae_advantage_return(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.72, 0.0, 0.0, 1.0]]))  # 0.52 + 0.2, 0.4 + 0.6
    # Equivalence: the same as GAE on the row with the masked tokens cut out.
    _, ret_cut = ca.compute_gae_advantage_return(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.6]]), torch.ones(1, 2), gamma=0.9, lam=0.5
    )
    torch.testing.assert_close(ret[:, [0, 3]], ret_cut)


def test_gae_ignores_non_finite_values_on_padding():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = ca.compute_gae_advantage_return(rewards, torch.tensor([[0.5, 0.5, float("nan")]]), mask, 1.0, 1.0)
    _, ret_finite = ca.compute_gae_advantage_return(rewards, torch.tensor([[0.5, 0.5, 0.0]]), mask, 1.0, 1.0)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(ret, ret_finite)  # [1, 1, 0]: r = 1 at t1, V = 0.5


def test_gae_scan_equals_closed_form_sum():
    # A_t = sum_l (gamma*lam)^l * delta_{t+l}, with V after the end = 0 (full mask, no padding).
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    gamma, lam = 0.95, 0.8
    _, ret = ca.compute_gae_advantage_return(rewards, values, torch.ones(3, 6), gamma, lam)
    next_values = torch.cat([values[:, 1:], torch.zeros(3, 1)], dim=1)
    delta = rewards + gamma * next_values - values
    closed = torch.stack(
        [sum((gamma * lam) ** (l - t) * delta[:, l] for l in range(t, 6)) for t in range(6)], dim=1
    )
    torch.testing.assert_close(ret - values, closed, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- GRPO


def grpo_batch():
    # rows 0-2 share prompt "a" with scores 1, 0, 2; row 3 is alone in group "b" with score 3.
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    index = np.array(["a", "a", "a", "b"], dtype=object)
    return rewards, mask, index


def test_grpo_normalised_with_group_of_one():
    rewards, mask, index = grpo_batch()
    adv, ret = ca.compute_grpo_outcome_advantage(rewards, mask, index, epsilon=1e-6)
    # group a: mean 1, unbiased std sqrt((0 + 1 + 1) / 2) = 1 -> [0, -1, 1] / (1 + 1e-6)
    # group b (one row): mean 0, std 1 -> 3 / (1 + 1e-6)
    per_row = torch.tensor([0.0, -1.0, 1.0, 3.0]) / (1 + 1e-6)
    torch.testing.assert_close(adv, per_row.unsqueeze(-1) * mask, rtol=0, atol=1e-7)
    assert torch.equal(adv, ret)
    assert adv[0, 2] == 0 and adv[2, 2] == 0  # padding stays 0


def test_grpo_without_std_normalisation_and_int_index():
    rewards, mask, _ = grpo_batch()
    adv, _ = ca.compute_grpo_outcome_advantage(rewards, mask, [7, 7, 7, 8], norm_adv_by_std_in_grpo=False)
    # score - group mean: [1-1, 0-1, 2-1] and 3 - 0
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0, 3.0]).unsqueeze(-1) * mask)
    adv_tensor_index, _ = ca.compute_grpo_outcome_advantage(rewards, mask, torch.tensor([7, 7, 7, 8]), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv_tensor_index, adv)


def test_grpo_identical_scores_give_zero_advantage():
    adv, _ = ca.compute_grpo_outcome_advantage(torch.ones(2, 2), torch.ones(2, 2), ["u", "u"])
    assert torch.equal(adv, torch.zeros(2, 2))  # std 0 -> 0 / (0 + eps)


# ----------------------------------------------------------------------------- KL


LOGP = torch.tensor([math.log(0.5), math.log(0.25)])
REF = torch.tensor([math.log(0.25), math.log(0.5)])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("kl", [LN2, -LN2]),  # log(p/q)
        ("k1", [LN2, -LN2]),
        ("abs", [LN2, LN2]),
        ("mse", [0.5 * LN2**2, 0.5 * LN2**2]),
        ("k2", [0.5 * LN2**2, 0.5 * LN2**2]),
        # q/p - log(q/p) - 1: 0.5 + ln2 - 1 and 2 - ln2 - 1
        ("low_var_kl", [LN2 - 0.5, 1 - LN2]),
        ("k3", [LN2 - 0.5, 1 - LN2]),
    ],
)
def test_kl_penalty_types(name, expected):
    torch.testing.assert_close(ca.kl_penalty(LOGP, REF, name), torch.tensor(expected))


def test_low_var_kl_is_clamped_and_unknown_type_raises():
    # log q/p = 20: e^20 - 20 - 1 ~ 4.9e8, clamped to 10
    assert ca.kl_penalty(torch.tensor([0.0]), torch.tensor([20.0]), "low_var_kl").item() == 10.0
    with pytest.raises(ValueError, match="'k4'"):
        ca.kl_penalty(LOGP, REF, "k4")


def test_apply_kl_penalty():
    scores = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    old = torch.tensor([[math.log(0.5), math.log(0.25), 0.0], [math.log(0.5), 0.0, 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), 5.0], [math.log(0.25), 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards, metrics = ca.apply_kl_penalty(scores, old, ref, mask, kl_coef=0.1, kl_penalty_type="kl")
    # k1 per token: row 0 [ln2, -ln2, masked], row 1 [ln2, masked, masked]
    expected = torch.tensor([[-0.1 * LN2, 1 + 0.1 * LN2, 0.0], [-0.1 * LN2, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    # per-sequence means 0 and ln2 -> batch mean ln2 / 2
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(LN2 / 2, abs=1e-6)
    assert metrics["actor/reward_kl_penalty_coeff"] == 0.1


# ----------------------------------------------------------------------------- agg_loss


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
LOSS_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # row 2 is empty


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2 non-empty rows
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2 non-empty rows
    ],
)
def test_agg_loss_modes(mode, expected):
    assert ca.agg_loss(LOSS, LOSS_MASK, mode).item() == pytest.approx(expected, abs=1e-6)


def test_agg_loss_normalizer_and_edge_cases():
    assert ca.agg_loss_normalizer(LOSS_MASK, "token-mean").item() == 3
    assert ca.agg_loss_normalizer(LOSS_MASK, "seq-mean-token-mean").item() == 2
    assert ca.agg_loss(LOSS, LOSS_MASK, "token-mean", normalizer=7).item() == pytest.approx(1.0)  # 7 / 7
    assert ca.agg_loss(LOSS, torch.zeros(3, 3), "token-mean").item() == 0.0
    with pytest.raises(ValueError, match="'seq-sum'"):
        ca.agg_loss(LOSS, LOSS_MASK, "seq-sum")


@pytest.mark.parametrize("mode", sorted(ca.LOSS_AGG_MODES))
def test_micro_batches_with_global_normalizer_equal_one_batch(mode):
    # Rows of very different lengths, so micro-batch means differ from the batch mean.
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 5, generator=g)
    new = (old + 0.3 * torch.randn(4, 5, generator=g)).requires_grad_(True)
    adv = torch.randn(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])

    full, *_ = ca.compute_policy_loss(old, new, adv, mask, loss_agg_mode=mode)
    (grad_full,) = torch.autograd.grad(full, new)

    total = ca.agg_loss_normalizer(mask, mode)
    acc = torch.zeros_like(new)
    loss_sum = 0.0
    for rows in (slice(0, 2), slice(2, 4)):
        loss, *_ = ca.compute_policy_loss(old[rows], new[rows], adv[rows], mask[rows], loss_agg_mode=mode, normalizer=total)
        (grad,) = torch.autograd.grad(loss, new)
        acc += grad
        loss_sum += loss.item()
    assert loss_sum == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(acc, grad_full, rtol=0, atol=1e-7)



def test_naive_token_mean_accumulation_differs_from_one_batch():
    # Control for the test above: averaging locally normalised micro-batch losses weights the
    # 8 tokens of rows 0-1 and the 2 tokens of rows 2-3 equally per micro-batch, not per token.
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]])
    full = ca.agg_loss(loss, mask, "token-mean")  # (8*1 + 2*4) / 10 = 1.6
    halves = [(loss[:2], mask[:2]), (loss[2:], mask[2:])]
    naive = sum(ca.agg_loss(l, m, "token-mean") for l, m in halves) / 2  # (8/8 + 8/2) / 2 = 2.5
    exact = sum(ca.agg_loss(l, m, "token-mean", normalizer=10) for l, m in halves)  # 8/10 + 8/10
    assert full.item() == pytest.approx(1.6) and naive.item() == pytest.approx(2.5)
    assert exact.item() == pytest.approx(1.6)


# ----------------------------------------------------------------------------- policy loss


def policy_inputs():
    # ratios 1.5, 0.5, 5, 1, 10 (the last token is padding)
    ratio = torch.tensor([[1.5, 0.5, 5.0, 1.0, 10.0]])
    old = torch.full((1, 5), -1.0)
    new = (old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return old, new, adv, mask


def test_policy_loss_clip_and_dual_clip():
    old, new, adv, mask = policy_inputs()
    pg_loss, clipfrac, ppo_kl, clipfrac_lower = ca.compute_policy_loss(old, new, adv, mask, cliprange=0.2, clip_ratio_c=3.0)
    # t0 A=1,  r=1.5: max(-1.5, -1.2) = -1.2   (clipped)
    # t1 A=-1, r=0.5: max(0.5, 0.8)   = 0.8    (clipped)
    # t2 A=-1, r=5:   max(5, 1.2) = 5, dual clip min(5, 3) = 3 (lower clip)
    # t3 A=2,  r=1:   -2
    # token-mean: (-1.2 + 0.8 + 3 - 2) / 4 = 0.15
    assert pg_loss.item() == pytest.approx(0.15, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)  # t0, t1
    assert clipfrac_lower.item() == pytest.approx(0.25)  # t2
    assert ppo_kl.item() == pytest.approx(-math.log(1.5 * 0.5 * 5.0 * 1.0) / 4, abs=1e-6)  # mean(old - new)
    # only t3 is unclipped: d(-A r)/d log_prob = -A r = -2, divided by 4 tokens
    (grad,) = torch.autograd.grad(pg_loss, new)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0, -0.5, 0.0]]))


def test_policy_loss_asymmetric_clip_higher():
    old, new, adv, mask = policy_inputs()
    pg_loss, clipfrac, _, _ = ca.compute_policy_loss(old, new, adv, mask, cliprange_low=0.2, cliprange_high=0.6)
    # t0 now inside [0.8, 1.6]: -1.5; others as before -> (-1.5 + 0.8 + 3 - 2) / 4 = 0.075
    assert pg_loss.item() == pytest.approx(0.075, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.25)  # t1 only
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ca.compute_policy_loss(old, new, adv, mask, clip_ratio_c=1.0)


def test_a_stale_batch_is_clipped_against_its_sampler_from_the_first_mini_batch():
    rollout = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])  # the sampler's log-probs
    loss_mask = torch.tensor([[1, 1, 1, 0]])  # t3 is not in the loss (padding, an observation)
    old = ca.sampler_old_log_probs(rollout, loss_mask, sampled_mask=torch.ones(1, 4))
    assert old.tolist() == [[-1.0, -2.0, -0.5, 0.0]]
    # the actor is one update past the sampler: before any step of this batch the ratios are 1.5, 1, 0.5
    new = old + torch.tensor([[1.5, 1.0, 0.5, 1.0]]).log()
    pg_loss, clipfrac, _, _ = ca.compute_policy_loss(old, new, torch.ones(1, 4), loss_mask, cliprange=0.2)
    # A=1: t0 max(-1.5, -1.2) = -1.2 (clipped), t1 -1, t2 max(-0.5, -0.8) = -0.5; (-1.2 - 1 - 0.5) / 3 = -0.9
    assert pg_loss.item() == pytest.approx(-0.9, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"counts 1 token\(s\) no policy sampled"):  # t2 not sampled: a guide's
        ca.sampler_old_log_probs(rollout, loss_mask, sampled_mask=torch.tensor([[1, 1, 0, 0]]))


# ----------------------------------------------------------------------------- value and entropy loss


def test_value_loss_clipping():
    vpreds = torch.tensor([[2.0, 1.0, 0.0, 100.0]])
    values = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    vf_loss, vf_clipfrac = ca.compute_value_loss(vpreds, returns, values, mask, cliprange_value=0.5)
    # t0: (2-3)^2 = 1 vs clip(2, 0.5, 1.5) = 1.5 -> (1.5-3)^2 = 2.25 -> 2.25 (clipped)
    # t1: (1-0)^2 = 1 vs 1 -> 1
    # t2: (0-0)^2 = 0 vs clip(0) = 0.5 -> 0.25 -> 0.25 (clipped)
    # 0.5 * (2.25 + 1 + 0.25) / 3 = 0.58333
    assert vf_loss.item() == pytest.approx(0.5 * 3.5 / 3, abs=1e-6)
    assert vf_clipfrac.item() == pytest.approx(2 / 3, abs=1e-6)


def test_entropy_loss():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # entropy of [1/4, 3/4]
    assert ca.compute_entropy_loss(logits, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(4), abs=1e-6)
    assert ca.compute_entropy_loss(logits, torch.tensor([[1, 1]])).item() == pytest.approx((math.log(4) + h) / 2, abs=1e-6)


# ----------------------------------------------------------------------------- KL controllers and registry


def test_adaptive_kl_controller_proportional_update():
    ctl = ca.AdaptiveKLController(init_kl_coef=0.2, target_kl=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)
    # error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2 -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024
    assert ctl.value == pytest.approx(0.201024, abs=1e-12)
    ctl.update(current_kl=5.4, n_steps=1000)
    # error = 5.4/6 - 1 = -0.1 -> * (1 - 0.1 * 1000 / 10000) = * 0.99
    assert ctl.value == pytest.approx(0.201024 * 0.99, abs=1e-12)


def test_fixed_kl_controller_and_factory():
    ctl = ca.get_kl_controller("fixed", 0.05)
    ctl.update(current_kl=100.0, n_steps=10)
    assert isinstance(ctl, ca.FixedKLController) and ctl.value == 0.05
    adaptive = ca.get_kl_controller("adaptive", 0.1, target_kl=1.0, horizon=100)
    assert isinstance(adaptive, ca.AdaptiveKLController) and adaptive.value == 0.1
    with pytest.raises(ValueError, match="target_kl"):
        ca.get_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="'pid'"):
        ca.get_kl_controller("pid", 0.1)


def test_adv_estimator_registry_takes_one_keyword_set():
    rewards, mask, index = grpo_batch()
    kwargs = dict(token_level_rewards=rewards, values=torch.zeros(4, 3), response_mask=mask, index=index, gamma=1.0, lam=1.0)
    assert ca.get_adv_estimator_fn("gae") is ca.compute_gae_advantage_return
    assert ca.get_adv_estimator_fn("grpo") is ca.compute_grpo_outcome_advantage
    adv, _ = ca.get_adv_estimator_fn("grpo")(**kwargs)
    torch.testing.assert_close(adv, ca.compute_grpo_outcome_advantage(rewards, mask, index)[0])
    ca.get_adv_estimator_fn("gae")(**kwargs)
    assert ca.adv_estimator_needs_critic("gae") and not ca.adv_estimator_needs_critic("grpo")
    with pytest.raises(ValueError, match="'reinforce'"):
        ca.get_adv_estimator_fn("reinforce")
    with pytest.raises(ValueError, match="already registered"):
        ca.register_adv_est("gae")(lambda **kw: None)
