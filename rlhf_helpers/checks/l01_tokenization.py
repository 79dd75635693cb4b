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
              "given (else an empty dict), add 1 per pair with counts.get(pair, 0) + 1, and return it.",
              "counts = {} if counts is None else counts\n"
              "  for pair in zip(ids, ids[1:]):\n"
              "      counts[pair] = counts.get(pair, 0) + 1\n"
              "  return counts"),
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
        hint=("Build a NEW list in one pass, left to right: wherever the pair occurs, its two ids "
              "become the one new id. Overlaps merge greedily (merging (1, 1) in 1, 1, 1 leaves idx, 1), "
              "so after a match skip both ids. Mind the last id: it has no right neighbour.",
              "Walk an index i while i < len(ids). If i is not the last position and ids[i], ids[i + 1] "
              "equal pair[0], pair[1], append idx and advance i by 2; otherwise append ids[i] and "
              "advance by 1. Return the new list.",
              "out, i = [], 0\n"
              "  while i < len(ids):\n"
              "      if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
              "          out.append(idx)\n"
              "          i += 2\n"
              "      else:\n"
              "          out.append(ids[i])\n"
              "          i += 1\n"
              "  return out"),
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
        hint=("Start from the text's UTF-8 bytes, not its characters. Then repeat one step "
              "vocab_size - 256 times: count the adjacent pairs, give the most frequent one the next "
              "new id (256, 257, ...) and merge it everywhere. A tie goes to the pair seen first; stop "
              "early when no pair is left.",
              "ids starts as list(text.encode('utf-8')). For idx in range(256, vocab_size): count pairs "
              "with get_stats(ids); stop (break) if there are none; the winner is max(stats, "
              "key=stats.get), which keeps the first of equal counts; merge it with merge(ids, pair, idx) "
              "and record merges[pair] = idx. Return merges (a dict keeps the order learned).",
              "ids = list(text.encode('utf-8'))\n"
              "  merges = {}\n"
              "  for idx in range(256, vocab_size):\n"
              "      stats = get_stats(ids)\n"
              "      if not stats:\n"
              "          break\n"
              "      pair = max(stats, key=stats.get)\n"
              "      ids = merge(ids, pair, idx)\n"
              "      merges[pair] = idx\n"
              "  return merges"),
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
              "merges, stop (break); else merge it. (Applying every merge in order also works.)",
              "ids = list(text.encode('utf-8'))\n"
              "  while len(ids) >= 2:\n"
              "      stats = get_stats(ids)\n"
              "      pair = min(stats, key=lambda p: merges.get(p, float('inf')))\n"
              "      if pair not in merges:\n"
              "          break\n"
              "      ids = merge(ids, pair, merges[pair])\n"
              "  return ids"),
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
        hint=("As in 01.3, but merges never cross a chunk boundary: pre-split the text into chunks "
              "(words, numbers, punctuation), count the pairs inside each chunk, all chunks into ONE "
              "tally, and merge the winner inside every chunk. The last byte of one chunk and the first "
              "of the next never form a pair.",
              "chunks: split_text(text, pattern), each turned into the list of its UTF-8 bytes. For idx "
              "in range(256, vocab_size): a fresh stats dict, filled by get_stats(ids, stats) for every "
              "chunk; stop if it is empty; the winner is max(stats, key=stats.get) (first seen on ties); "
              "merge it in every chunk; merges[pair] = idx.",
              "chunks = [list(chunk.encode('utf-8')) for chunk in split_text(text, pattern)]\n"
              "  merges = {}\n"
              "  for idx in range(256, vocab_size):\n"
              "      stats = {}\n"
              "      for ids in chunks:\n"
              "          get_stats(ids, stats)\n"
              "      if not stats:\n"
              "          break\n"
              "      pair = max(stats, key=stats.get)\n"
              "      chunks = [merge(ids, pair, idx) for ids in chunks]\n"
              "      merges[pair] = idx\n"
              "  return merges"),
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
        hint=("tiktoken keeps no list of merges, only each token's bytes and its rank (its id, which "
              "is also the order it was learned in). Start from single bytes; again and again merge the "
              "adjacent pair whose glued bytes have the LOWEST rank (not the leftmost pair, not the most "
              "frequent); stop when no adjacent pair glues into a known token.",
              "parts: one bytes object per byte (bytes([b]) for each b in chunk). While there are two or "
              "more: for every i, ranks.get(parts[i] + parts[i + 1]) is the glued pair's rank, or None "
              "if it is no token; keep the lowest rank and its i; if there is none, stop; else replace "
              "parts i and i + 1 by their concatenation. Return [ranks[p] for p in parts].",
              "parts = [bytes([b]) for b in chunk]\n"
              "  while len(parts) >= 2:\n"
              "      best = None  # (rank, i) of the best merge so far\n"
              "      for i in range(len(parts) - 1):\n"
              "          rank = ranks.get(parts[i] + parts[i + 1])\n"
              "          if rank is not None and (best is None or rank < best[0]):\n"
              "              best = (rank, i)\n"
              "      if best is None:\n"
              "          break\n"
              "      i = best[1]\n"
              "      parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]\n"
              "  return [ranks[p] for p in parts]"),
    )
    return attempt if chosen is attempt_on else bpe.bpe_with_ranks
