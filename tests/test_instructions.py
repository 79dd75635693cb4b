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
    for tasks, least in ((train, 2000), (heldout, 400)):
        families = Counter(t.family for t in tasks)
        assert set(families) == set(I.FAMILIES)
        assert len(tasks) >= least
        assert families["about"] == families["continue"], families


def test_every_topic_has_demonstrations_and_none_crowds_out_the_rest(train, heldout):
    for split, tasks in (("train", train), ("heldout", heldout)):
        per_topic = Counter(t.topic for t in tasks if t.family == "about")
        assert set(per_topic) == set(I.TOPICS), split
        assert min(per_topic.values()) >= 8, (split, per_topic)
        assert max(per_topic.values()) <= I.PER_TOPIC[split], (split, per_topic)


def test_every_demonstration_follows_its_instruction(train, heldout):
    for task in train + heldout:
        assert I.follows(task.prompt, task.response), task
        assert I.parse_prompt(task.prompt) == (task.family, task.opening, task.topic), task


def test_about_tasks_ask_for_a_word_that_only_the_answer_holds(train, heldout):
    for task in train + heldout:
        if task.family == "about":
            assert I.contains_word(task.response, task.topic) and not I.contains_word(task.opening, task.topic)
        else:
            assert task.topic == ""


def test_demonstrations_are_single_corpus_lines(train, heldout):
    for split, tasks in (("train", train), ("heldout", heldout)):
        corpus_lines = set(I.lines(split))
        for task in tasks:
            assert f"{task.opening} {task.response}" in corpus_lines, (split, task)


def test_train_and_heldout_share_no_prompt_and_no_opening(train, heldout):
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    assert not {t.opening for t in train} & {t.opening for t in heldout}
    # whatever the seeds
    assert not {t.prompt for t in I.make_tasks("train", seed=1)} & {t.prompt for t in I.make_tasks("heldout", seed=2)}


def test_heldout_lines_are_unseen_text(train, heldout):
    """Held-out tasks come from the validation split, minus any line the training text also has."""
    assert not set(I.lines("train")) & set(I.lines("heldout"))
    whole = lambda tasks: {f"{t.opening} {t.response}" for t in tasks}
    assert not whole(train) & whole(heldout)  # a short rest ("I am in love.") may end lines of both


def test_topics_are_common_in_both_splits(module_artifacts):
    lines_with = {split: Counter(w for line in I.lines(split) for w in set(re.findall(r"[a-z]+", line.lower())))
                  for split in I.SPLITS}
    for topic in I.TOPICS:
        assert lines_with["train"][topic] >= 80 and lines_with["heldout"][topic] >= 10, topic


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


ABOUT_LOVE = "Continue this line about love: Tell me in sadness,"
LOVE_TASK = I.Task("about", ABOUT_LOVE, "who is that you love?", "Tell me in sadness,", "love")


def test_to_messages_renders_chatml(tok):
    assert I.to_messages(LOVE_TASK) == [
        {"role": "user", "content": ABOUT_LOVE},
        {"role": "assistant", "content": "who is that you love?"},
    ]
    assert tok.apply_chat_template(I.to_messages(LOVE_TASK), tokenize=False) == (
        f"<|im_start|>user\n{ABOUT_LOVE}<|im_end|>\n"
        "<|im_start|>assistant\nwho is that you love?<|im_end|>\n"
    )


# --------------------------------------------------------------------------------------------
# Parsing prompts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", I.TOPICS)
def test_about_prompts_round_trip(topic):
    assert I.parse_prompt(I.about_prompt(topic, "Now is the winter")) == ("about", "Now is the winter", topic)


@pytest.mark.parametrize("opening", ["Now is the winter", "O, what a", "'Tis time must do.", "Fate, show thy force:"])
def test_continue_prompts_round_trip(opening):
    assert I.parse_prompt(I.continue_prompt(opening)) == ("continue", opening, "")


def test_parse_prompt_tolerates_whitespace_and_case():
    assert I.parse_prompt(f"  {ABOUT_LOVE}\n") == ("about", "Tell me in sadness,", "love")
    assert I.parse_prompt("Continue this line about Love: Tell me") == ("about", "Tell me", "love")


@pytest.mark.parametrize("prompt", [
    "", "Write a line about love.", "Continue this line about love:", "Continue this line about two things: Now",
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

@pytest.mark.parametrize("response", [
    "who is that you love?",
    "LOVE, LOVE, nothing but love, still more!",
    "my love's labour's lost, and all for nothing.",
    "she loves me not; yet love is all I have.\n",  # a trailing newline is not a second line
    "   what love is this, that comes so late?   ",
])
def test_about_accepts_continuations_with_the_topic_word(response):
    assert I.follows(ABOUT_LOVE, response)


@pytest.mark.parametrize("response, why", [
    ("the fume of sighs is a smoke.", "no topic word"),
    ("how lovely is the morning light!", "'lovely' is not the word 'love'"),
    ("she loves me, she loves me not.", "'loves' is not the word 'love'"),
    ("Tell me in sadness, who is that you love?", "echoes the opening"),
    ("who is that you love?\nSpeak.", "two lines"),
    ("", "empty"),
    ("love!", "too short"),
    ("love " + "and love " * 20, "too long"),
    ("my love is cruchow and cretful.", "two invented words in six"),
])
def test_about_rejects(response, why):
    assert not I.follows(ABOUT_LOVE, response), why


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
    ("of a tading cruchow.", "invented words: two of four"),
    ("12345 6789 !!!", "no word at all"),
])
def test_continue_rejects(response, why):
    assert not I.follows(CONTINUE, response), why


def test_in_real_words_allows_one_invented_word_in_five():
    assert I.in_real_words("of our discontent and cretful")  # 4 of 5: exactly the bar
    assert not I.in_real_words("of our cretful discontent")  # 3 of 4
    assert I.in_real_words("o'er the hills, love's labour")  # fragments ("s") do not count
    assert not I.in_real_words("...")
