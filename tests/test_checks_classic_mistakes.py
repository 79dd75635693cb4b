"""The wrong answers a simulated learner wrote that once got a ✓, or froze the cell: each is caught now,
with a message that names the exercise, the input, and where the answer differs."""

import pytest
import torch

from rlhf_helpers import bpe, exercises
from rlhf_helpers.checks import l00_start_here as l00
from rlhf_helpers.checks import l01_tokenization as l01
from rlhf_helpers.checks import l04_lora as l04
from rlhf_helpers.exercises import ExerciseError


def softmax_with_one_global_maximum(logits, dim=-1):
    shifted = logits - logits.max()  # one maximum for the whole tensor
    return shifted.exp() / shifted.exp().sum(dim=dim, keepdim=True)


def get_stats_into_a_new_dict(ids, counts=None):
    counts = dict(counts or {})  # a copy: the caller's dict never sees the new pairs
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def encode_by_most_frequent_pair(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        stats = bpe.get_stats(ids)
        learned = [p for p in stats if p in merges]
        if not learned:
            break
        pair = max(learned, key=stats.get)  # the most frequent, not the earliest learned
        ids = bpe.merge(ids, pair, merges[pair])
    return ids


def encode_with_continue_instead_of_break(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        stats = bpe.get_stats(ids)
        pair = min(stats, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            continue  # should be break: the loop never ends
        ids = bpe.merge(ids, pair, merges[pair])
    return ids


def merge_in_place(W, A, B, alpha):
    W += (alpha / A.shape[0]) * (B @ A)  # changes the base model's weight
    return W


@pytest.mark.parametrize("checker, wrong, fragment", [
    (l00.check_softmax, softmax_with_one_global_maximum, "NaN"),
    (l01.check_get_stats, get_stats_into_a_new_dict, "should update its argument 'counts' in place"),
    (l01.check_encode, encode_by_most_frequent_pair, "in learned order"),
    (l04.check_merged_weight, merge_in_place, "changed its argument 1 in place"),
])
def test_a_plausible_wrong_answer_is_caught_with_a_readable_message(checker, wrong, fragment):
    with pytest.raises(ExerciseError) as caught:
        checker(wrong)
    message = str(caught.value)
    assert fragment in message and "input tried" in message and "hint:" in message
    assert all(len(line) < 400 for line in message.splitlines()), "no dumped object reprs"


def test_an_endless_loop_is_stopped_and_named(monkeypatch):
    monkeypatch.setattr(exercises, "TIME_LIMIT", 0.5)
    with pytest.raises(ExerciseError, match=r"did not finish within 0.5 s .*`continue` where a `break`"):
        l01.check_encode(encode_with_continue_instead_of_break)


def test_the_right_answers_still_pass(capsys):
    assert l00.check_softmax(l00.reference_softmax) is l00.reference_softmax
    assert l01.check_get_stats(bpe.get_stats) is bpe.get_stats
    assert l01.check_encode(bpe.encode) is bpe.encode
    assert l04.check_merged_weight(l04.reference_merged_weight) is l04.reference_merged_weight
    assert capsys.readouterr().out.count("✓") == 4


def test_help_comes_in_tiers_on_request(capsys):
    with pytest.raises(ExerciseError, match=r"more help: hint\(\) \(tier 2 of 3\), or show_answer\(\)") as caught:
        l00.check_softmax(softmax_with_one_global_maximum)
    assert "keepdim=True)" not in str(caught.value), "the first failure explains; it does not give the code"
    exercises.hint()
    assert "own largest logit" in capsys.readouterr().out
    exercises.show_answer()
    out = capsys.readouterr().out
    assert "hint 3 of 3 (the last tier)" in out and "exps.sum(dim=dim, keepdim=True)" in out


def test_tensor_mismatches_say_where_and_objects_are_not_dumped():
    why = exercises.compare(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0, 2.5, 0]]))
    assert why == ("output: values differ, first at index (1, 1): expected 2.5, got 0 "
                   "(largest absolute difference 2.5)")
    block = torch.nn.TransformerEncoderLayer(16, 2)
    assert exercises._short(block).startswith("TransformerEncoderLayer (") and len(exercises._short(block)) < 60
    assert len(exercises._short(torch.randn(50, 50))) < 160


# What tier 1 (shown with every wrong answer) must not contain: text a learner could paste as the answer.
CODE_MARKERS = ("torch.", "F.", " = ", "+=", "return ", " @ ", ".sum(", ".mean(", ".view(", "keepdim", "lambda")


def test_every_exercise_hints_in_tiers_and_its_first_tier_gives_no_code(monkeypatch):
    """Each lesson's checks pass ``check`` its hints as tiers, gentle to complete; the first, shown at the
    first failure, explains without code, so that the code comes only when the learner asks for it."""
    import importlib
    import inspect
    import pkgutil

    from rlhf_helpers import checks

    hints = {}  # check function -> the hints it passed to check()
    for info in pkgutil.iter_modules(checks.__path__):
        if not info.name.startswith("l0"):
            continue
        module = importlib.import_module(f"rlhf_helpers.checks.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("check_") or function.__module__ != module.__name__:
                continue

            def recorder(exercise, attempt, reference, cases, *, hint, _name=f"{info.name}.{name}", **_):
                hints.setdefault(_name, []).append(hint)
                return attempt  # the attempt is never run: only the hints matter here

            monkeypatch.setattr(module, "check", recorder)
            # 01.6 loads cl100k's 100,000 ranks unless it is given some: an empty dict is never read
            extra = {"ranks": {}} if "ranks" in inspect.signature(function).parameters else {}
            function(lambda *args, **kwargs: None, **extra)
            assert f"{info.name}.{name}" in hints, f"{name} never called check()"

    assert len(hints) >= 25, f"found only {len(hints)} checks: {sorted(hints)}"
    problems = []
    for name, calls in sorted(hints.items()):
        for hint in calls:
            tiers = (hint,) if isinstance(hint, str) else tuple(hint)
            if len(tiers) < 2:
                problems.append(f"{name}: one hint, no tiers")
            leaks = [marker for marker in CODE_MARKERS if marker in tiers[0]]
            if leaks:
                problems.append(f"{name}: tier 1 shows code ({', '.join(map(repr, leaks))})")
    assert not problems, "\n".join(problems)
