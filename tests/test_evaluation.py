"""The evaluation protocol: its prompts, its sampling, its figures, and the check lessons assert."""

import pytest
import torch

from rlhf_helpers import env, evaluation, instructions, labeler, rlhf, sft, stats, words
from tests.test_base_artifact import TINY


def test_the_prompts_are_held_out_balanced_and_new():
    prompts = evaluation.prompts()
    assert len(set(prompts)) == len(prompts) >= env.PROFILES["cpu"].eval_prompts
    assert not set(prompts) & set(rlhf.training_prompts())
    asked = [instructions.parse_prompt(p) for p in prompts]
    assert [a.family for a in asked] == ["about", "continue"] * (len(prompts) // 2)  # the families alternate
    assert len({a.opening for a in asked}) == len(prompts)  # no opening repeats
    assert evaluation.prompts(10) == prompts[:10]
    for profile in env.PROFILES.values():  # balanced: as many prompts of each family
        families = [instructions.parse_prompt(p).family for p in evaluation.prompts(profile.eval_prompts)]
        assert families.count("about") == families.count("continue") == profile.eval_prompts // 2
    with pytest.raises(ValueError, match="held-out prompts"):
        evaluation.prompts(len(prompts) + 1)


def test_figures_are_rates_per_family_gold_and_real_words_with_intervals():
    tasks = instructions.make_tasks("heldout", n=40)
    prompts = [t.prompt for t in tasks]
    good = [t.response for t in tasks]  # the corpus's own lines: every one follows
    figures = evaluation.figures(prompts, good, [True] * 40)
    assert figures["following"] == stats.bootstrap_mean([1.0] * 40, prompts)
    assert figures["following_about"].estimate == figures["following_continue"].estimate == 1.0
    assert figures["gold"].estimate == pytest.approx(sum(labeler.gold_utilities(prompts, good)) / 40)
    assert figures["real_words"] == words.real_word_rate(good) and figures["real_words"].estimate > 0.95
    # half the answers replaced by an echo of the prompt: only the continue family loses them
    half = [t.opening if t.family == "continue" else t.response for t in tasks]
    figures = evaluation.figures(prompts, half, [True] * 40)
    assert figures["following_about"].estimate == 1.0 and figures["following_continue"].estimate == 0.0
    assert figures["following"].low < 0.5 < figures["following"].high
    ended = [i % 2 == 0 for i in range(40)]  # cut-off answers lose W_UNENDED each
    cut = evaluation.figures(prompts, good, ended)["gold"].estimate
    assert cut == pytest.approx(sum(labeler.gold_utilities(prompts, good)) / 40 - labeler.W_UNENDED / 2)
    with pytest.raises(ValueError, match="pair up"):
        evaluation.figures(prompts, good[:3], ended)
    assert "follows about" in evaluation.table({"model": figures}).splitlines()[0]


def test_check_beats_fails_on_its_control_and_passes_a_clear_gain():
    tasks = instructions.make_tasks("heldout", n=200)
    prompts = [t.prompt for t in tasks]
    untrained = evaluation.figures(prompts, ["ROMEO:\nBut soft, what light"] * 200, [False] * 200)
    trained = evaluation.figures(prompts, [t.response for t in tasks], [True] * 200)
    evaluation.check_beats(trained, untrained, "training taught the format")  # passes
    with pytest.raises(AssertionError, match="not shown for following_about"):
        evaluation.check_beats(untrained, untrained, "an untrained model against itself")  # the control
    # a gain on one family only is not enough
    continue_only = evaluation.figures(prompts, [t.response if t.family == "continue" else "no" for t in tasks],
                                       [True] * 200)
    with pytest.raises(AssertionError, match="following_about"):
        evaluation.check_beats(continue_only, untrained, "both families")


def test_sampling_is_the_protocols_and_repeats_whatever_ran_before(monkeypatch, isolated_artifacts):
    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY)
    model, tokenizer = sft.load_sft_model()
    prompts = evaluation.prompts(TINY.eval_prompts)
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    texts, ended = evaluation.answers(model, tokenizer, prompts)
    assert torch.equal(torch.rand(2), expected)  # the global random state is untouched
    assert (texts, ended) == evaluation.answers(model, tokenizer, prompts)  # its own seed
    assert len(texts) == len(ended) == len(prompts)
    # sft.generate_responses, which also serves prompt-tuned models, samples the same answers
    assert sft.generate_responses(model, tokenizer, prompts) == texts
    config = evaluation.sampling_config()
    assert (config.temperature, config.max_new_tokens) == (evaluation.TEMPERATURE, evaluation.MAX_NEW_TOKENS)
    figures, again, _ = evaluation.judge(model, tokenizer, prompts)
    assert again == texts and set(figures) >= {"following", "following_about", "following_continue", "gold"}
