"""Instruction tasks: the demonstrations of lesson 03 and the check of whether a response follows.

A base model only continues text. To make it *follow instructions* InstructGPT first shows it
demonstrations: a prompt a user might write and the response a person would give. Supervised
fine-tuning (SFT) trains on those pairs, rendered with the chat template.

We have no people writing demonstrations, so we build them from lines of the corpus, cut after
three to five words, in two families:

``continue``  ``Continue this line: Then say at once what``     ->  "thou dost know in this."
``about``     ``Continue this line about love: Tell me in sadness,``  ->  "who is that you love?"

Each family also has a *programmatic check*: ``follows(prompt, response)`` says whether any
response (a demonstration, or text the model wrote) obeys its instruction. A response follows
when it is one line of sane length, carries on from the opening instead of repeating it, is made
of the corpus's words (at least ``MIN_REAL_SHARE`` of them occur in the training text, so
invented words such as "tading" or "cretful" fail it), and, for ``about``, contains the topic
word. That is what lets the course *measure* alignment: the instruction-following rate before and
after SFT, and the part of the gold utility of lesson 05 that rewards doing what was asked.

The topics are the twelve words of ``TOPICS``, common in every play. An earlier version of the
course asked for a line about *any* word and held some topics out; a model of a million
parameters never learned to copy an unseen word from the prompt into its answer (0 % after SFT,
even at five times the steps), so the family taught nothing. Now a topic is one of a few words the
model meets in training, and what is new at evaluation time is the opening.

Two splits, which share no prompt:

- ``train``:   tasks built from the training split of the corpus;
- ``heldout``: tasks built from the validation split, which the base model never saw: every
  opening is new, and an opening that also starts a training line is dropped.

What is left out: real human demonstrations, multi-turn chats, system prompts, and any check of
meaning (a line "about" love only has to contain the word).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

from rlhf_helpers import words

SPLITS = ("train", "heldout")
FAMILIES = ("about", "continue")

# Twelve words common in every play, so each has held-out lines as well as training lines.
TOPICS = ("love", "night", "heart", "day", "time", "death", "friend", "heaven", "eyes", "father", "life", "blood")

# A response of sane length: long enough to say something, short enough to be one line.
MIN_CHARS, MAX_CHARS = 10, 120
# The share of a response's words that must occur in the training text (see ``words.py``).
MIN_REAL_SHARE = 0.8

# At most this many ``about`` tasks per topic, so that "love", the commonest, does not crowd out
# the rest; the ``continue`` family gets as many tasks as the ``about`` family.
PER_TOPIC = {"train": 150, "heldout": 25}

# A "good" line: starts with a capital, ends a sentence, only letters and plain punctuation.
_GOOD_LINE = re.compile(r"^[A-Z][A-Za-z ,.;:!?'\-]*[.!?]$")
_SHOUTED = re.compile(r"\b[A-Z]{2,}\b")  # names and titles in capitals: "HAMLET", "SCENE II"
_LINE_CHARS = (25, 70)
_OPENING_WORDS = (3, 4, 5)
_WORD = re.compile(r"[a-z']+")  # a word of a lower-cased text, apostrophes kept ("o'er")

_ABOUT = re.compile(r"^Continue this line about (?P<topic>[A-Za-z'\-]+): (?P<opening>\S.*)$", re.IGNORECASE)
_CONTINUE = re.compile(r"^Continue this line: (?P<opening>\S.*)$", re.IGNORECASE)


class Instruction(NamedTuple):
    """What a prompt asks: its family, the opening to carry on from, and the topic word
    (``""`` for the ``continue`` family)."""

    family: str
    opening: str
    topic: str = ""


@dataclass(frozen=True)
class Task:
    """One demonstration: the prompt, the response a person would give, and what the check needs."""

    family: str
    prompt: str
    response: str
    opening: str
    topic: str = ""


# --------------------------------------------------------------------------------------------
# Prompts: writing them, and reading them back.
# --------------------------------------------------------------------------------------------

def about_prompt(topic: str, opening: str) -> str:
    """``("love", "Tell me in sadness,")`` -> ``"Continue this line about love: Tell me in sadness,"``"""
    return f"Continue this line about {topic}: {opening}"


def continue_prompt(opening: str) -> str:
    """``"Now is the winter"`` -> ``"Continue this line: Now is the winter"``"""
    return f"Continue this line: {opening}"


def parse_prompt(prompt: str) -> Instruction:
    """Recover what ``prompt`` asks; ``ValueError`` for any other format.

    >>> parse_prompt("Continue this line about love: Tell me in sadness,")
    Instruction(family='about', opening='Tell me in sadness,', topic='love')
    >>> parse_prompt("Continue this line: Now is the winter")
    Instruction(family='continue', opening='Now is the winter', topic='')
    """
    text = prompt.strip()
    if match := _ABOUT.match(text):
        return Instruction("about", match["opening"].strip(), match["topic"].lower())
    if match := _CONTINUE.match(text):
        return Instruction("continue", match["opening"].strip())
    raise ValueError(
        f"Not a course instruction: {prompt!r}. Expected 'Continue this line: <opening words>' "
        "or 'Continue this line about <topic>: <opening words>'."
    )


# --------------------------------------------------------------------------------------------
# The check: does a response obey its instruction?
# --------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: "O, my lord!" -> ["o", "my", "lord"]."""
    return _WORD.findall(text.lower())


def contains_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive: "love" is in "Love's labour" but not in "lovely"."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, re.IGNORECASE) is not None


def is_one_sane_line(response: str) -> bool:
    """Form shared by every family: one line of ``MIN_CHARS`` to ``MAX_CHARS`` characters."""
    text = response.strip()
    return "\n" not in text and "\r" not in text and MIN_CHARS <= len(text) <= MAX_CHARS


def continues(opening: str, response: str) -> bool:
    """A continuation adds to the opening: it does not start by echoing it, and says something new.

    After "Tomorrow, and tomorrow," the response "and tomorrow creeps in this petty pace" passes;
    "Tomorrow, and tomorrow, and so on" (an echo) and "and tomorrow, and tomorrow" (nothing but
    the opening's words) do not.
    """
    opening_words, response_words = _words(opening), _words(response)
    echoes = response_words[: len(opening_words)] == opening_words
    return bool(response_words) and not echoes and not set(response_words) <= set(opening_words)


def in_real_words(response: str) -> bool:
    """At least ``MIN_REAL_SHARE`` of the response's words occur in the training text.

    "of our discontent" passes; "of a tading." (one word in three invented) does not, nor does a
    response with no word at all. Words are counted as in ``words.real_word_rate``.
    """
    flags = words.real_flags(response, words.training_vocabulary())
    return bool(flags) and sum(flags) >= MIN_REAL_SHARE * len(flags)


def follows(prompt: str, response: str) -> bool:
    """Whether ``response`` obeys the instruction in ``prompt``.

    Every family: one line of sane length (``is_one_sane_line``) that carries on from the opening
    instead of repeating it (``continues``), in the corpus's words (``in_real_words``). ``about``
    also needs the topic word (whole word, any case). A prompt in neither format raises
    ``ValueError``. Leading and trailing whitespace is ignored, as a model's output often ends with
    a newline.
    """
    family, opening, topic = parse_prompt(prompt)
    if not (is_one_sane_line(response) and continues(opening, response) and in_real_words(response)):
        return False
    return family == "continue" or contains_word(response, topic)


def to_messages(task: Task) -> list[dict[str, str]]:
    """The task as a chat, ready for ``tokenizer.apply_chat_template``."""
    return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.response}]


# --------------------------------------------------------------------------------------------
# Lines of the corpus, and the tasks built from them.
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _split_texts() -> tuple[str, str]:
    """The corpus split exactly as the tokenizer and the base model see it."""
    from rlhf_helpers.data import load_corpus, train_val_split

    return train_val_split(load_corpus(), val_fraction=0.1)


def is_good_line(line: str) -> bool:
    """A line worth showing as a demonstration: a whole sentence-ending verse or prose line."""
    return (
        _LINE_CHARS[0] <= len(line) <= _LINE_CHARS[1]
        and _GOOD_LINE.match(line) is not None
        and _SHOUTED.search(line) is None
        and "--" not in line
    )


def _speech_lines(text: str) -> list[str]:
    """Every line of every speech, without the ``NAME:`` line that opens each one."""
    return [line for speech in text.split("\n\n") for line in speech.split("\n")[1:]]


@functools.lru_cache(maxsize=None)
def lines(split: str) -> tuple[str, ...]:
    """The good lines of one split, without duplicates, in corpus order.

    Held-out lines that also occur in the training text ("Good morrow, my lord.") are dropped,
    so every held-out response is new to a model trained on the training split.
    """
    _check_split(split)
    train_text, val_text = _split_texts()
    if split == "train":
        return tuple(dict.fromkeys(line for line in _speech_lines(train_text) if is_good_line(line)))
    seen = set(lines("train"))
    return tuple(line for line in dict.fromkeys(_speech_lines(val_text)) if is_good_line(line) and line not in seen)


@functools.lru_cache(maxsize=1)
def _training_openings() -> frozenset[str]:
    """Every opening a training task could use, so no held-out prompt can repeat one."""
    return frozenset(" ".join(line.split()[:k]) for line in lines("train") for k in _OPENING_WORDS)


def _cuts(line: str, rng: random.Random) -> list[tuple[str, str]]:
    """The ways to cut a line after 3 to 5 words into (opening, rest) that leave a good rest,
    in random order."""
    words_ = line.split()
    ks = [k for k in _OPENING_WORDS if len(words_) - k >= 2 and len(" ".join(words_[k:])) >= MIN_CHARS]
    rng.shuffle(ks)
    cuts = [(" ".join(words_[:k]), " ".join(words_[k:])) for k in ks]
    return [(opening, rest) for opening, rest in cuts if continues(opening, rest)]


def _about_task(line: str, rng: random.Random, counts: dict[str, int], cap: int) -> Task | None:
    """An ``about`` task from ``line``: a cut whose rest, and not its opening, holds a topic that
    still has room under ``cap``; None if there is none."""
    for opening, rest in _cuts(line, rng):
        for topic in TOPICS:
            if counts[topic] < cap and contains_word(rest, topic) and not contains_word(opening, topic):
                return Task("about", about_prompt(topic, opening), rest, opening, topic)
    return None


def _tasks_from(split: str, pool: list[str], rng: random.Random) -> tuple[list[Task], list[Task]]:
    """``(about, continue)`` tasks, one per line of ``pool``: a line with a topic word after its
    cut serves ``about`` while its topic has room, any other line ``continue``. A task whose
    response does not follow its own prompt (a held-out line with a word the training text lacks)
    or whose opening could start a training line (held out only) is skipped."""
    counts = dict.fromkeys(TOPICS, 0)
    about, cont = [], []
    for line in pool:
        task = _about_task(line, rng, counts, PER_TOPIC[split])
        if task is None:
            cuts = _cuts(line, rng)
            task = Task("continue", continue_prompt(cuts[0][0]), cuts[0][1], cuts[0][0]) if cuts else None
        if task is None or not follows(task.prompt, task.response):
            continue
        if split == "heldout" and task.opening in _training_openings():
            continue
        if task.family == "about":
            counts[task.topic] += 1
            about.append(task)
        else:
            cont.append(task)
    return about, cont


@functools.lru_cache(maxsize=8)
def _tasks(split: str, seed: int) -> tuple[Task, ...]:
    """All tasks of a split, the two families interleaved and equally many, so any even prefix
    is balanced."""
    rng = random.Random(f"{split}-{seed}")  # a private generator: the global one is never touched
    pool = list(lines(split))
    rng.shuffle(pool)
    about, cont = _tasks_from(split, pool, rng)
    return tuple(task for pair in zip(about, cont) for task in pair)


def make_tasks(split: str, n: int | None = None, seed: int = 0) -> list[Task]:
    """The demonstrations of ``split`` ("train" or "heldout"), the same on every call.

    ``n`` keeps the first ``n`` (families alternate, so any even ``n`` is balanced); ``seed``
    picks other lines and orders. The two splits share no prompt, whatever the seeds. Building
    every task takes a few seconds once the corpus is cached.
    """
    _check_split(split)
    tasks = _tasks(split, seed)
    if n is None:
        return list(tasks)
    if not 0 <= n <= len(tasks):
        raise ValueError(f"Asked for {n} {split} tasks, but there are {len(tasks)}.")
    return list(tasks[:n])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
