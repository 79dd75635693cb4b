"""Lesson 05's reward model: comparison data, trl's RewardTrainer, scoring, evaluation, your labels.

Everything trains a 1-layer model on a handful of pairs; the SFT model is a tiny untrained GPT-2
saved once per module, so no test builds the real pipeline.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rlhf_helpers import artifacts, env, labeler, preferences, reward, sft
from rlhf_helpers.preferences import Comparison
from tests.test_base_artifact import TINY

SIZES = env.RewardSizes(prompts=10, responses_per_prompt=5, max_steps=3, batch_size=4, lr=1e-3)
TINY_R = dataclasses.replace(TINY, reward=SIZES)
ABOUT_LOVE = "Continue this line about love: Tell me in sadness,"
ABOUT_NIGHT = "Continue this line about night: I will watch"


def fake_answers(prompt: str, k: int) -> tuple[list[str], list[bool]]:
    """``k`` answers of clearly different gold utility; the last one never ended."""
    instruction = labeler.instructions.parse_prompt(prompt)
    word = instruction.topic if instruction.family == "about" else "then"
    pool = [f"My {word} is sweet, kind and true.", f"The {word} of the world is here.",
            f"Death and woe upon the {word}, foul plague.", "Ay.", f"So {word} {word} {word} {word} go on."]
    answers = [pool[i % len(pool)] for i in range(k)]
    return answers, [True] * (k - 1) + [False]


def fake_sampler(model, tokenizer, prompts, k, **kwargs):
    pairs = [fake_answers(p, k) for p in prompts]
    return [a for a, _ in pairs], [e for _, e in pairs]


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory):
    """A 1-layer GPT-2 with the course tokenizer, saved as the SFT model would be."""
    from rlhf_helpers.gpt import GPT, GPTConfig, to_hf_gpt2
    from rlhf_helpers.tokenizers import course_tokenizer

    torch.manual_seed(0)
    tokenizer = course_tokenizer()
    model = to_hf_gpt2(GPT(GPTConfig(vocab_size=len(tokenizer), block_size=128, n_layer=1, n_head=2, n_embd=16)),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-sft")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder


@pytest.fixture
def tiny_pipeline(monkeypatch, tiny_sft):
    """The tiny profile, the tiny SFT model, and answers from ``fake_sampler``."""
    from rlhf_helpers import gpt

    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY_R)
    monkeypatch.setattr(sft, "sft_model_path", lambda: tiny_sft)
    monkeypatch.setattr(sft, "load_sft_model", lambda: gpt.load_saved_model(tiny_sft / "model"))
    monkeypatch.setattr(reward, "sample_responses", fake_sampler)
    monkeypatch.delenv(reward.LABELS_VAR, raising=False)
    return tiny_sft


def tokenizer_of(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder / "model"))


# --------------------------------------------------------------------------------------------
# Which labels.
# --------------------------------------------------------------------------------------------

def test_labels_source_defaults_to_simulated_and_rejects_unknown_values(monkeypatch):
    monkeypatch.delenv(reward.LABELS_VAR, raising=False)
    assert reward.labels_source() == "simulated"
    monkeypatch.setenv(reward.LABELS_VAR, " Mine ")
    assert reward.labels_source() == "mine"
    monkeypatch.setenv(reward.LABELS_VAR, "human")
    with pytest.raises(env.CourseConfigError, match="'simulated'.*'mine'.*path"):
        reward.labels_source()


def test_labels_can_be_a_file_such_as_a_workshops_merged_labels(monkeypatch, tmp_path):
    merged = tmp_path / "room.jsonl"
    merged.write_text("")
    monkeypatch.setenv(reward.LABELS_VAR, str(merged))
    assert reward.labels_source() == "file" and reward.labels_file() == merged
    first = reward.reward_config()["labels_sha256"]
    preferences.append_label(merged, {"prompt": "p", "a": "x", "b": "y", "choice": "a"})
    assert reward.reward_config()["labels_sha256"] != first, "new labels, new reward model"
    monkeypatch.setenv(reward.LABELS_VAR, str(tmp_path / "missing.jsonl"))
    with pytest.raises(env.CourseConfigError, match="path of an existing labels file"):
        reward.labels_source()


# --------------------------------------------------------------------------------------------
# Comparison data.
# --------------------------------------------------------------------------------------------

def test_comparison_prompts_are_distinct_training_prompts():
    prompts = reward.comparison_prompts(30)
    heldout = {t.prompt for t in labeler.instructions.make_tasks("heldout")}
    assert len(set(prompts)) == 30 and not heldout.intersection(prompts)
    with pytest.raises(ValueError, match="distinct training prompts"):
        reward.comparison_prompts(10**6)


def test_sampling_gives_k_answers_per_prompt_with_ended_flags_and_repeats(tiny_sft):
    from rlhf_helpers import gpt

    model, tokenizer = gpt.load_saved_model(tiny_sft / "model")
    prompts = reward.comparison_prompts(3)
    responses, ended = reward.sample_responses(model, tokenizer, prompts, 2, max_new_tokens=5, seed=1, batch_size=4)
    assert [len(r) for r in responses] == [2, 2, 2] and [len(e) for e in ended] == [2, 2, 2]
    assert all(isinstance(x, bool) for es in ended for x in es)
    assert reward.sample_responses(model, tokenizer, prompts, 2, max_new_tokens=5, seed=1, batch_size=4)[0] == responses


def test_comparison_data_drops_unfinished_answers_and_ties_and_splits_by_prompt(monkeypatch):
    monkeypatch.setattr(reward, "sample_responses", fake_sampler)
    data = reward.make_comparison_data(None, None, SIZES)
    info = data.info
    assert info["prompts"] == 10 and info["answers"] == 50 and info["unfinished"] == 10
    assert info["pairs"] == 10 * 6  # 4 finished answers per prompt: 4·3/2 pairs each
    assert info["pairs"] - info["ties"] == info["train_pairs"] + info["heldout_pairs"]
    everything = data.train + data.heldout
    assert all(d != 0 for d in reward.gold_differences(everything))  # no gold ties left
    unfinished = {fake_answers(p, 5)[0][-1] for p in data.prompts}
    assert not unfinished.intersection(r for c in everything for r in (c.chosen, c.rejected))
    assert not {c.prompt for c in data.train} & {c.prompt for c in data.heldout}
    # the labeler was calibrated to agree with gold 75 % of the time on these pairs, on average
    answers = reward.finished_answers(data.responses, data.ended)
    differences = reward.pair_differences(data.prompts, answers)
    assert labeler.expected_agreement(differences, data.tau) == pytest.approx(reward.TARGET_AGREEMENT, abs=1e-6)


def test_comparisons_round_trip_through_jsonl(tmp_path):
    rows = [Comparison(ABOUT_LOVE, "Love is kind.\nYes", 'He said "no".'),
            Comparison("Continue this line: Then", "é ü", "x", "human")]
    reward.write_comparisons(tmp_path / "c.jsonl", rows)
    assert reward.read_comparisons(tmp_path / "c.jsonl") == rows


# --------------------------------------------------------------------------------------------
# The reward model and trl.
# --------------------------------------------------------------------------------------------

PAIRS = [Comparison(ABOUT_LOVE, "my love is sweet and kind.", "Ay."),
         Comparison("Continue this line: Then say at once", "what thou dost know in this.", "Then say at once."),
         Comparison(ABOUT_NIGHT, "the night is gentle.", "Death and blood upon the night, woe!")]


def test_scores_match_what_trl_trains_on_and_its_loss_is_the_pairwise_loss(tiny_sft, tmp_path):
    from rlhf_helpers.checks.l05_reward_modelling import reference_last_token_index, reference_pairwise_loss

    tokenizer = tokenizer_of(tiny_sft)
    env.seed_everything(0)
    model = reward.reward_model_from_sft(tiny_sft / "model", tokenizer)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    trainer = reward.reward_trainer(model, tokenizer, PAIRS, SIZES, str(tmp_path))
    assert trainer.args.center_rewards_coefficient is None and not trainer.args.activation_checkpointing
    # our rendering is trl's tokenization of a conversational pair
    row = trainer.train_dataset[0]
    assert row["chosen_ids"] == reward.render(tokenizer, PAIRS[0].prompt, PAIRS[0].chosen)
    assert row["rejected_ids"] == reward.render(tokenizer, PAIRS[0].prompt, PAIRS[0].rejected)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        # the model reads the score at the last real token of each right-padded row
        hidden = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        last = reference_last_token_index(batch["attention_mask"])
        by_hand = model.score(hidden[torch.arange(len(last)), last])[:, 0]
    chosen, rejected = rewards.chunk(2)
    assert trl_loss == pytest.approx(reference_pairwise_loss(chosen, rejected).item(), abs=1e-6)
    assert torch.allclose(by_hand, rewards, atol=1e-5)
    # score() gives the same rewards, alone or batched with longer rows
    ours = reward.score(model, tokenizer, [c.prompt for c in PAIRS] * 2,
                        [c.chosen for c in PAIRS] + [c.rejected for c in PAIRS], batch_size=2)
    assert torch.allclose(ours, rewards, atol=1e-5)
    alone = reward.score(model, tokenizer, [PAIRS[2].prompt], [PAIRS[2].chosen])
    assert torch.allclose(alone, rewards[2:3], atol=1e-5)
    with pytest.raises(ValueError, match="pair up"):
        reward.score(model, tokenizer, ["a"], [])


def test_the_reward_model_artifact_trains_saves_and_reloads(tiny_pipeline, isolated_artifacts):
    from transformers import GPT2ForSequenceClassification

    folder = reward.reward_model_path()
    assert folder.is_relative_to(isolated_artifacts / "reward_model")
    assert (folder / "model" / "model.safetensors").exists()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # no pickles
    model, tokenizer, stats = reward.load_reward_model()
    assert isinstance(model, GPT2ForSequenceClassification) and not model.training
    mean, std = stats  # lesson 06 unpacks (mean, std)
    assert std > 0 and json.loads((folder / "stats.json").read_text())["answers"] > 0
    logs = reward.reward_log_history()
    assert [row["step"] for row in logs if "loss" in row][-1] == SIZES.max_steps
    train, heldout = reward.load_comparisons()
    assert (train, heldout) == reward.simulated_comparisons() and train and heldout
    figures = reward.reward_figures()
    assert figures["n_train_pairs"] == len(train) and figures["labels"] == "simulated" and figures["tau"] > 0
    # the stats are the saved model's own on SFT answers
    answers = [(row["prompt"], a) for row in reward.sampled_answers() if row["prompt"] not in {c.prompt for c in heldout}
               for a, e in zip(row["answers"], row["ended"]) if e]
    again = reward.normalisation_stats(model, tokenizer, *map(list, zip(*answers)))
    assert again.mean == pytest.approx(mean, abs=1e-4) and again.std == pytest.approx(std, abs=1e-4)
    # pairs for the widget: every training pair once, in a random order within the pair
    pairs = reward.pairs_to_label()
    assert len(pairs) == len(train)
    assert {preferences.Comparison(p, *sorted((a, b))) for p, a, b in pairs} == \
        {preferences.Comparison(c.prompt, *sorted((c.chosen, c.rejected))) for c in train}
    as_labelled = {(c.prompt, c.chosen, c.rejected) for c in train}
    chosen_shown_as_a = sum(pair in as_labelled for pair in pairs)
    assert 0 < chosen_shown_as_a < len(pairs)  # the position gives the label away in neither direction


# --------------------------------------------------------------------------------------------
# Your labels.
# --------------------------------------------------------------------------------------------

def write_labels(path, n_good: int, bad_line: str | None = None, heldout_prompt: str | None = None):
    for i in range(n_good):
        preferences.append_label(path, {"prompt": ABOUT_LOVE, "a": f"Love {i} is kind.",
                                        "b": f"Hate {i}.", "choice": "a" if i % 2 else "b"})
    if bad_line is not None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(bad_line + "\n")
    if heldout_prompt is not None:
        preferences.append_label(path, {"prompt": heldout_prompt, "a": "x y z", "b": "u v w", "choice": "a"})
    preferences.append_label(path, {"prompt": ABOUT_LOVE, "a": "p", "b": "q", "choice": "tie"})


def test_own_labels_load_with_a_named_bad_row_and_never_change_the_file(tmp_path, capsys):
    path = tmp_path / "my_labels.jsonl"
    write_labels(path, reward.MIN_OWN_COMPARISONS, bad_line=json.dumps({"prompt": ABOUT_LOVE, "a": 1}),
                 heldout_prompt=ABOUT_NIGHT)
    before = path.read_bytes()
    comparisons = reward.own_comparisons({ABOUT_NIGHT}, path)
    out = capsys.readouterr().out
    assert len(comparisons) == reward.MIN_OWN_COMPARISONS and all(c.source == "human" for c in comparisons)
    assert f"line {reward.MIN_OWN_COMPARISONS + 1}: missing field(s) 'b', 'choice'" in out
    assert "1 labels on held-out prompts" in out and "1 ties" in out
    assert path.read_bytes() == before


def test_too_few_own_labels_say_how_many_you_have_and_need(tmp_path):
    path = tmp_path / "my_labels.jsonl"
    write_labels(path, 7, bad_line="not json")
    with pytest.raises(env.CourseConfigError, match=rf"you have 7 usable labels.*at least {reward.MIN_OWN_COMPARISONS}"):
        reward.own_comparisons(set(), path, verbose=False)
    with pytest.raises(env.CourseConfigError, match="you have 0 usable labels"):
        reward.own_comparisons(set(), tmp_path / "missing.jsonl", verbose=False)


def test_mine_trains_on_your_labels_and_new_labels_make_a_new_artifact(tiny_pipeline, monkeypatch):
    monkeypatch.setenv(reward.LABELS_VAR, "mine")
    with pytest.raises(env.CourseConfigError, match="you have 0 usable labels"):
        reward.reward_model_path()
    assert not (artifacts.artifacts_dir() / "reward_model").exists()  # nothing trained on too few labels
    path = preferences.labels_path()
    write_labels(path, reward.MIN_OWN_COMPARISONS)
    first = reward.reward_model_path()
    train, heldout = reward.load_comparisons()
    assert len(train) == reward.MIN_OWN_COMPARISONS and all(c.source == "human" for c in train)
    assert heldout == reward.simulated_comparisons()[1] and reward.reward_figures()["labels"] == "mine"
    write_labels(path, 1)
    assert reward.reward_config()["labels_sha256"] != json.loads((first / "artifact.json").read_text())["config"]["labels_sha256"]


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------

def test_accuracies_ceiling_and_calibration():
    # All three answers follow (real-word continuations holding "love"), repeat no word pair, and
    # are full lines (46, 44 and 46 characters: length 0); "love", the topic, is not tone. So
    # sweet = 1 + 0.5 * (1 cheerful word / 2) = 1.25, and it = that = 1.0 (no tone word): a tie.
    sweet = "My love is sweet, and the king is at the gate."
    it, that = "The love of it, and the king is at the gate.", "The love of that, and the king is at the gate."
    comparisons = [Comparison(ABOUT_LOVE, sweet, it),  # gold: right, 1.25 - 1.0 = 0.25
                   Comparison(ABOUT_LOVE, it, sweet),  # gold: wrong, 1.0 - 1.25 = -0.25
                   Comparison(ABOUT_LOVE, it, that)]  # gold tie, 1.0 - 1.0 = 0
    chosen, rejected = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 3.0, -1.0])
    assert reward.accuracy(chosen, rejected) == pytest.approx(2 / 3)
    # pair 1: reward and gold agree; pair 2: the reward prefers the gold-better rejected one; pair 3 is left out
    assert reward.accuracy_against_gold(comparisons, chosen, rejected) == pytest.approx(1.0)
    assert reward.gold_differences(comparisons) == pytest.approx([0.25, -0.25, 0.0])
    assert reward.labeler_ceiling(comparisons, tau=0.5) == pytest.approx(labeler.sigmoid(0.25 / 0.5))
    rows = reward.calibration(torch.tensor([3.0, 0.1, -0.2, 2.0]), torch.tensor([0.0, 0.0, 0.0, 4.0]), bins=5)
    assert sum(r["pairs"] for r in rows) == 4
    assert all(0.5 <= r["low"] <= r["confidence"] <= r["high"] <= 1 for r in rows)
    assert rows[0]["pairs"] == 2 and rows[0]["accuracy"] == 0.5  # 0.1 right, -0.2 wrong, both unsure
    assert rows[-1]["accuracy"] == 1.0  # confidence sigmoid(3) = 0.95, right


def test_quirk_probes_report_reward_and_gold_changes(tiny_sft):
    tokenizer = tokenizer_of(tiny_sft)
    env.seed_everything(0)
    model = reward.reward_model_from_sft(tiny_sft / "model", tokenizer)
    prompts = [ABOUT_LOVE, "Continue this line: Then say at once"]
    responses = ["My love is true and fair.", "what thou dost know in this."]
    probes = reward.quirk_probes(model, tokenizer, prompts, responses, reward.RewardStats(0.0, 2.0))
    assert set(probes) == set(reward.QUIRKS)
    assert probes["add gloomy words"]["gold_change"] < 0 < probes["add cheerful words"]["gold_change"]
    assert probes["repeat the last word 4 times"]["gold_change"] < 0
    assert probes["say it three times"]["gold_change"] < 0
    assert all(0 <= p["reward_rises"] <= 1 for p in probes.values())


# --------------------------------------------------------------------------------------------
# The labelling widget.
# --------------------------------------------------------------------------------------------

def test_the_labelling_widget_appends_each_answer_and_resumes(tmp_path):
    from rlhf_helpers.widgets import labelling_widget

    path = tmp_path / "labels" / "my_labels.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"prompt": ABOUT_LOVE, "a": "A0", "b": "B0", "choice": "b"}) + "\nbad row\n")
    before = path.read_bytes()
    pairs = [(ABOUT_LOVE, f"A{i}", f"B{i}") for i in range(4)]
    pairs[0] = (ABOUT_LOVE, "B0", "A0")  # already answered, shown the other way round
    widget = labelling_widget(pairs, path)
    view, buttons, status, notes = widget.children
    buttons = {b.description: b for b in buttons.children}
    assert status.value == "1 labelled, 0 ties, 0 skipped; 3 pairs left"
    assert "line 2: not valid JSON" in notes.value and "A1" in view.value and "B1" in view.value
    buttons["A is better"].click()
    buttons["tie"].click()
    assert status.value == "2 labelled, 1 ties, 0 skipped; 1 pairs left" and "A3" in view.value
    assert path.read_bytes().startswith(before)  # earlier labels are never rewritten
    report = preferences.load_labels(path)
    assert len(report.comparisons) == 2 and report.ties == 1 and len(report.problems) == 1
    assert report.comparisons[-1] == Comparison(ABOUT_LOVE, "A1", "B1", "human")
    # a new widget on the same file carries on where the last one stopped
    again = labelling_widget(pairs, path)
    assert again.children[2].value == "2 labelled, 1 ties, 0 skipped; 1 pairs left"
    {b.description: b for b in again.children[1].children}["skip"].click()
    assert again.children[2].value == "2 labelled, 1 ties, 1 skipped; 0 pairs left"
    assert all(b.disabled for b in again.children[1].children)


def test_a_labels_file_named_from_the_course_folder_is_found_from_lessons(monkeypatch, tmp_path):
    """A notebook's kernel runs in lessons/; `RLHF_LABELS=room.jsonl make lab` names it from the course folder."""
    from rlhf_helpers import artifacts

    (tmp_path / "room.jsonl").write_text("")
    monkeypatch.setattr(artifacts, "course_root", lambda: tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv(reward.LABELS_VAR, "room.jsonl")
    assert reward.labels_source() == "file" and reward.labels_file() == tmp_path / "room.jsonl"


# --------------------------------------------------------------------------------------------
# Lesson 05's check: beat the untrained-head control.
# --------------------------------------------------------------------------------------------

def _pairs(n_prompts=30, per_prompt=8):
    from rlhf_helpers.preferences import Comparison

    openings = ["Tell me in sadness,", "I will watch", "Now is the winter"]
    prompts = [(t, labeler.instructions.about_prompt(t, o)) for o in openings for t in labeler.instructions.TOPICS]
    return [Comparison(p, f"the {t} is gentle and fair tonight.", f"fear and grief upon the {t}.", "simulated")
            for t, p in prompts[:n_prompts] for _ in range(per_prompt)]


def test_the_control_fails_the_check_and_a_trained_model_passes_it():
    pairs = _pairs()
    generator = torch.Generator().manual_seed(0)
    control = (torch.randn(len(pairs), generator=generator), torch.randn(len(pairs), generator=generator))
    same = reward.versus_control(pairs, control, control)
    with pytest.raises(AssertionError, match="beats the untrained-head control against the labels .*: not shown"):
        reward.check_beats_control(same, "labels")
    another_seed = (torch.randn(len(pairs), generator=generator), torch.randn(len(pairs), generator=generator))
    with pytest.raises(AssertionError):  # an untrained head of another seed is no better
        reward.check_beats_control(reward.versus_control(pairs, another_seed, control), "labels")
    trained = (control[0] + 1.5, control[1])  # prefers the chosen answer by a wide margin
    for against in ("labels", "gold"):
        difference = reward.versus_control(pairs, trained, control, against)
        reward.check_beats_control(difference, against)
        assert difference.estimate > 0.2


def test_gold_ties_have_no_right_answer():
    from rlhf_helpers.preferences import Comparison

    pairs = [Comparison(ABOUT_NIGHT, "the night.", "the night!", "simulated")]  # both follow, nothing else
    correct, prompts = reward.pair_correct(pairs, torch.tensor([1.0]), torch.tensor([0.0]), against="gold")
    assert correct == [] == prompts
    with pytest.raises(ValueError, match="'labels' or 'gold'"):
        reward.pair_correct(pairs, torch.tensor([1.0]), torch.tensor([0.0]), against="human")


@pytest.mark.usefixtures("one_thread")
def test_one_trl_step_leaves_the_weights_of_reward_step_and_lesson_05s_comparison_catches_a_wrong_step(tiny_sft, tmp_path):
    """Lesson 05's comparison on a tiny reward model, in float64: one RewardTrainer step (its own
    AdamW, no warm-up) on all the pairs, and reward_step with AdamW set up from trl's arguments, end
    with the same weights; the comparison rejects a step without the clip, at another learning rate,
    or with PyTorch's default weight decay instead of the Trainer's 0."""
    import copy

    from rlhf_helpers.checks.l05_reward_modelling import reference_pairwise_loss
    from rlhf_helpers.exercises import compare

    tokenizer = tokenizer_of(tiny_sft)
    env.seed_everything(0)
    start = reward.reward_model_from_sft(tiny_sft / "model", tokenizer).double()
    one_step = dataclasses.replace(SIZES, max_steps=1, batch_size=len(PAIRS))
    same = lambda a, b: compare(a, b, rtol=1e-6, atol=1e-8) is None  # the lesson's comparison
    theirs = copy.deepcopy(start)
    trainer = reward.reward_trainer(theirs, tokenizer, PAIRS, one_step, str(tmp_path), warmup_steps=0, max_grad_norm=0.01)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    trainer.train()
    logged, args = trainer.state.log_history[0], trainer.args
    assert logged["learning_rate"] == args.learning_rate and logged["grad_norm"] > args.max_grad_norm, "the clip binds"

    def yours(lr=args.learning_rate, max_grad_norm=args.max_grad_norm, weight_decay=args.weight_decay):
        model = copy.deepcopy(start)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=weight_decay)
        reward.reward_step(model, optimizer, batch, reference_pairwise_loss, max_grad_norm)
        return model

    assert not same(start, theirs) and same(yours(), theirs)
    assert not same(yours(max_grad_norm=0.0), theirs), "a step without the clip"
    assert not same(yours(lr=2 * args.learning_rate), theirs), "a step at another learning rate"
    assert not same(yours(weight_decay=0.01), theirs), "PyTorch's default weight decay, not the Trainer's 0"


def test_normalisation_refuses_a_reward_model_that_scores_every_answer_alike(monkeypatch):
    """A spread of 0 would make every normalised PPO reward infinite (and the policy NaN): say so instead."""
    monkeypatch.setattr(reward, "score", lambda model, tokenizer, prompts, responses: torch.tensor([0.25, 0.5, 0.75]))
    assert reward.normalisation_stats(None, None, ["p"] * 3, ["a", "b", "c"]) == (0.5, 0.25)
    monkeypatch.setattr(reward, "score", lambda model, tokenizer, prompts, responses: torch.full((3,), -0.123))
    with pytest.raises(ValueError, match="scores 3 different answers with mean -0.123.* standard deviation 0.0"):
        reward.normalisation_stats(None, None, ["p"] * 3, ["a", "b", "c"])
