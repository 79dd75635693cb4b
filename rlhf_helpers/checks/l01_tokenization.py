"""Lesson 01's exercises: byte-pair encoding from scratch, up to reproducing tiktoken.

The reference implementations live in ``rlhf_helpers.bpe``; here are the inputs each exercise is
tried on and the hints a learner sees.
"""

from __future__ import annotations

from typing import Any, Callable

from rlhf_helpers import bpe
from rlhf_helpers.exercises import Case, check

_SHAKESPEARE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
)
_MIXED = "naïve café: 3.14159 ≈ π, 你好 🙂 don't STOP!!\n\tdone"


def _compare_counts(got: Any, expected: dict) -> str | None:
    """Pair counts must match, and in first-seen order (training breaks ties by it)."""
    if not isinstance(got, dict):
        return f"expected a dict {{pair: count}}, got {type(got).__name__}"
    for pair, count in expected.items():
        if pair not in got:
            return f"the pair {pair} (count {count}) is missing"
        if got[pair] != count:
            return f"the pair {pair} should have count {count}, not {got[pair]}"
    extra = [pair for pair in got if pair not in expected]
    if extra:
        return f"the pair {extra[0]!r} does not occur in the input"
    if list(got) != list(expected):
        return ("the counts are right but the pairs are not in the order they first appear "
                "(training breaks ties by that order)")
    return None


def _compare_merges(got: Any, expected: dict) -> str | None:
    """Merges must be the same pairs, with the same new ids, learned in the same order."""
    if not isinstance(got, dict):
        return f"expected a dict {{pair: new_id}}, got {type(got).__name__}"
    want, have = list(expected.items()), list(got.items())
    for number, (w, h) in enumerate(zip(want, have)):
        if w != h:
            return f"merge number {number} should be {w[0]} -> {w[1]}, yours is {h[0]} -> {h[1]}"
    if len(have) != len(want):
        return f"expected {len(want)} merges, got {len(have)}"
    return None


# --- Exercise 01.1 -----------------------------------------------------------------------------

def get_stats_cases() -> list[Case]:
    return [
        Case(([1, 2, 3, 1, 2],), about="the example in the docstring"),
        Case(([],), about="empty: no pairs"),
        Case(([7],), about="one token: no pairs"),
        Case(([5, 5, 5, 5],), about="overlapping repeats count every position"),
        Case((list("hello world".encode()),), about="bytes of a string"),
        Case(([1, 2, 3],), {"counts": {(9, 9): 4, (1, 2): 5}}, about="adding to existing counts"),
    ]


def check_get_stats(attempt: Callable) -> Callable:
    """Check Exercise 01.1; return the ``get_stats`` to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 01.1 (count adjacent pairs)", attempt, bpe.get_stats, get_stats_cases(),
        hint=("Every adjacent pair counts, overlapping ones too, and when `counts` is given the "
              "new pairs are ADDED to that dict (training counts over many chunks into one dict).",
              "zip(ids, ids[1:]) yields each adjacent pair once. Start from `counts` when it is "
              "given (else an empty dict), add 1 per pair with counts.get(pair, 0) + 1, and return it."),
        comparer=_compare_counts,
    )


# --- Exercise 01.2 -----------------------------------------------------------------------------

def merge_cases() -> list[Case]:
    return [
        Case(([1, 2, 3, 1, 2], (1, 2), 256), about="two occurrences"),
        Case(([5, 6, 7], (1, 2), 256), about="the pair does not occur"),
        Case(([], (1, 2), 256), about="empty list"),
        Case(([1, 1, 1], (1, 1), 300), about="overlap: merge left to right"),
        Case(([1, 1, 1, 1], (1, 1), 300), about="overlap, even length"),
        Case(([3, 1, 2], (1, 2), 999), about="the pair at the very end"),
        Case(([1, 2, 1], (2, 1), 257), about="a pair that ends the list, after a non-match"),
    ]


def check_merge(attempt: Callable) -> Callable:
    """Check Exercise 01.2; return the ``merge`` to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 01.2 (merge a pair)", attempt, bpe.merge, merge_cases(),
        hint="Walk with an index i. If ids[i], ids[i+1] equal the pair, append idx and jump "
        "i += 2; otherwise append ids[i] and step i += 1. Mind the last element (no i+1). "
        "Return a new list.",
    )


# --- Exercise 01.3 -----------------------------------------------------------------------------

def train_cases() -> list[Case]:
    return [
        Case(("aaabdaaabac", 259), about="Wikipedia's BPE example: three merges"),
        Case(("hello hello hello world", 265), about="a repeated word"),
        Case((_SHAKESPEARE, 300), about="a few speeches"),
        Case((_MIXED, 270), about="accents, Chinese and an emoji (multi-byte UTF-8)"),
        Case(("abc", 256), about="vocab_size 256: no merges at all"),
        Case(("ab", 300), about="runs out of pairs after one merge"),
    ]


def check_train_bpe(attempt: Callable) -> Callable:
    """Check Exercise 01.3; return the BPE trainer to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 01.3 (train BPE)", attempt, bpe.train, train_cases(),
        hint="ids = list(text.encode('utf-8')); for idx in range(256, vocab_size): count with "
        "get_stats, stop if there are no pairs, take pair = max(stats, key=stats.get) (ties: the "
        "first seen), ids = merge(ids, pair, idx), merges[pair] = idx.",
        comparer=_compare_merges,
    )


# --- Exercise 01.4 -----------------------------------------------------------------------------

def encode_cases() -> list[Case]:
    merges = bpe.train(_SHAKESPEARE, 300)
    mixed = bpe.train(_MIXED * 3, 280)
    return [
        Case(("Speak, speak.", merges), about="text like the training text"),
        Case(("First Citizen:\nhear me", merges), about="a newline and a capitalised name"),
        Case(("", merges), about="empty text"),
        Case(("a", merges), about="a single character"),
        Case(("zzz qqq", merges), about="no learned merge applies"),
        Case(("café 你好 🙂", mixed), about="multi-byte characters"),
        Case(("Speak, speak.", {}), about="no merges: just the bytes"),
        Case(("the the", merges), about="a frequent pair learned late: merge in learned order, not by count"),
    ]


def check_encode(attempt: Callable) -> Callable:
    """Check Exercise 01.4; return the encoder to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 01.4 (encode with learned merges)", attempt, bpe.encode, encode_cases(),
        hint=("Encoding replays training: merges are applied in the order they were LEARNED (the "
              "smallest new id first), whatever the pair counts in this text, and the loop must end "
              "when no learned merge applies.",
              "Start from list(text.encode('utf-8')). While there are at least two ids: find the "
              "pair in get_stats(ids) with the smallest merge id (merges.get(p, inf)); if it is not in "
              "merges, stop (break); else merge it. (Applying every merge in order also works.)"),
    )


# --- Exercise 01.5 -----------------------------------------------------------------------------

def train_regex_cases() -> list[Case]:
    return [
        Case(("hello world, hello worlds!", 262), about="merges stay inside words"),
        Case(("dog dog. dog! dog?", 260), about="punctuation is its own chunk"),
        Case((_SHAKESPEARE, 300), about="a few speeches"),
        Case((_MIXED, 270), about="multi-byte characters and a contraction"),
        Case(("1234567 89", 262), about="numbers split in groups of three"),
        Case(("a b c", 300), about="no chunk has two bytes: no merges"),
        Case(("aa aa", 256), about="vocab_size 256: no merges"),
    ]


def check_train_regex(attempt: Callable) -> Callable:
    """Check Exercise 01.5; return the pre-splitting trainer to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 01.5 (train BPE with a regex pre-split)", attempt, bpe.train_regex, train_regex_cases(),
        hint="Split with split_text(text, pattern) and turn each chunk into a list of its UTF-8 "
        "bytes. Each round, count pairs over all chunks into one dict (get_stats(ids, stats) does "
        "it), take the most frequent (first seen on ties), and merge it inside every chunk.",
        comparer=_compare_merges,
    )


# --- Exercise 01.6 -----------------------------------------------------------------------------

_RANK_CHUNKS = [
    b"hello", b" world", b" tokenization", b" antidisestablishmentarianism", b"aaaaaaaaaaa",
    b"123", b"\n\n", b"", b"!", "你好".encode(), "🙂".encode(), " naïve".encode(),
]


def check_bpe_with_ranks(attempt: Callable, ranks: dict[bytes, int] | None = None) -> Callable:
    """Check Exercise 01.6 against cl100k's real ranks; return the function to use from here on.

    The ranks are bound in a wrapper so that each input shown in a message is only the chunk,
    not a 100,000-entry dict.
    """
    __tracebackhide__ = True
    if ranks is None:
        from rlhf_helpers.tokenizers import get_encoding

        ranks = get_encoding("cl100k_base")._mergeable_ranks

    def attempt_on(chunk: bytes) -> list[int]:
        return attempt(chunk, ranks)

    def reference_on(chunk: bytes) -> list[int]:
        return bpe.bpe_with_ranks(chunk, ranks)

    chosen = check(
        "Exercise 01.6 (tiktoken's BPE from its ranks)", attempt_on, reference_on,
        [Case((chunk,), about="one chunk, cl100k ranks") for chunk in _RANK_CHUNKS],
        hint="parts = [bytes([b]) for b in chunk]. Repeat: for every i, look up "
        "ranks.get(parts[i] + parts[i + 1]); merge the pair with the lowest rank (None means no "
        "such token); stop when none is found. Return [ranks[p] for p in parts].",
    )
    return attempt if chosen is attempt_on else bpe.bpe_with_ranks
