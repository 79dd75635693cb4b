"""The instruction tasks of lesson 03: demonstrations built from the corpus and the ``follows`` check."""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from rlhf_helpers import instructions as I


@pytest.fixture(scope="module", autouse=True)
def module_artifacts(tmp_path_factory):
    """One artifact folder for this module: the corpus and tokenizer are built once, not per test."""
    folder = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLHF_ARTIFACTS", str(folder))
        yield folder


@pytest.fixture(scope="module")
def train(module_artifacts):
    return I.make_tasks("train")


@pytest.fixture(scope="module")
def heldout(module_artifacts):
    return I.make_tasks("heldout")


@pytest.fixture(scope="module")
def tok(module_artifacts):
    from rlhf_helpers.tokenizers import course_tokenizer

    return course_tokenizer()


def fingerprint(tasks) -> str:
    return hashlib.sha256(repr(tasks).encode()).hexdigest()


def clear_caches() -> None:
    """Forget every task and line built so far (the corpus text itself stays cached)."""
    for cached in (I._tasks, I.lines, I._training_openings):
        cached.cache_clear()


# --------------------------------------------------------------------------------------------
# The generated tasks
# --------------------------------------------------------------------------------------------

def test_enough_tasks_in_both_families(train, heldout):
    for tasks, least in ((train, 2000), (heldout, 200)):
        families = Counter(t.family for t in tasks)
        assert set(families) == set(I.FAMILIES)
        assert len(tasks) >= least
        assert families["about"] == families["continue"], families


def test_every_topic_has_demonstrations(train, heldout):
    for split, tasks in (("train", train), ("heldout", heldout)):
        per_topic = Counter(t.argument for t in tasks if t.family == "about")
        for topic in I.topics(split):
            assert per_topic[I.topic_word(topic)] >= 8, (split, topic)
            assert per_topic[I.topic_word(topic)] <= I.PER_TOPIC[split]


def test_every_demonstration_follows_its_instruction(train, heldout):
    for task in train + heldout:
        assert I.follows(task.prompt, task.response), task
        assert I.parse_prompt(task.prompt) == (task.family, task.argument), task
    assert I.instruction_following_rate([t.prompt for t in heldout], [t.response for t in heldout]) == 1.0


def test_demonstrations_are_single_corpus_lines(train, heldout):
    for split, tasks in (("train", train), ("heldout", heldout)):
        corpus_lines = set(I.lines(split))
        for task in tasks:
            line = task.response if task.family == "about" else f"{task.argument} {task.response}"
            assert line in corpus_lines, (split, task)


def test_train_and_heldout_share_no_prompt(train, heldout):
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    # whatever the seeds
    assert not {t.prompt for t in I.make_tasks("train", seed=1)} & {t.prompt for t in I.make_tasks("heldout", seed=2)}


def test_heldout_responses_are_unseen_text(train, heldout):
    """Held-out tasks come from the validation split, minus any line the training text also has."""
    assert not set(I.lines("train")) & set(I.lines("heldout"))
    assert not {t.response for t in train} & {t.response for t in heldout if t.family == "about"}


def test_heldout_topics_are_new_yet_known_words(module_artifacts):
    """No held-out topic is a training topic (not even a plural of one), yet each is common text."""
    train_words = {I.topic_word(t).lower() for t in I.TRAIN_TOPICS}
    heldout_words = {I.topic_word(t).lower() for t in I.HELDOUT_TOPICS}
    for new in heldout_words:
        assert not any(old.startswith(new) or new.startswith(old) for old in train_words), new
    lines_with = Counter(w for line in I.lines("train") for w in set(re.findall(r"[a-z]+", line.lower())))
    for word in heldout_words:
        assert lines_with[word] >= 20, f"{word!r} is in only {lines_with[word]} training lines"


def test_same_tasks_on_every_call_and_no_global_randomness(train):
    state = random.getstate()
    clear_caches()
    rebuilt = I.make_tasks("train")
    assert random.getstate() == state, "building tasks must not touch the global random generator"
    assert rebuilt == train
    assert I.make_tasks("train", seed=1) != train
    assert sorted(I.make_tasks("train", seed=1), key=repr) != sorted(train, key=repr), "a seed picks other lines"


def test_same_tasks_in_another_process(train, heldout, module_artifacts):
    """No dependence on Python's per-process string hashing."""
    code = (
        "import hashlib; from rlhf_helpers import instructions as I; "
        "print(hashlib.sha256(repr(I.make_tasks('train') + I.make_tasks('heldout')).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "RLHF_ARTIFACTS": str(module_artifacts)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == fingerprint(train + heldout)  # after any build note


def test_n_keeps_a_balanced_prefix(train):
    first = I.make_tasks("train", n=10)
    assert first == train[:10]
    assert Counter(t.family for t in first) == {"about": 5, "continue": 5}
    assert I.make_tasks("train", n=0) == []
    with pytest.raises(ValueError, match="there are"):
        I.make_tasks("heldout", n=10**6)
    with pytest.raises(ValueError, match="Unknown split"):
        I.make_tasks("test")


def test_rendered_chats_fit_the_context(tok, train, heldout):
    chats = [I.to_messages(t) for t in train + heldout]
    lengths = sorted(len(ids) for ids in tok.apply_chat_template(chats, tokenize=True, return_dict=True)["input_ids"])
    p99 = lengths[int(0.99 * (len(lengths) - 1))]
    print(f"chat tokens: median {lengths[len(lengths) // 2]}, p99 {p99}, max {lengths[-1]}")
    assert p99 < 100
    assert lengths[-1] < 128, "every demonstration must fit the course GPT's block size"


def test_to_messages_renders_chatml(tok):
    task = I.Task("about", "Write a line about love.", "Love is a smoke made with the fume of sighs.", "love")
    assert I.to_messages(task) == [
        {"role": "user", "content": "Write a line about love."},
        {"role": "assistant", "content": "Love is a smoke made with the fume of sighs."},
    ]
    assert tok.apply_chat_template(I.to_messages(task), tokenize=False) == (
        "<|im_start|>user\nWrite a line about love.<|im_end|>\n"
        "<|im_start|>assistant\nLove is a smoke made with the fume of sighs.<|im_end|>\n"
    )


# --------------------------------------------------------------------------------------------
# Parsing prompts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", I.TOPICS)
def test_about_prompts_round_trip(topic):
    assert I.parse_prompt(I.about_prompt(topic)) == ("about", I.topic_word(topic))


@pytest.mark.parametrize("opening", ["Now is the winter", "O, what a", "'Tis time must do.", "Fate, show thy force:"])
def test_continue_prompts_round_trip(opening):
    assert I.parse_prompt(I.continue_prompt(opening)) == ("continue", opening)


def test_parse_prompt_tolerates_whitespace():
    assert I.parse_prompt("  Write a line about love.\n") == ("about", "love")


@pytest.mark.parametrize("prompt", [
    "", "Write a poem about love.", "Write a line about love", "Write a line about two things.",
    "Continue this line:", "Continue this line:   ", "Tell me a story.", "Continue: Now is the winter",
])
def test_unknown_prompts_raise(prompt):
    with pytest.raises(ValueError, match="Not a course instruction"):
        I.parse_prompt(prompt)
    with pytest.raises(ValueError, match="Not a course instruction"):
        I.follows(prompt, "Love is a smoke made with the fume of sighs.")


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------

ABOUT_LOVE = "Write a line about love."
ABOUT_KING = "Write a line about the king."


@pytest.mark.parametrize("response", [
    "Love is a smoke made with the fume of sighs.",
    "LOVE, LOVE, nothing but love, still more!",
    "Love's labour's lost, and all for nothing.",
    "She loves me not; yet love is all I have.\n",  # a trailing newline is not a second line
    "   What love is this, that comes so late?   ",
    "A true-love knot of words.",
])
def test_about_accepts_lines_with_the_topic_word(response):
    assert I.follows(ABOUT_LOVE, response)


@pytest.mark.parametrize("response, why", [
    ("The fume of sighs is a smoke.", "no topic word"),
    ("How lovely is the morning light!", "'lovely' is not the word 'love'"),
    ("She loves me, she loves me not.", "'loves' is not the word 'love'"),
    ("Gloves and lovers and beloved ones.", "only substrings"),
    ("Love is a smoke made with\nthe fume of sighs.", "two lines"),
    ("", "empty"),
    ("   \n  ", "blank"),
    ("Love!", "too short"),
    ("Love " + "and love " * 20, "too long"),
])
def test_about_rejects(response, why):
    assert not I.follows(ABOUT_LOVE, response), why


def test_about_checks_the_word_not_the_article():
    assert I.follows(ABOUT_KING, "God save the King, and all his men.")
    assert not I.follows(ABOUT_KING, "The queen is the mother of the realm.")


OPENING = "Now is the winter"
CONTINUE = f"Continue this line: {OPENING}"


@pytest.mark.parametrize("response", [
    "of our discontent",
    "of our discontent\n",
    "Made glorious summer by this sun of York.",
])
def test_continue_accepts_a_continuation(response):
    assert I.follows(CONTINUE, response)


@pytest.mark.parametrize("response, why", [
    ("", "empty"),
    ("Now is the winter", "repeats the opening (also too short to say anything)"),
    ("Now is the winter of our discontent", "starts by echoing the opening"),
    ("now, is the WINTER; of our discontent", "echo, whatever the case and punctuation"),
    ("the winter is now, the winter is now", "only the opening's words"),
    ("of our discontent\nMade glorious summer", "two lines"),
    ("of our discontent " * 10, "too long"),
    ("of York.", "too short"),
])
def test_continue_rejects(response, why):
    assert not I.follows(CONTINUE, response), why


def test_instruction_following_rate():
    prompts = [ABOUT_LOVE, ABOUT_LOVE, CONTINUE, CONTINUE]
    responses = ["Love is a smoke made with the fume of sighs.", "A lovely day.", "of our discontent", ""]
    assert I.instruction_following_rate(prompts, responses) == 0.5
    with pytest.raises(ValueError, match="pair up"):
        I.instruction_following_rate(prompts, responses[:3])
    with pytest.raises(ValueError, match="No prompts"):
        I.instruction_following_rate([], [])


def test_rates_by_family_splits_the_rate():
    tasks = [I.Task("about", "Write a line about love.", "", "love"),
             I.Task("about", "Write a line about death.", "", "death"),
             I.Task("continue", "Continue this line: Now is the winter", "", "Now is the winter")]
    responses = ["My love is like a red rose.", "No word of that here at all.", "of our discontent."]
    assert I.rates_by_family(tasks, responses) == {"about": 0.5, "continue": 1.0, "all": 2 / 3}
    assert I.rates_by_family(tasks[:2], responses[:2]) == {"about": 0.5, "all": 0.5}
    with pytest.raises(ValueError, match="pair up"):
        I.rates_by_family(tasks, responses[:2])
