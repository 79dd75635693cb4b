"""PPO for language models: every piece of maths against hand-computed numbers, then tiny runs."""

import copy
import math
import time

import pytest
import torch
from torch.nn import functional as F

from rlhf_helpers import ppo

END, PAD = 3, 1  # the ids of <|im_end|> and <|pad|> in the tiny tokenizer below


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


# --------------------------------------------------------------------------------------------
# Tiny models and a tiny tokenizer (no training, no network)
# --------------------------------------------------------------------------------------------


def tiny_tokenizer():
    """A word-level tokenizer: 4 special tokens and the words t4 ... t15 (ids 4 to 15)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|pad|>": PAD, "<|im_start|>": 2, "<|im_end|>": END,
             **{f"t{i}": i for i in range(4, 16)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def tiny_config(**overrides):
    from transformers import GPT2Config

    settings = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=16, n_positions=32, bos_token_id=0,
                    eos_token_id=END, pad_token_id=PAD)
    return GPT2Config(**{**settings, **overrides})


def tiny_policy(seed=0, **overrides):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(**overrides)).eval()


def tiny_reward_model(seed=1):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(tiny_config(num_labels=1)).eval()


def left_padded_batch():
    """Two prompts, the first left-padded, and responses with padding after the first one's end."""
    prompt_ids = torch.tensor([[PAD, PAD, 5, 6], [7, 8, 9, 10]])
    prompt_mask = (prompt_ids != PAD).long()
    responses = torch.tensor([[11, END, PAD], [12, 13, 14]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return prompt_ids, prompt_mask, responses, mask


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def test_masked_mean_and_var_read_only_the_real_values():
    x = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), -5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert torch.allclose(ppo.masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))
    assert ppo.masked_var(x, mask).item() == pytest.approx(1.0)  # (1 + 0 + 1) / (3 - 1)
    assert ppo.masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        ppo.masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten_ignores_padding_and_gives_mean_0_var_1():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 2
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5, [1] * 3 + [0] * 3])
    garbage = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    white = ppo.masked_whiten(x, mask)
    assert torch.equal(white, ppo.masked_whiten(garbage, mask))  # padding never read
    assert ppo.masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (white[~mask.bool()] == 0).all()
    real = x[mask.bool()]
    assert torch.allclose(white[mask.bool()], (real - real.mean()) / real.std(), atol=1e-5)  # std: Bessel
    kept = ppo.masked_whiten(x, mask, shift_mean=False)
    assert ppo.masked_mean(kept, mask).item() == pytest.approx(real.mean().item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# Log-probabilities, entropy, positions
# --------------------------------------------------------------------------------------------


def test_logprobs_are_taken_at_the_sampling_temperature():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    tokens = torch.tensor([[0, 2]])
    at_1 = ppo.logprobs_from_logits(logits, tokens)
    at_2 = ppo.logprobs_from_logits(logits, tokens, temperature=2.0)
    assert torch.allclose(at_1, torch.tensor([[2 - math.log(math.e ** 2 + 2), -math.log(math.e + 2)]]))
    assert torch.allclose(at_2, torch.tensor([[1 - math.log(math.e + 2), -math.log(math.e ** 0.5 + 2)]]))


def test_entropy_is_log_v_for_uniform_and_near_0_for_peaked():
    logits = torch.stack([torch.zeros(8), torch.tensor([50.0] + [0.0] * 7)]).view(1, 2, 8)
    assert ppo.entropy_from_logits(logits, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(8))
    assert ppo.entropy_from_logits(logits, torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-6)
    # a higher temperature flattens the distribution: more entropy
    assert ppo.entropy_from_logits(logits[:, 1:] / 10, torch.tensor([[1]]), temperature=2.0) > \
        ppo.entropy_from_logits(logits[:, 1:] / 10, torch.tensor([[1]]))


def test_response_logits_are_those_generate_sampled_from_with_left_padding():
    """Without position ids counted from each row's first real token, row 0 would differ."""
    policy = tiny_policy()
    prompt_ids, prompt_mask, _, _ = left_padded_batch()
    torch.manual_seed(0)
    out = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=0.7,
                          top_k=0, top_p=1.0, max_new_tokens=5, pad_token_id=PAD, output_logits=True,
                          return_dict_in_generate=True)
    sampled_from = torch.stack(out.logits, 1)  # generate's raw logits, before the temperature
    full_mask = torch.cat([prompt_mask, torch.ones(2, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        ours = ppo.response_logits(policy, out.sequences, full_mask, 5)
    assert ours.shape == sampled_from.shape
    assert torch.allclose(ours, sampled_from, atol=1e-5)
    assert ppo.position_ids_from_mask(prompt_mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


def test_truncate_after_end():
    responses = torch.tensor([[5, END, 6, END], [5, 6, 7, 8], [END, 5, 6, 7]])
    truncated, mask, has_end = ppo.truncate_after_end(responses, END, PAD)
    assert truncated.tolist() == [[5, END, PAD, PAD], [5, 6, 7, 8], [END, PAD, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_end.tolist() == [True, False, True]


def test_sample_responses_are_truncated_and_fit_the_context():
    policy = tiny_policy()
    prompt_ids, prompt_mask, _, _ = left_padded_batch()
    config = ppo.PPOConfig(batch_size=2, mini_batch_size=2, max_new_tokens=20)
    torch.manual_seed(0)
    responses, mask, has_end = ppo.sample_responses(policy, prompt_ids, prompt_mask, config, END, PAD)
    assert responses.size(1) <= 20 and mask.shape == responses.shape
    for row, m, ended in zip(responses, mask, has_end):
        n = int(m.sum())
        assert (m[:n] == 1).all() and (row[n:] == PAD).all()  # a prefix of real tokens, then padding
        assert bool(ended) == (row[n - 1].item() == END) and END not in row[:n - 1].tolist()
    with pytest.raises(ValueError, match="context"):
        ppo.sample_responses(policy, prompt_ids, prompt_mask, ppo.PPOConfig(max_new_tokens=29), END, PAD)


def test_reference_logprobs_with_a_frozen_copy_and_with_a_lora_adapter_disabled():
    from rlhf_helpers.lora import peft_lora_config, wrap_with_peft

    base = tiny_policy()
    frozen_sft = copy.deepcopy(base)
    policy = wrap_with_peft(base, peft_lora_config(r=4, alpha=8, target_modules=["c_attn"]))
    with torch.no_grad():  # a trained adapter: the policy has moved away from the SFT model
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    prompt_ids, prompt_mask, responses, mask = left_padded_batch()
    sequences, attention_mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1)
    with_copy = ppo.reference_logprobs(policy, frozen_sft, sequences, attention_mask, responses, 0.7)
    disabled = ppo.reference_logprobs(policy, None, sequences, attention_mask, responses, 0.7)
    with torch.no_grad():
        own = ppo.logprobs_from_logits(ppo.response_logits(policy, sequences, attention_mask, 3), responses, 0.7)
    assert torch.allclose(with_copy, disabled, atol=1e-6)
    assert not torch.allclose(own, disabled, atol=1e-3)  # the adapter is back on afterwards
    with pytest.raises(ValueError, match="peft"):
        ppo.reference_logprobs(frozen_sft, None, sequences, attention_mask, responses, 0.7)


# --------------------------------------------------------------------------------------------
# Scores, values, rewards
# --------------------------------------------------------------------------------------------


def test_reward_score_is_read_at_the_last_real_token_as_transformers_does():
    reward_model = tiny_reward_model()
    prompt_ids, prompt_mask, responses, mask = left_padded_batch()
    sequences, attention_mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1)
    last_index = prompt_ids.size(1) + mask.sum(1) - 1
    assert last_index.tolist() == [5, 6]
    ours = ppo.reward_model_scores(reward_model, sequences, attention_mask, last_index)
    with torch.no_grad():
        theirs = reward_model(input_ids=sequences, attention_mask=attention_mask,
                              position_ids=ppo.position_ids_from_mask(attention_mask)).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_value_model_starts_as_the_reward_model_and_is_a_separate_copy():
    reward_model = tiny_reward_model()
    value_model = ppo.value_model_from_reward_model(reward_model)
    prompt_ids, prompt_mask, responses, mask = left_padded_batch()
    sequences, attention_mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1)
    last_index = prompt_ids.size(1) + mask.sum(1) - 1
    with torch.no_grad():
        values = value_model(sequences, attention_mask)
    assert values.shape == sequences.shape
    scores = ppo.reward_model_scores(reward_model, sequences, attention_mask, last_index)
    assert torch.allclose(values[torch.arange(2), last_index], scores, atol=1e-6)
    before = params(reward_model)
    with torch.no_grad():
        next(value_model.parameters()).add_(1.0)
    assert same(before, params(reward_model))
    fresh = ppo.value_model_from_causal_lm(tiny_policy())
    with torch.no_grad():
        assert (fresh(sequences, attention_mask) == 0).all()


def test_normalise_scores_and_the_missing_end_penalty_replaces_the_score():
    raw, has_end = torch.tensor([3.0, 1.0, 5.0]), torch.tensor([True, True, False])
    assert ppo.normalise_scores(raw, (1.0, 2.0), has_end, -1.0).tolist() == [1.0, 0.0, -1.0]
    assert ppo.normalise_scores(raw, (1.0, 2.0), has_end, None).tolist() == [1.0, 0.0, 2.0]


def test_per_token_rewards_kl_everywhere_score_at_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -7.0, 0.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-3.0, -1.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    rewards, kl = ppo.per_token_rewards(torch.tensor([1.0, -2.0]), logprobs, ref_logprobs, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 1.0, 0.0], [-0.2 - 2.0, 0.0, 0.0, 0.0]]))


def test_adaptive_kl_controller_moves_beta_toward_the_target_with_a_clipped_error():
    def after(kl):
        controller = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
        controller.update(kl, n_steps=100)
        return controller.value

    assert after(6.6) == pytest.approx(0.1 * (1 + 0.1 * 100 / 10_000))  # error 0.1: not clipped
    assert after(12.0) == pytest.approx(0.1 * (1 + 0.2 * 0.01))  # error 1.0, clipped to 0.2
    assert after(3.0) == pytest.approx(0.1 * (1 - 0.2 * 0.01))  # error -0.5, clipped to -0.2
    assert after(6.0) == pytest.approx(0.1)
    fixed = ppo.kl_controller(ppo.PPOConfig(init_kl_coef=0.3))
    fixed.update(100.0, 64)
    assert isinstance(fixed, ppo.FixedKLController) and fixed.value == 0.3
    assert isinstance(ppo.kl_controller(ppo.PPOConfig(target_kl=6.0)), ppo.AdaptiveKLController)


# --------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------


def loop_gae(rewards, values, length, gamma, lam):
    """The textbook recursion on plain floats, over one row's real tokens only."""
    advantages, running = [0.0] * length, 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


def test_gae_by_hand():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0]])  # the 5.0 and 9.0 sit under the padding
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta_2 = 1.0 - 0.3 = 0.7; delta_1 = -0.2 + 0.3 - 0.4 = -0.3; delta_0 = 0.1 + 0.4 - 0.5 = 0
    # A_2 = 0.7; A_1 = -0.3 + 0.95 * 0.7 = 0.365; A_0 = 0 + 0.95 * 0.365 = 0.34675
    assert torch.allclose(advantages, torch.tensor([[0.34675, 0.365, 0.7, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.84675, 0.765, 1.0, 0.0]]))
    # lambda = 1: the Monte-Carlo return (sum of rewards to come) minus the value
    mc, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(mc, torch.tensor([[0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3, 0.0]]))


def test_gae_matches_a_python_loop_on_random_rows():
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 7), torch.randn(5, 7)
    lengths = [7, 1, 4, 6, 2]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row, n in enumerate(lengths):
        expected = loop_gae(rewards[row].tolist(), values[row].tolist(), n, 0.9, 0.8) + [0.0] * (7 - n)
        assert torch.allclose(advantages[row], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(returns, (advantages + values) * mask)


# --------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------


def test_policy_loss_by_hand_with_clipping_active():
    # ratios 1.5, 0.5, 0.5 (and a padding token); eps = 0.2
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), 3.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 2.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac, approx_kl = ppo.policy_loss(new, old, advantages, mask, clip_eps=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped: the ratio already rose past 1.2 for a good token)
    # token 1: max(-1.0, -1.6) = -1.0 (not clipped: the ratio fell for a good token, push it back)
    # token 2: max(0.5, 0.8) = 0.8 (clipped: the ratio already fell past 0.8 for a bad token)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert clip_frac.item() == pytest.approx(2 / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5)]
    assert approx_kl.item() == pytest.approx(sum(k3) / 3)
    loss.backward()
    # clipped tokens and padding get no gradient; token 1 gets -A * ratio / 3
    assert torch.allclose(new.grad, torch.tensor([[0.0, -2.0 * 0.5 / 3, 0.0, 0.0]]))


def test_policy_loss_at_ratio_1_is_minus_the_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    advantages = torch.tensor([[1.0, -3.0, 0.5]])
    loss, clip_frac, approx_kl = ppo.policy_loss(logprobs, logprobs, advantages, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-(1.0 - 3.0 + 0.5) / 3)
    assert clip_frac.item() == 0.0 and approx_kl.item() == 0.0


def test_value_loss_by_hand_with_clipping_active():
    old = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    new = torch.tensor([[1.5, 1.1, 0.0, 7.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac = ppo.value_loss(new, old, returns, mask, clip_range_value=0.2)
    # token 0: clipped value 1.2; max((1.5 - 2)^2, (1.2 - 2)^2) = 0.64 (the clipped error wins)
    # token 1: 1.1 is within 0.2 of 1.0; (1.1 - 0)^2 = 1.21.   token 2: (0 - 1)^2 = 1
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 1.0) / 3)
    assert clip_frac.item() == pytest.approx(1 / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert ppo.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    assert ppo.explained_variance(-returns, returns, mask) < 0
    assert math.isnan(ppo.explained_variance(returns, torch.ones(1, 4), mask))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def test_disable_dropout_makes_training_mode_deterministic():
    policy = tiny_policy(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5).train()
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    assert not torch.equal(policy(ids).logits, policy(ids).logits)
    ppo.disable_dropout(policy)
    assert policy.config.resid_pdrop == policy.config.attn_pdrop == policy.config.embd_pdrop == 0.0
    train_logits = policy(ids).logits
    assert torch.equal(train_logits, policy.eval()(ids).logits)


def test_the_first_update_sees_ratio_1_rollout_and_update_agree():
    """Same tokens, same positions, same temperature, no dropout: the first minibatch's ratio is 1."""
    tokenizer = tiny_tokenizer()
    policy = ppo.disable_dropout(tiny_policy(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))
    value_model = ppo.value_model_from_causal_lm(policy)
    config = ppo.PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, temperature=0.7)
    torch.manual_seed(0)
    prompts = ["t4 t5", "t6", "t7 t8 t9", "t10"]
    batch = ppo.make_experience(policy, copy.deepcopy(policy), value_model, tokenizer, prompts, config, beta=0.1,
                                reward_fn=count_t7)
    assert batch["kl"].abs().max().item() < 1e-5  # the reference is the policy itself
    stats = ppo.ppo_update(policy, value_model, ppo.make_optimizer(policy, value_model, 1e-3), batch, config)
    assert stats["approx_kl"] < 1e-7 and stats["clip_frac"] == 0.0 and stats["value_clip_frac"] == 0.0
    assert ppo.masked_mean(batch["advantages"], batch["mask"]).item() == pytest.approx(0.0, abs=1e-6)


def test_score_statistics_measures_the_raw_scores_of_samples():
    def alternating(prompts, responses):
        return [2.0 + 3.0 * (i % 2) for i in range(len(responses))]

    config = ppo.PPOConfig(batch_size=4, mini_batch_size=4, max_new_tokens=4)
    mean, std = ppo.score_statistics(tiny_policy(), tiny_tokenizer(), ["t4", "t5 t6"], config,
                                     reward_fn=alternating, batches=2)
    assert mean == pytest.approx(3.5) and std == pytest.approx(math.sqrt(8 * 1.5 ** 2 / 7))


def test_config_rejects_uneven_minibatches():
    with pytest.raises(ValueError, match="multiple"):
        ppo.PPOConfig(batch_size=10, mini_batch_size=4)


def count_t7(prompts, responses):
    """A verifiable reward: how many times the response says the word t7."""
    return [r.split().count("t7") for r in responses]


METRICS = {"step", "score_raw", "score", "gold", "kl", "beta", "reward", "entropy", "policy_loss", "approx_kl",
           "clip_frac", "value_loss", "value_clip_frac", "explained_variance", "response_length", "end_rate",
           "tokens_per_s", "seconds"}


def test_train_ppo_smoke_with_a_reward_model():
    tokenizer = tiny_tokenizer()
    policy = tiny_policy()
    ref_model = copy.deepcopy(policy)
    reward_model = tiny_reward_model()
    before_policy, before_ref, before_rm = params(policy), params(ref_model), params(reward_model)
    prompts = ["t4 t5", "t6", "t7 t8 t9", "t10", "t11 t12", "t13", "t14 t15", "t4"]
    config = ppo.PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=6, lr=1e-3,
                           target_kl=1.0)
    seen = []
    history = ppo.train_ppo(policy, ref_model, reward_model, None, tokenizer, prompts, config,
                            reward_stats=(0.5, 2.0), gold_fn=lambda p, r: [len(x.split()) for x in r], steps=3,
                            callback=lambda metrics, p, r: seen.append((metrics["step"], len(p), len(r))))
    assert [row["step"] for row in history] == [1, 2, 3] and seen == [(1, 8, 8), (2, 8, 8), (3, 8, 8)]
    for row in history:
        assert set(row) == METRICS
        assert all(math.isfinite(value) for value in row.values()), row
        assert 1 <= row["response_length"] <= 6 and 0 <= row["end_rate"] <= 1
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # step 1 samples from the reference itself
    assert history[1]["beta"] != history[0]["beta"]  # the adaptive controller moved beta
    assert same(before_ref, params(ref_model)) and same(before_rm, params(reward_model))
    assert not same(before_policy, params(policy))


def test_train_ppo_with_a_lora_policy_and_no_reference_copy():
    from rlhf_helpers.lora import peft_lora_config, wrap_with_peft

    base = tiny_policy()
    value_model = ppo.value_model_from_causal_lm(base)
    policy = wrap_with_peft(base, peft_lora_config(r=4, alpha=8, target_modules=["c_attn"]))
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    config = ppo.PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=5, lr=1e-2)
    history = ppo.train_ppo(policy, None, None, value_model, tiny_tokenizer(), ["t4 t5", "t6", "t8"], config,
                            reward_fn=count_t7, steps=2)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5) and math.isfinite(history[1]["kl"])
    named = dict(policy.named_parameters())
    assert all(torch.equal(named[n], p) for n, p in frozen.items())  # the SFT weights: the reference
    assert any(not torch.equal(named[n], p) for n, p in adapter.items())


def test_ppo_increases_a_simple_reward():
    """20 seeded steps on a 1-layer policy: the number of t7 words per response must rise a lot."""
    tokenizer = tiny_tokenizer()
    policy = tiny_policy(seed=0)
    ref_model = copy.deepcopy(policy)
    value_model = ppo.value_model_from_causal_lm(policy)
    prompts = [f"t{i} t{j}" for i in range(4, 16) for j in range(4, 16)]
    config = ppo.PPOConfig(batch_size=32, mini_batch_size=8, ppo_epochs=4, max_new_tokens=8, lr=3e-3,
                           temperature=1.0, init_kl_coef=0.01, missing_eos_penalty=None, seed=0)
    start = time.perf_counter()
    history = ppo.train_ppo(policy, ref_model, None, value_model, tokenizer, prompts, config,
                            reward_fn=count_t7, steps=20)
    seconds = time.perf_counter() - start
    first, last = history[0]["score_raw"], sum(row["score_raw"] for row in history[-5:]) / 5
    assert first < 1.0 and last > 3.0, (first, last, seconds)
    assert history[-1]["kl"] > history[0]["kl"]  # it paid for the reward by moving away from the reference


def test_minibatches_visit_every_row_once_per_epoch():
    config = ppo.PPOConfig(batch_size=6, mini_batch_size=2, ppo_epochs=3)
    batch = {"responses": torch.arange(6).view(6, 1), "mask": torch.ones(6, 1), "texts": ["a"] * 6, "kl_sum": 1.0}
    seen = [mb["responses"].flatten().tolist() for mb in ppo.minibatches(batch, config, torch.Generator().manual_seed(0))]
    assert len(seen) == 9 and all(len(rows) == 2 for rows in seen)
    for epoch in range(3):
        assert sorted(sum(seen[3 * epoch:3 * epoch + 3], [])) == list(range(6))
    assert set(seen[0]) != set(seen[3]) or set(seen[1]) != set(seen[4]), "each epoch is shuffled afresh"
    assert set(next(ppo.minibatches(batch, config))) == {"responses", "mask"}, "only per-row tensors travel"


def _step_from_parts(policy, ref, value_model, optimizer, tokenizer, prompts, config, whiten=True):
    """ppo_step's maths written out from its parts, as lesson 06 has the learner write it."""
    batch = ppo.rollout(policy, ref, value_model, tokenizer, prompts, config, reward_fn=count_t7)
    rewards, kl = ppo.per_token_rewards(batch["scores"], batch["logprobs"], batch["ref_logprobs"], batch["mask"], 0.1)
    advantages, returns = ppo.gae(rewards, batch["values"], batch["mask"], config.gamma, config.lam)
    if whiten:
        advantages = ppo.masked_whiten(advantages, batch["mask"])
    batch = {**batch, "rewards": rewards, "kl": kl, "returns": returns, "advantages": advantages}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for mb in ppo.minibatches(batch, config, torch.Generator().manual_seed(0)):
        new_logprobs, new_values = ppo.new_logprobs_and_values(policy, value_model, mb, config)
        loss = ppo.policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["mask"], config.clip_eps)[0]
        loss = loss + config.vf_coef * ppo.value_loss(new_values, mb["values"], mb["returns"], mb["mask"],
                                                      config.clip_range_value)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()


@pytest.mark.parametrize("whiten", [True, False])
def test_ppo_step_is_its_parts_and_the_comparison_sees_a_missing_one(whiten):
    """Lesson 06 compares the learner's step with ppo_step by their weights; a step without the
    whitening (the control) must not pass that comparison."""
    tokenizer, prompts = tiny_tokenizer(), ["t4 t5", "t6", "t7 t8 t9", "t10"]
    config = ppo.PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=6, temperature=0.7, lr=1e-2)
    trained = {}
    for name in ("ppo_step", "parts"):
        policy = ppo.disable_dropout(tiny_policy())
        ref, value_model = copy.deepcopy(policy), ppo.value_model_from_causal_lm(copy.deepcopy(policy))
        optimizer = ppo.make_optimizer(policy, value_model, config.lr)
        torch.manual_seed(0)
        if name == "ppo_step":
            ppo.ppo_step(policy, ref, value_model, optimizer, tokenizer, prompts, config, ppo.FixedKLController(0.1),
                         reward_fn=count_t7, generator=torch.Generator().manual_seed(0))
        else:
            _step_from_parts(policy, ref, value_model, optimizer, tokenizer, prompts, config, whiten)
        trained[name] = policy
    gap = max((a - b).abs().max().item() for a, b in zip(*(params(m) for m in trained.values())))
    assert (gap < 1e-6) == whiten, gap
