"""Instruction tasks: the demonstrations of lesson 03 and the check of whether a response follows.

A base model only continues text. To make it *follow instructions* InstructGPT first shows it
demonstrations: a prompt a user might write and the response a person would give. Supervised
fine-tuning (SFT) trains on those pairs, rendered with the chat template.

We have no people writing demonstrations, so we build them from the corpus, in two families:

``about``     ``Write a line about love.``                  ->  a real line that contains "love"
``continue``  ``Continue this line: Then say at once what``  ->  the rest: "thou dost know in this."

Each family also has a *programmatic check*: ``follows(prompt, response)`` says whether any
response (a demonstration, or text the model wrote) obeys its instruction. That is what lets the
course *measure* alignment: the instruction-following rate before and after SFT, and the part of
the gold utility of lesson 05 that rewards doing what was asked.

Two splits, which share no prompt:

- ``train``:   tasks built from the training split of the corpus, on the topics ``TRAIN_TOPICS``;
- ``heldout``: tasks built from the validation split, on the topics ``HELDOUT_TOPICS``, which
  never occur in a training prompt. So the held-out rate measures whether the model learned the
  *instruction* ("put this word in your line") rather than memorised which lines go with which
  topic. Held-out ``continue`` openings come from lines the model never saw in training, and an
  opening that also starts a training line is dropped.

What is left out: real human demonstrations, multi-turn chats, system prompts, and any check of
meaning (a line "about" love only has to contain the word).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

SPLITS = ("train", "heldout")
FAMILIES = ("about", "continue")

# A topic is shown in the prompt as a phrase ("the king") and checked by its last word ("king").
# Count nouns carry an article so the prompt reads as English. Every word is common in the plays.
TRAIN_TOPICS = (
    "love", "death", "life", "grace", "peace", "honour", "news", "hope", "faith", "shame",
    "truth", "fortune", "joy", "justice", "reason", "mercy", "war", "sorrow", "revenge", "music",
    "grief", "patience", "power", "money", "pity", "trust", "youth", "age", "health", "nature",
    "beauty", "virtue", "pride", "danger", "treason", "strength", "silence", "glory", "anger",
    "liberty", "courage", "valour", "victory", "wisdom", "vengeance", "marriage", "woe", "wit",
    "fire", "earth", "England", "France", "Rome", "home", "words", "women", "kings", "enemies",
    "soldiers", "gods", "lips", "fools",
    "the king", "the queen", "the crown", "the sword", "the sea", "the sun", "the moon",
    "the tongue", "the prince", "the duke", "the mind", "a father", "a mother", "a daughter",
    "a brother", "a wife", "a woman", "a villain",
)
HELDOUT_TOPICS = (
    "night", "time", "heaven", "fear", "blood", "eyes", "murder", "hate", "gold", "sleep",
    "hell", "tears", "the heart", "the soul", "the world", "a friend",
)
TOPICS = TRAIN_TOPICS + HELDOUT_TOPICS

# A response of sane length: long enough to say something, short enough to be one line.
MIN_CHARS, MAX_CHARS = 10, 120

# How many demonstrations per topic (train) and per held-out topic; the continue family gets as
# many tasks as the about family, so the two are balanced.
PER_TOPIC = {"train": 40, "heldout": 15}

# A "good" line: starts with a capital, ends a sentence, only letters and plain punctuation.
_GOOD_LINE = re.compile(r"^[A-Z][A-Za-z ,.;:!?'\-]*[.!?]$")
_SHOUTED = re.compile(r"\b[A-Z]{2,}\b")  # names and titles in capitals: "HAMLET", "SCENE II"
_LINE_CHARS = (25, 70)
_OPENING_WORDS = (3, 4, 5)
_WORD = re.compile(r"[a-z']+")  # a word of a lower-cased text, apostrophes kept ("o'er")
_LETTERS = re.compile(r"[a-z]+")  # a run of letters: what ``contains_word`` treats as a word

_ABOUT = re.compile(r"^Write a line about (?:(?:the|a|an) )?(?P<topic>[A-Za-z'\-]+)\.$", re.IGNORECASE)
_CONTINUE = re.compile(r"^Continue this line: (?P<opening>\S.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Task:
    """One demonstration: the prompt, the response a person would give, and what the check needs.

    ``argument`` is what ``parse_prompt`` recovers from the prompt: the topic word for ``about``,
    the opening words for ``continue``.
    """

    family: str
    prompt: str
    response: str
    argument: str


# --------------------------------------------------------------------------------------------
# Prompts: writing them, and reading them back.
# --------------------------------------------------------------------------------------------

def topic_word(topic: str) -> str:
    """The word a line must contain to be about ``topic``: ``"the king"`` -> ``"king"``."""
    return topic.split()[-1]


def about_prompt(topic: str) -> str:
    """``"the king"`` -> ``"Write a line about the king."``"""
    return f"Write a line about {topic}."


def continue_prompt(opening: str) -> str:
    """``"Now is the winter"`` -> ``"Continue this line: Now is the winter"``"""
    return f"Continue this line: {opening}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """Recover ``(family, argument)`` from a prompt; ``ValueError`` for any other format.

    >>> parse_prompt("Write a line about the king.")
    ('about', 'king')
    >>> parse_prompt("Continue this line: Now is the winter")
    ('continue', 'Now is the winter')
    """
    text = prompt.strip()
    if match := _ABOUT.match(text):
        return "about", match["topic"]
    if match := _CONTINUE.match(text):
        return "continue", match["opening"].strip()
    raise ValueError(
        f"Not a course instruction: {prompt!r}. Expected 'Write a line about <topic>.' "
        "or 'Continue this line: <opening words>'."
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


def follows(prompt: str, response: str) -> bool:
    """Whether ``response`` obeys the instruction in ``prompt``.

    ``about``: one line of sane length that contains the topic word (whole word, any case).
    ``continue``: one line of sane length that carries on from the opening instead of repeating it.
    A prompt in neither format raises ``ValueError``. Leading and trailing whitespace is ignored,
    as a model's output often ends with a newline.
    """
    family, argument = parse_prompt(prompt)
    if not is_one_sane_line(response):
        return False
    if family == "about":
        return contains_word(response, argument)
    return continues(argument, response)


def instruction_following_rate(prompts: list[str], responses: list[str]) -> float:
    """The fraction of responses that follow their prompts: the course's measure of alignment."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: they must pair up.")
    if not prompts:
        raise ValueError("No prompts to rate.")
    return sum(follows(p, r) for p, r in zip(prompts, responses)) / len(prompts)


def rates_by_family(tasks: list[Task], responses: list[str]) -> dict[str, float]:
    """The instruction-following rate of each task family, plus ``"all"``: where does a model fail?"""
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses: they must pair up.")
    rates = {}
    for family in FAMILIES:
        pairs = [(t.prompt, r) for t, r in zip(tasks, responses) if t.family == family]
        if pairs:
            rates[family] = instruction_following_rate(*map(list, zip(*pairs)))
    rates["all"] = instruction_following_rate([t.prompt for t in tasks], responses)
    return rates


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


def topics(split: str) -> tuple[str, ...]:
    """The topics whose ``about`` prompts belong to ``split``."""
    _check_split(split)
    return TRAIN_TOPICS if split == "train" else HELDOUT_TOPICS


def _about_tasks(split: str, pool: list[str], rng: random.Random) -> list[Task]:
    """Up to ``PER_TOPIC[split]`` lines per topic, in pool order; each line serves one task."""
    wanted = {topic_word(topic).lower() for topic in topics(split)}
    by_word: dict[str, list[str]] = {word: [] for word in wanted}  # word -> lines that contain it
    for line in pool:
        for word in wanted.intersection(_LETTERS.findall(line.lower())):
            by_word[word].append(line)
    used: set[str] = set()
    tasks = []
    for topic in topics(split):
        word = topic_word(topic)
        chosen = [line for line in by_word[word.lower()] if line not in used][: PER_TOPIC[split]]
        used.update(chosen)
        tasks += [Task("about", about_prompt(topic), line, word) for line in chosen]
    pool[:] = [line for line in pool if line not in used]  # the continue family gets the rest
    rng.shuffle(tasks)
    return tasks


@functools.lru_cache(maxsize=1)
def _training_openings() -> frozenset[str]:
    """Every opening a training task could use, so no held-out prompt can repeat one."""
    return frozenset(" ".join(line.split()[:k]) for line in lines("train") for k in _OPENING_WORDS)


def _split_line(line: str, rng: random.Random) -> tuple[str, str] | None:
    """Cut a line after 3 to 5 words into (opening, rest); None if no cut leaves a good rest."""
    words = line.split()
    cuts = [k for k in _OPENING_WORDS if len(words) - k >= 2 and len(" ".join(words[k:])) >= MIN_CHARS]
    if not cuts:
        return None
    k = rng.choice(cuts)
    opening, rest = " ".join(words[:k]), " ".join(words[k:])
    return (opening, rest) if continues(opening, rest) else None


def _continue_tasks(split: str, pool: list[str], rng: random.Random, count: int) -> list[Task]:
    """``count`` tasks from lines of ``pool``: the opening is the prompt, the rest the response."""
    tasks = []
    for line in pool:
        if len(tasks) == count:
            break
        cut = _split_line(line, rng)
        if cut is None or (split == "heldout" and cut[0] in _training_openings()):
            continue
        tasks.append(Task("continue", continue_prompt(cut[0]), cut[1], cut[0]))
    return tasks


@functools.lru_cache(maxsize=8)
def _tasks(split: str, seed: int) -> tuple[Task, ...]:
    """All tasks of a split, the two families interleaved so any prefix is balanced."""
    rng = random.Random(f"{split}-{seed}")  # a private generator: the global one is never touched
    pool = list(lines(split))
    rng.shuffle(pool)
    about = _about_tasks(split, pool, rng)  # takes its lines out of the pool
    cont = _continue_tasks(split, pool, rng, count=len(about))
    interleaved = [task for pair in zip(about, cont) for task in pair]
    longer = about if len(about) > len(cont) else cont
    return tuple(interleaved + longer[len(interleaved) // 2 :])


def make_tasks(split: str, n: int | None = None, seed: int = 0) -> list[Task]:
    """The demonstrations of ``split`` ("train" or "heldout"), the same on every call.

    ``n`` keeps the first ``n`` (families alternate, so any ``n`` is balanced); ``seed`` picks
    other lines and orders. The two splits share no prompt, whatever the seeds. Building every
    task takes well under a second once the corpus is cached.
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
