"""Lesson 07's trl pipelines on a tiny model: the DPO loss equals trl's, the GRPO rewards read trl's formats."""

import copy
import tempfile

import pytest
import torch

from rlhf_helpers import beyond_ppo, env, instructions
from rlhf_helpers.checks.l07_beyond_ppo import reference_dpo_loss, reference_group_advantages
from rlhf_helpers.preferences import Comparison

# trl 1.16 asks transformers a renamed question (``is_gradient_checkpointing``) in every DPO and GRPO
# step; beyond_ppo silences it for notebooks, but pytest resets warning filters for each test.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

SIZES = env.BeyondSizes(dpo_steps=1, dpo_batch_size=4, dpo_lr=1e-3, dpo_beta=0.2, grpo_steps=1, grpo_prompts=2,
                        grpo_generations=2, grpo_lr=1e-3, grpo_beta=0.02, max_new_tokens=6)


def tiny_model():
    from rlhf_helpers.gpt import GPT, GPTConfig, to_hf_gpt2
    from rlhf_helpers.tokenizers import course_tokenizer

    torch.manual_seed(0)
    tokenizer = course_tokenizer()
    model = to_hf_gpt2(GPT(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=1, n_head=2, n_embd=16)),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


PAIRS = [Comparison("Continue this line about love: Tell me in sadness,", "sweet love is kind.",
                    "love is a plague and a curse upon us."),
         Comparison("Continue this line about night: I will watch", "the night is calm.", "Waves."),
         Comparison("Continue this line: Now is the winter", "of our discontent.", "the the the")]


def test_dpo_loss_exercise_equals_trls_loss_on_one_batch():
    model, tokenizer = tiny_model()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # move the policy away from the reference, so the log-ratios are not zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = beyond_ppo.dpo_trainer(model, ref_model, tokenizer, PAIRS, SIZES, tempfile.mkdtemp())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
        policy_c, policy_r = beyond_ppo.completion_logps(model, batch).chunk(2)
        ref_c, ref_r = beyond_ppo.completion_logps(ref_model, batch).chunk(2)
    ours = reference_dpo_loss(policy_c, policy_r, ref_c, ref_r, SIZES.dpo_beta).item()
    assert abs(trl_loss - ours) < 1e-4, (trl_loss, ours)
    assert abs(ours - 0.6931) > 1e-4  # the policy differs from the reference


def test_rewards_read_conversational_messages_and_mark_unended_answers():
    prompts = [[{"role": "user", "content": t.prompt}] for t in instructions.make_tasks("heldout", n=2)]
    good = [[{"role": "assistant", "content": t.response}] for t in instructions.make_tasks("heldout", n=2)]
    assert beyond_ppo.rule_reward(prompts, good) == [1.0, 1.0]
    assert beyond_ppo.rule_reward(prompts, [[{"role": "assistant", "content": "Hm."}]] * 2) == [0.0, 0.0]

    class FakeRewardModel:  # reward.score needs only a model that returns logits; patch score instead
        pass

    import rlhf_helpers.reward as reward

    original = reward.score
    try:
        reward.score = lambda model, tok, ps, rs, batch_size=64: torch.tensor([float(len(r)) for r in rs])
        fn = beyond_ppo.model_reward(FakeRewardModel(), None, (10.0, 2.0), end_id=7)
        scores = fn(prompts, [[{"role": "assistant", "content": "x" * 14}], [{"role": "assistant", "content": "abc"}]],
                    completion_ids=[[5, 7], [5, 6]])
    finally:
        reward.score = original
    assert scores == [2.0, beyond_ppo.UNENDED_SCORE]  # (14 - 10) / 2; the second never ended
    adv = reference_group_advantages(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2)
    assert torch.allclose(adv, torch.tensor([-0.7071, 0.7071, 0.0, 0.0]), atol=1e-3)


def test_group_advantages_equal_trls_on_a_sampled_batch(tmp_path):
    """Exercise 07.2's reference against the advantages trl's GRPOTrainer computes for a real batch
    (its private ``_generate_and_score_completions``: the step that samples, scores and normalises)."""
    from transformers import GPT2LMHeadModel

    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "tiny")
    model = GPT2LMHeadModel.from_pretrained(str(tmp_path / "tiny"), use_safetensors=True)
    returned = []

    def length_reward(prompts, completions, **kwargs):
        returned.append([float(len(c[0]["content"]) % 5) for c in completions])
        return returned[-1]

    prompts = [t.prompt for t in instructions.make_tasks("train", n=4)]
    trainer = beyond_ppo.grpo_trainer(model, tokenizer, [length_reward], prompts, SIZES, str(tmp_path / "out"))
    group = trainer.args.num_generations
    rows = [trainer.train_dataset[i] for i in range(SIZES.grpo_prompts) for _ in range(group)]  # trl's order
    batch = trainer._generate_and_score_completions(rows)
    ours = reference_group_advantages(torch.tensor(returned[-1]), group)
    assert torch.allclose(batch["advantages"].flatten(), ours, atol=1e-5)
    assert "old_per_token_logps" in batch  # two iterations per batch: the ratio is against the sampling policy


def test_grpo_trains_one_step_on_the_rule_reward(tmp_path):
    from transformers import GPT2LMHeadModel

    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "tiny")  # trl builds GRPO's reference model from the policy's folder
    model = GPT2LMHeadModel.from_pretrained(str(tmp_path / "tiny"), use_safetensors=True)
    prompts = [t.prompt for t in instructions.make_tasks("train", n=4)]
    before = [p.detach().clone() for p in model.parameters()]
    trainer = beyond_ppo.grpo_trainer(model, tokenizer, [lambda prompts, completions, **kw: [float(len(c[0]["content"]))
                                                                                             for c in completions]],
                                      prompts, SIZES, tempfile.mkdtemp(), warmup_steps=0)
    assert (trainer.args.loss_type, trainer.args.scale_rewards, trainer.args.num_iterations) == ("grpo", "group", 2)
    trainer.train()
    logs = [row for row in trainer.state.log_history if "reward" in row]
    assert logs and all(torch.isfinite(torch.tensor(row["reward"])) for row in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
