"""Lesson 02's race of the course's tokens against characters: the encoding, one tiny run, the check."""

import pytest
import torch

from rlhf_helpers import char_baseline, stats
from tests.test_base_artifact import TINY


def test_characters_are_numbered_with_an_id_for_unseen_ones():
    vocabulary = char_baseline.char_vocabulary("to be, or not")
    assert vocabulary[char_baseline.UNKNOWN] == 0 and sorted(vocabulary.values()) == list(range(len(vocabulary)))
    ids = char_baseline.encode_chars("tob?", vocabulary)
    assert ids.tolist() == [vocabulary["t"], vocabulary["o"], vocabulary["b"], 0]  # "?" never occurred
    splits, size = char_baseline.char_splits()
    for ids, characters in splits.values():
        assert len(ids) == characters  # one token per character
    assert 60 < size < 120 and int(splits["train"][0].max()) < size


def test_a_run_trains_for_its_time_and_reports_nats_per_character():
    torch.manual_seed(0)
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40
    vocabulary = char_baseline.char_vocabulary(text)
    ids = char_baseline.encode_chars(text, vocabulary)
    splits = {"train": (ids, len(text)), "val": (ids[:800], 800)}
    run = char_baseline.run("characters", splits, len(vocabulary), TINY.gpt, seconds=0.5)
    assert run["steps"] >= char_baseline.TIMING_STEPS and run["curve"][0][0] == 0.0
    seconds = [s for s, _ in run["curve"]]
    assert seconds == sorted(seconds) and 0 < seconds[-1] < 5  # about the time it was given
    assert run["curve"][-1][1] < run["curve"][0][1]  # it learned something
    final = run["nats_per_char"]
    assert final.low <= final.estimate <= final.high


def test_the_check_needs_the_tokens_interval_below_the_characters():
    runs = lambda tokens, chars: {"course tokens": {"nats_per_char": tokens}, "characters": {"nats_per_char": chars}}
    char_baseline.check_tokens_win(runs(stats.Interval(1.7, 1.69, 1.71), stats.Interval(2.2, 2.19, 2.21)))
    with pytest.raises(AssertionError, match="not apart"):  # the control: the same model on both sides
        same = stats.Interval(2.2, 2.19, 2.21)
        char_baseline.check_tokens_win(runs(same, same))
    with pytest.raises(AssertionError):  # characters winning fails too
        char_baseline.check_tokens_win(runs(stats.Interval(2.2, 2.19, 2.21), stats.Interval(1.7, 1.69, 1.71)))


def test_speeds_are_measured_in_turns_and_a_bigger_model_is_slower():
    import dataclasses
    ids = torch.randint(50, (4000,), generator=torch.Generator().manual_seed(0))
    small = char_baseline._fresh_model(TINY.gpt, 50)
    big = char_baseline._fresh_model(dataclasses.replace(TINY.gpt, n_embd=8 * TINY.gpt.n_embd), 50)
    small_s, big_s = char_baseline.step_seconds([(small, ids), (big, ids)], TINY.gpt)
    assert 0 < small_s < big_s
    assert char_baseline.steps_for(1.0, 0.01) == 100 and char_baseline.steps_for(1.0, 10.0) == char_baseline.TIMING_STEPS


def test_a_busy_machine_trains_both_longer_but_still_for_equal_time(monkeypatch):
    monkeypatch.setattr(char_baseline, "step_seconds", lambda models, sizes: [0.5, 0.25])  # a slow machine
    monkeypatch.setattr(char_baseline, "run", lambda name, splits, vocab, sizes, steps: steps)
    monkeypatch.setattr(char_baseline, "char_splits", lambda: ({"train": (torch.zeros(10), 10)}, 5))
    got = char_baseline.side_by_side(TINY.gpt, {"train": (torch.zeros(10), 10)}, 7, seconds=1.0)
    assert got == {"course tokens": char_baseline.MIN_STEPS, "characters": 2 * char_baseline.MIN_STEPS}
