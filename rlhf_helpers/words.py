"""Real words: how much of a model's text is made of words that exist.

A small language model learns the *look* of its text long before it learns its words: the line
lengths, the capitals after a full stop, the "ROMEO:" headers, and syllables that sound like
Shakespeare ("the wros", "simable"). The loss in nats per character rewards all of that at once.
The **real-word rate** isolates the words: the share of the words in sampled text that occur
somewhere in the training text. It is strict on purpose:

- text is cut into *pieces*: lower-case runs of letters, so "o'er" is "o" and "er", and
  "well-a-day" is "well", "a" and "day" (an invented compound cannot pass on its real halves
  unless each half exists);
- a one-letter piece other than "a", "i" and "o" (Shakespeare's "O") is a fragment, such as "s"
  in "love's" or "d" in "kill'd": it is not counted at all, neither as a word nor as an invented
  one, so contractions cost nothing and a string of single letters earns nothing;
- the vocabulary is the training split's pieces only, so a word seen only in validation counts as
  invented, as it would for a model that never saw it.

The rate is a share of *pieces*, pooled over all samples, and its interval comes from a bootstrap
over samples (``stats.bootstrap_mean`` with each sample as a group): the pieces of one sample are
not independent. The same measure follows the model through the course, so that a reader can see
whether fine-tuning and alignment made it speak better or worse.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rlhf_helpers import stats

_LETTERS = re.compile(r"[a-z]+")
ONE_LETTER_WORDS = frozenset({"a", "i", "o"})


def pieces(text: str) -> list[str]:
    """Lower-case runs of letters: "Love's labour, well-a-day!" -> love, s, labour, well, a, day."""
    return _LETTERS.findall(text.lower())


def counted(text: str) -> list[str]:
    """The pieces of ``text`` that the rate counts: all but the one-letter fragments."""
    return [p for p in pieces(text) if len(p) > 1 or p in ONE_LETTER_WORDS]


def vocabulary_of(text: str) -> frozenset[str]:
    """The words of ``text``: its pieces, without the one-letter fragments."""
    return frozenset(counted(text))


@lru_cache(maxsize=1)
def training_vocabulary() -> frozenset[str]:
    """The words of the corpus's training split (lesson 02's split), built once per process."""
    from rlhf_helpers import data

    train, _ = data.train_val_split(data.load_corpus())
    return vocabulary_of(train)


def real_flags(text: str, vocabulary: frozenset[str]) -> list[float]:
    """1.0 for each counted piece of ``text`` that is a word of ``vocabulary``, else 0.0."""
    return [float(p in vocabulary) for p in counted(text)]


def real_word_rate(texts: list[str], vocabulary: frozenset[str] | None = None) -> stats.Interval:
    """The share of all counted pieces of ``texts`` that are real words, with a bootstrap interval
    over texts.

    ``vocabulary`` defaults to ``training_vocabulary()``. Texts without a counted piece add nothing;
    if no text has one, there is nothing to measure and ``ValueError`` says so.
    """
    vocabulary = training_vocabulary() if vocabulary is None else vocabulary
    flags, groups = [], []
    for i, text in enumerate(texts):
        found = real_flags(text, vocabulary)
        flags += found
        groups += [i] * len(found)
    if not flags:
        raise ValueError("These texts contain no words at all (no letters, or only one-letter fragments).")
    return stats.bootstrap_mean(flags, groups)


def invented_words(texts: list[str], vocabulary: frozenset[str] | None = None, top: int = 10) -> list[str]:
    """The most frequent pieces of ``texts`` that are not words: what the model made up."""
    from collections import Counter

    vocabulary = training_vocabulary() if vocabulary is None else vocabulary
    counts = Counter(p for text in texts for p in counted(text) if p not in vocabulary)
    return [word for word, _ in counts.most_common(top)]
