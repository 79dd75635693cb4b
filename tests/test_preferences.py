"""Preference data of lesson 05: simulated comparisons, prompt-wise splits, trl's format, your labels."""

from __future__ import annotations

import json

import pytest

from rlhf_helpers import instructions as I
from rlhf_helpers import labeler as L
from rlhf_helpers import preferences as P

PROMPTS = [f"Continue this line about {topic}: Tell me in sadness,"
           for topic in ("love", "night", "friend", "death", "day")]


def _responses(prompt: str, k: int) -> list[str]:
    """Odd lines follow (they hold the topic word; gentle and fair add tone), even lines do not."""
    word = I.parse_prompt(prompt).topic
    return [f"Line {i}: the {word} is gentle and fair." if i % 2 else f"Line {i} has nothing to say."
            for i in range(k)]


def _comparisons(k: int = 4) -> list[P.Comparison]:
    return P.make_comparisons(PROMPTS, [_responses(p, k) for p in PROMPTS], L.SimulatedLabeler(tau=0.5))


# --------------------------------------------------------------------------------------------
# Simulated comparisons and splits.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_every_pair_of_each_prompt_is_compared_and_kept_together(k):
    comparisons = _comparisons(k)
    assert len(comparisons) == len(PROMPTS) * k * (k - 1) // 2
    # grouped: the prompts appear in order, each as one run of K(K-1)/2 comparisons
    runs = [c.prompt for i, c in enumerate(comparisons) if i == 0 or comparisons[i - 1].prompt != c.prompt]
    assert runs == PROMPTS
    for prompt in PROMPTS:
        mine = [c for c in comparisons if c.prompt == prompt]
        pairs = {frozenset((c.chosen, c.rejected)) for c in mine}
        assert len(pairs) == len(mine) == k * (k - 1) // 2
        assert all(c.chosen != c.rejected and c.source == "simulated" for c in mine)
        assert {r for c in mine for r in (c.chosen, c.rejected)} == set(_responses(prompt, k))


def test_identical_responses_are_not_compared():
    comparisons = P.make_comparisons(PROMPTS[:1], [["The love is here.", "The love is here.", "No."]],
                                     L.SimulatedLabeler())
    assert len(comparisons) == 2
    assert all(c.chosen != c.rejected for c in comparisons)


def test_a_careful_labeler_chooses_the_better_response():
    comparisons = P.make_comparisons(PROMPTS, [_responses(p, 4) for p in PROMPTS], L.SimulatedLabeler(tau=1e-3))
    differences = [L.gold_utility(c.prompt, c.chosen) - L.gold_utility(c.prompt, c.rejected) for c in comparisons]
    assert sum(d > 0 for d in differences) > len(comparisons) / 2  # gold ties (d == 0) are a coin toss
    assert all(d >= 0 for d in differences)
    assert P.gold_agreement(comparisons) == 1.0


def test_unended_responses_are_passed_to_the_labeler():
    same = "The love is gentle and fair."
    comparisons = P.make_comparisons(PROMPTS[:1], [[same, same + " "]], L.SimulatedLabeler(tau=1e-3),
                                     ended_per_prompt=[[False, True]])
    assert comparisons[0].chosen == same + " "  # the ended one wins


def test_make_comparisons_checks_that_prompts_and_responses_pair_up():
    with pytest.raises(ValueError, match="prompts"):
        P.make_comparisons(PROMPTS, [["a", "b"]], L.SimulatedLabeler())


def test_split_by_prompt_shares_no_prompt_and_loses_nothing():
    comparisons = _comparisons(4)
    train, heldout = P.split_by_prompt(comparisons, heldout_fraction=0.4, seed=0)
    assert {c.prompt for c in train}.isdisjoint({c.prompt for c in heldout})
    assert len({c.prompt for c in heldout}) == 2  # 40 % of 5 prompts
    assert sorted(map(repr, train + heldout)) == sorted(map(repr, comparisons))
    assert train == [c for c in comparisons if c in train]  # original order kept
    assert P.split_by_prompt(comparisons, 0.4, seed=0) == (train, heldout)  # reproducible
    seeds = {tuple(sorted({c.prompt for c in P.split_by_prompt(comparisons, 0.4, seed=s)[1]})) for s in range(10)}
    assert len(seeds) > 1  # the seed picks other prompts


def test_split_by_prompt_keeps_at_least_one_prompt_on_each_side():
    comparisons = _comparisons(3)
    train, heldout = P.split_by_prompt(comparisons, 0.01)
    assert len({c.prompt for c in heldout}) == 1
    train, heldout = P.split_by_prompt(comparisons, 0.99)
    assert len({c.prompt for c in train}) == 1
    with pytest.raises(ValueError, match="between 0 and 1"):
        P.split_by_prompt(comparisons, 0.0)
    with pytest.raises(ValueError, match="2 distinct prompts"):
        P.split_by_prompt([c for c in comparisons if c.prompt == PROMPTS[0]], 0.5)


# --------------------------------------------------------------------------------------------
# trl's conversational preference format.
# --------------------------------------------------------------------------------------------

def test_preference_dataset_is_in_trls_conversational_format():
    from trl.data_utils import is_conversational

    comparisons = _comparisons(3)
    dataset = P.to_preference_dataset(comparisons)
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == len(comparisons)
    row = dataset[0]
    assert is_conversational(row)
    assert row["prompt"] == [{"role": "user", "content": comparisons[0].prompt}]
    assert row["chosen"] == [{"role": "assistant", "content": comparisons[0].chosen}]
    assert row["rejected"] == [{"role": "assistant", "content": comparisons[0].rejected}]
    with pytest.raises(ValueError, match="No comparisons"):
        P.to_preference_dataset([])


def test_preference_dataset_renders_with_the_chat_template():
    """What trl does with each row: prompt + chosen through the chat template (here a minimal one)."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    from trl.data_utils import apply_chat_template

    row = P.to_preference_dataset(_comparisons(2))[0]
    rendered = apply_chat_template(row, tokenizer)
    assert rendered["prompt"].startswith("<user>Continue this line about love: Tell me in sadness,")
    assert rendered["chosen"].startswith("<assistant>") and rendered["rejected"].startswith("<assistant>")


# --------------------------------------------------------------------------------------------
# Your own labels.
# --------------------------------------------------------------------------------------------

def _record(choice: str, i: int = 0) -> dict:
    return {"prompt": PROMPTS[0], "a": f"The love is here {i}.", "b": f"No {i}.", "choice": choice}


def test_labels_path_is_in_the_artifacts_folder(isolated_artifacts):
    assert P.labels_path() == isolated_artifacts / "my_labels.jsonl"


def test_append_then_load(tmp_path):
    path = tmp_path / "deep" / "folder" / "labels.jsonl"  # folders are created
    for i, choice in enumerate(["a", "b", "tie", "skip", "a"]):
        P.append_label(path, _record(choice, i))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all("time" in json.loads(line) for line in lines)
    report = P.load_labels(path)
    assert (len(report.comparisons), report.ties, report.skips, report.problems) == (3, 1, 1, [])
    assert report.comparisons[0] == P.Comparison(PROMPTS[0], "The love is here 0.", "No 0.", "human")
    assert report.comparisons[1] == P.Comparison(PROMPTS[0], "No 1.", "The love is here 1.", "human")
    assert report.summary() == "3 comparisons, 1 ties, 1 skipped, 0 bad rows"


def test_append_keeps_a_given_time_and_odd_text(tmp_path):
    path = tmp_path / "labels.jsonl"
    odd = "Line one\u2028still line one, \"quoted\", ünïcode\nand a newline"
    P.append_label(path, {**_record("a"), "a": odd, "time": 4.5})
    assert json.loads(path.read_text(encoding="utf-8"))["time"] == 4.5
    assert P.load_labels(path).comparisons[0].chosen == odd


def test_append_never_rewrites_and_refuses_a_bad_record(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"# written by hand, not JSON\n")
    P.append_label(path, _record("a"))
    assert path.read_bytes().startswith(b"# written by hand, not JSON\n{")
    size = path.stat().st_size
    with pytest.raises(ValueError, match="choice"):
        P.append_label(path, _record("maybe"))
    with pytest.raises(ValueError, match="missing"):
        P.append_label(path, {"prompt": PROMPTS[0], "a": "x"})
    assert path.stat().st_size == size


def test_append_after_an_unfinished_line_starts_a_new_one(tmp_path):
    path = tmp_path / "labels.jsonl"
    P.append_label(path, _record("a", 0))
    with path.open("ab") as f:
        f.write(b'{"prompt": "cut off by a cra')  # a crash mid-write
    P.append_label(path, _record("b", 1))
    report = P.load_labels(path)
    assert len(report.comparisons) == 2
    assert len(report.problems) == 1 and report.problems[0].startswith("line 2: not valid JSON")


def test_bad_rows_are_reported_by_line_and_good_rows_still_load(tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [
        json.dumps(_record("a", 1)),                        # line 1: good
        "{not json",                                        # line 2
        json.dumps(_record("maybe", 3)),                    # line 3: unknown choice
        "",                                                 # line 4: blank, ignored
        json.dumps({"prompt": PROMPTS[0], "a": "x"}),       # line 5: missing b and choice
        json.dumps(["a", "list"]),                          # line 6: not an object
        json.dumps({**_record("b", 7), "a": 7}),            # line 7: a is not text
        json.dumps(_record("tie", 8)),                      # line 8: good, a tie
        json.dumps(_record("b", 9)),                        # line 9: good
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    before = path.read_bytes()
    report = P.load_labels(path)
    assert [c.chosen for c in report.comparisons] == ["The love is here 1.", "No 9."]
    assert report.ties == 1 and report.skips == 0
    assert len(report.problems) == 5
    line2, line3, line5, line6, line7 = report.problems
    assert line2.startswith("line 2: not valid JSON")
    assert line3.startswith("line 3: ") and "'maybe'" in line3
    assert line5.startswith("line 5: ") and "'b'" in line5 and "'choice'" in line5
    assert line6.startswith("line 6: ") and "object" in line6
    assert line7.startswith("line 7: ") and "'a'" in line7
    assert path.read_bytes() == before  # loading never rewrites the file


def test_a_missing_labels_file_is_empty_and_not_created(tmp_path):
    path = tmp_path / "nothing-yet.jsonl"
    report = P.load_labels(path)
    assert (report.comparisons, report.ties, report.skips, report.problems) == ([], 0, 0, [])
    assert not path.exists()
