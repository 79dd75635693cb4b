"""Lesson 06's pipeline around ppo.py, trained tiny: the ``ppo`` and ``ppo_overoptimisation``
artifacts, the held-out evaluation, the plots and the LoRA reference trick.

The reward model is a tiny random one (lesson 05's artifact needs an SFT model that ends its
answers, which a 6-step model does not), passed in through ``rlhf.load_reward``.
"""

import dataclasses
import json

import matplotlib
import pytest
import torch

from rlhf_helpers import env, evaluation, labeler, rlhf, sft
from tests.test_base_artifact import TINY

matplotlib.use("Agg")

ABOUT_LOVE = "Continue this line about love: Tell me in sadness,"

TINY_PPO = dataclasses.replace(TINY, ppo=env.PPOSizes(
    steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1, lr=1e-3, kl_coef=0.1, max_new_tokens=6, eval_every=1,
    checkpoint_prompts=4, overopt_betas=(0.0,), overopt_lr=1e-3, overopt_steps=2, overopt_eval_every=1))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


def tiny_reward():
    """A random scalar-head copy of the tiny SFT model, and stats that leave its scores as they are."""
    from transformers import AutoConfig, GPT2ForSequenceClassification

    folder = sft.sft_model_path() / "model"
    torch.manual_seed(3)
    model = GPT2ForSequenceClassification(AutoConfig.from_pretrained(str(folder), num_labels=1)).eval()
    _, tokenizer = sft.load_sft_model()
    return model, tokenizer, (0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def test_the_unended_correction_of_gold_is_exact():
    prompts = [ABOUT_LOVE, "Continue this line: Now is the winter", ABOUT_LOVE]
    responses = ["My love is sweet and true.", "of our discontent", "love love love love"]
    ended = [True, False, False]
    metrics = {"gold": sum(rlhf.gold_fn(prompts, responses)) / 3, "end_rate": 1 / 3}
    rlhf.with_unended_penalty(metrics)
    assert metrics["gold"] == pytest.approx(sum(labeler.gold_utilities(prompts, responses, ended)) / 3)
    assert metrics["gold_if_ended"] > metrics["gold"]
    assert rlhf.with_unended_penalty(dict(metrics)) == metrics  # applied once only


def test_prompts_settings_and_small_helpers():
    heldout, train = evaluation.prompts(), rlhf.training_prompts()
    assert not set(heldout) & set(train)  # PPO practises on training prompts only
    config = rlhf.ppo_config(env.PROFILES["cpu"].ppo, lr=0.5)
    assert (config.batch_size, config.init_kl_coef, config.lr) == (64, env.PROFILES["cpu"].ppo.kl_coef, 0.5)
    assert config.temperature == evaluation.TEMPERATURE  # PPO samples as every model is judged
    assert rlhf.smooth([0.0, 2.0, 4.0], window=2) == [0.0, 1.0, 3.0]
    assert rlhf.peak([{"gold": 1, "step": 0}, {"gold": 3, "step": 1}, {"gold": 3, "step": 2}])["step"] == 1
    shift = rlhf.word_shift(["the king", "the king"], ["sir sir sir", "sir, the king"] * 2, min_count=2)
    assert shift[0] == ("sir", 0, 8)
    terms = labeler.mean_utility_terms([ABOUT_LOVE], ["love love love"], [False])
    assert terms["unended"] == -labeler.W_UNENDED and terms["repetition"] == pytest.approx(-0.5)


def test_the_noise_reward_ignores_the_answers_and_looks_like_a_normalised_score():
    score = rlhf.noise_reward_fn((2.0, 0.5), seed=5)
    first = score(["p"] * 4000, ["a good answer"] * 4000)
    again = rlhf.noise_reward_fn((2.0, 0.5), seed=5)(["p"] * 4000, ["x"] * 4000)
    assert torch.equal(first, again)  # the same draws, whatever the answers say
    assert abs(first.mean().item() - 2.0) < 0.05 and abs(first.std().item() - 0.5) < 0.05
    assert not torch.equal(score(["p"] * 4, ["y"] * 4), first[:4])  # a stream: each call draws afresh
    state = torch.random.get_rng_state()
    rlhf.noise_reward_fn((0.0, 1.0))(["p"], ["q"])
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator: sampling is undisturbed


def test_every_profile_has_ppo_sizes_that_fit_the_config():
    for profile in env.PROFILES.values():
        sizes = profile.ppo
        rlhf.ppo_config(sizes)  # batch a multiple of the minibatch
        assert profile.eval_prompts <= len(evaluation.prompts()) and sizes.checkpoint_prompts <= profile.eval_prompts
        assert sizes.max_new_tokens == profile.beyond.max_new_tokens == evaluation.MAX_NEW_TOKENS  # judged alike
        assert sizes.overopt_betas and all(beta < sizes.kl_coef for beta in sizes.overopt_betas)


# --------------------------------------------------------------------------------------------
# The pipeline, tiny
# --------------------------------------------------------------------------------------------


def test_ppo_pipeline_trains_saves_judges_and_reloads(monkeypatch, isolated_artifacts):
    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY_PPO)
    reward_parts = tiny_reward()
    monkeypatch.setattr(rlhf, "load_reward", lambda: reward_parts)
    sizes = TINY_PPO.ppo

    # The ppo artifact: trained with a callback, saved as safetensors, judged before and after.
    seen = []
    folder = rlhf.ppo_path(callback=lambda metrics, prompts, responses: seen.append((metrics["step"], len(responses))))
    assert folder.is_relative_to(isolated_artifacts / "ppo")
    assert seen == [(1, 4), (2, 4)]
    assert (folder / "model" / "model.safetensors").exists()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # no pickles
    history = rlhf.ppo_history()
    assert [row["step"] for row in history] == [1, 2]
    for key, _ in rlhf.METRICS:
        assert all(key in row for row in history), key
    assert all(row["gold"] == pytest.approx(row["gold_if_ended"] - (1 - row["end_rate"])) for row in history)
    judged = rlhf.ppo_evaluation()
    assert judged["sft"]["kl"] == 0.0 and judged["eval_prompts"] == TINY_PPO.eval_prompts
    assert [c["step"] for c in judged["checkpoints"]] == [0, 1, 2]
    assert judged["checkpoints"][-1]["kl"] != 0.0
    samples = rlhf.ppo_samples()
    assert [s["prompt"] for s in samples] == evaluation.prompts(TINY_PPO.eval_prompts)
    assert {"sft", "ppo", "sft_gold", "ppo_gold", "sft_ended", "ppo_ended", "ppo_kl", "control", "control_gold",
            "control_ended", "control_score"} <= set(samples[0])
    assert judged["noise_control"]["kl"] != 0.0  # the control trained too
    assert sum(s["control_gold"] for s in samples) / len(samples) == pytest.approx(judged["noise_control"]["gold"], abs=1e-4)
    gains = rlhf.gold_gains(samples)
    assert gains["ppo"].estimate == pytest.approx(judged["ppo"]["gold"] - judged["sft"]["gold"], abs=2e-4)
    assert gains["ppo_over_control"].estimate == pytest.approx(gains["ppo"].estimate - gains["control"].estimate)
    policy, tokenizer = rlhf.load_ppo_policy()
    sft_model, _ = sft.load_sft_model()
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), sft_model.parameters()))
    assert rlhf.ppo_path(callback=lambda *args: seen.append(args)) == folder and len(seen) == 2  # cached

    # evaluate: the SFT model against itself has KL 0; the global random state is left as it was.
    model, reward_tokenizer, stats = reward_parts
    judge = dict(reward_model=model, reward_tokenizer=reward_tokenizer, reward_stats=stats)
    config = rlhf.ppo_config(sizes)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    result = rlhf.evaluate(policy, tokenizer, evaluation.prompts(3), config, ref_model=sft_model, **judge)
    assert torch.equal(torch.rand(3), expected)
    assert len(result["rows"]) == 3 and 0.0 <= result["end_rate"] <= 1.0
    again = rlhf.evaluate(policy, tokenizer, evaluation.prompts(3), config, ref_model=sft_model, **judge)
    assert again["rows"] == result["rows"]  # its own seed: the same answers every time
    assert json.dumps(rlhf.summary(result))  # no rows, JSON-able

    # The over-optimisation artifact: one run per beta, judged at every checkpoint.
    runs = rlhf.overoptimisation_runs()
    assert [run["beta"] for run in runs] == [0.0] and runs[0]["lr"] == sizes.overopt_lr
    assert [c["step"] for c in runs[0]["checkpoints"]] == [0, 1, 2]
    assert len(runs[0]["examples"]) == sizes.checkpoint_prompts and len(runs[0]["history"]) == sizes.overopt_steps
    proxy_ax, gold_ax = rlhf.plot_overoptimisation(runs + [{"beta": 0.1, "checkpoints": judged["checkpoints"]}])
    assert proxy_ax.get_xlabel() and gold_ax.get_ylabel() and len(gold_ax.lines) == 2
    fig = rlhf.plot_history(history)
    assert len(fig.axes) == len(rlhf.METRICS) and all(ax.get_xlabel() for ax in fig.axes)

    # The LoRA trick: the adapter-off model is the SFT-LoRA model, no reference copy, the base never moves.
    lora_policy, lora_tokenizer = rlhf.lora_ppo_policy(r=2, alpha=4)
    memory = rlhf.reference_memory(sft_model, lora_policy)
    assert memory["full_policy_and_reference"] == 2 * memory["model_bytes"]
    assert memory["lora_policy_and_reference"] == memory["model_bytes"] + memory["adapter_bytes"]
    assert 0.4 < memory["saved_fraction"] < 0.5
    from rlhf_helpers import peft_sft

    sft_lora, _ = peft_sft.load_sft_lora()
    ids = torch.tensor([lora_tokenizer(sft.chat_prompt(lora_tokenizer, ABOUT_LOVE))["input_ids"]])
    with torch.no_grad():
        with lora_policy.disable_adapter():
            reference_logits = lora_policy(input_ids=ids).logits
        assert torch.allclose(reference_logits, sft_lora(input_ids=ids).logits, atol=1e-5)
    demo = rlhf.lora_ppo_demo(lora_policy, lora_tokenizer, 2, sizes, judge=judge, batch_size=2)
    assert demo["base_untouched"] and len(demo["history"]) == 2
    assert abs(demo["history"][0]["kl"]) < 1e-4  # a fresh adapter: the policy is its reference
