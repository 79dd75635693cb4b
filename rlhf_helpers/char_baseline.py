"""Lesson 02's side-by-side: the course's tokens against single characters, at equal training time.

Lesson 01 argued that subword tokens let a model read more text per step. Here that is measured.
Two GPTs of the same shape (the profile's) are trained by the same loop (``gpt.train``: Muon and
AdamW, warm-up then cosine decay) for the same number of seconds. One reads the course's 2,048
BPE tokens, the other one character per token (Karpathy's char-level nanoGPT). Both are judged in
nats per character on the same validation text, so the tokenizer cannot flatter either.

How "the same time" is arranged: ``gpt.train`` counts steps, not seconds. So the two models first
take a few steps in turns to measure their speeds under the same conditions (``step_seconds``),
then each gets as many steps as fit in ``seconds`` of training (evaluation time is not counted,
for either). A character model's steps are a little
faster (its output layer has under a hundred rows instead of 2,048), but each step reads less text: a
window of 128 characters against 128 tokens of about 2.7 characters.

Left out: tuning each model's learning rate on its own (both use the profile's), and longer runs.
"""

from __future__ import annotations

import torch

from rlhf_helpers import gpt, stats

SECONDS = 13.0  # training seconds each model gets in the lesson (both fit in lesson 02's budget)
TIMING_STEPS = 8  # steps that measure a model's speed before its real run
MIN_STEPS = 60  # on a machine too busy for that many in SECONDS, both models train longer, still for equal time
SEED = 1337
UNKNOWN = "\x00"  # stands for a validation character that never occurs in the training text


def char_vocabulary(text: str) -> dict[str, int]:
    """Every character of ``text``, sorted, numbered from 1; 0 is ``UNKNOWN``."""
    return {UNKNOWN: 0, **{c: i + 1 for i, c in enumerate(sorted(set(text) - {UNKNOWN}))}}


def encode_chars(text: str, vocabulary: dict[str, int]) -> torch.Tensor:
    """One id per character (``UNKNOWN``'s for a character outside the vocabulary)."""
    return torch.tensor([vocabulary.get(c, 0) for c in text], dtype=torch.int16)


def char_splits() -> tuple[dict[str, tuple[torch.Tensor, int]], int]:
    """The corpus split exactly as ``gpt.encode_splits`` splits it, one token per character:
    ``({"train": (ids, characters), "val": (ids, characters)}, vocabulary size)``."""
    from rlhf_helpers.data import load_corpus, train_val_split

    train_text, val_text = train_val_split(load_corpus(), val_fraction=0.1)
    vocabulary = char_vocabulary(train_text)
    splits = {name: (encode_chars(text, vocabulary), len(text)) for name, text in (("train", train_text),
                                                                                    ("val", val_text))}
    return splits, len(vocabulary)


def _fresh_model(sizes, vocab_size: int) -> gpt.GPT:
    torch.manual_seed(SEED)
    return gpt.GPT(gpt.GPTConfig.from_sizes(sizes, vocab_size=vocab_size))


def step_seconds(models: list[tuple[gpt.GPT, torch.Tensor]], sizes) -> list[float]:
    """Each ``(model, training ids)``'s seconds per training step, measured in turns.

    The models take their steps in alternation (A, B, A, B, ...), after one warm-up step each, and
    each gets the median of its ``TIMING_STEPS`` timings. A change in the machine's load (another
    program starting, a laptop's fan curve) then slows both alike, and one slow step moves no
    median: the ratio of the two speeds, which decides who gets more steps, stays honest.
    """
    import statistics
    import time

    optimizers = [gpt.configure_optimizers(model, sizes.lr, muon_lr=sizes.muon_lr) for model, _ in models]
    generator = torch.Generator().manual_seed(SEED)
    timings: list[list[float]] = [[] for _ in models]
    for turn in range(TIMING_STEPS + 1):
        for (model, ids), optimizer, times in zip(models, optimizers, timings):
            x, y = gpt.get_batch(ids, model.config.block_size, sizes.batch_size, generator)
            start = time.perf_counter()
            gpt.train_step(model, optimizer, x, y).item()
            if turn:  # the first turn warms up (memory allocation, lazy initialisation)
                times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in timings]


def steps_for(seconds: float, seconds_per_step: float) -> int:
    """The training steps that fit in ``seconds`` (at least ``TIMING_STEPS``)."""
    return max(TIMING_STEPS, round(seconds / seconds_per_step))


def run(name: str, splits: dict, vocab_size: int, sizes, seconds: float = SECONDS, steps: int | None = None) -> dict:
    """Train one model for ``seconds`` of training (or ``steps`` steps, when they are given) and judge
    it: its curve (training seconds, validation nats/char) and its final nats/char with a 95 %
    interval (``gpt.final_validation``)."""
    (train_ids, _), (val_ids, val_chars) = splits["train"], splits["val"]
    if steps is None:
        steps = steps_for(seconds, step_seconds([(_fresh_model(sizes, vocab_size), train_ids)], sizes)[0])
    model = _fresh_model(sizes, vocab_size)
    history = gpt.train(model, train_ids, val_ids, steps, sizes.batch_size, lr=sizes.lr, muon_lr=sizes.muon_lr,
                        log_every=max(1, steps // 6), seed=SEED, progress=False)
    per_char = len(val_ids) / val_chars
    tokens_per_step = sizes.batch_size * sizes.block_size
    curve = [(row["step"] * tokens_per_step / row["tokens_per_s"] if row["tokens_per_s"] else 0.0,
              row["val_loss"] * per_char) for row in history]
    final = gpt.final_validation(model, val_ids, val_chars, sizes.batch_size)["nats_per_char"]
    return {"name": name, "steps": steps, "parameters": model.num_params(), "curve": curve,
            "nats_per_char": final, "characters_read": round(steps * tokens_per_step * val_chars / len(val_ids))}


def side_by_side(sizes, token_splits: dict, vocab_size: int, seconds: float = SECONDS) -> dict[str, dict]:
    """The course's tokens (``token_splits`` from ``gpt.encode_splits``, ``vocab_size`` of them) and
    single characters, each given ``seconds`` of training: the token model as many steps as fit
    (at least ``MIN_STEPS``), the character model as many as take it the same time."""
    chars, char_vocab = char_splits()
    timed = [(_fresh_model(sizes, vocab_size), token_splits["train"][0]),
             (_fresh_model(sizes, char_vocab), chars["train"][0])]
    token_seconds, char_seconds = step_seconds(timed, sizes)
    token_steps = max(MIN_STEPS, steps_for(seconds, token_seconds))
    char_steps = round(token_steps * token_seconds / char_seconds)  # as long as the token model trains
    return {"course tokens": run("course tokens", token_splits, vocab_size, sizes, steps=token_steps),
            "characters": run("characters", chars, char_vocab, sizes, steps=char_steps)}


def check_tokens_win(runs: dict[str, dict]) -> None:
    """The lesson's claim: at equal time the course's tokens reach fewer nats/char than characters,
    with the two 95 % intervals apart. ``AssertionError`` otherwise."""
    ours, chars = runs["course tokens"]["nats_per_char"], runs["characters"]["nats_per_char"]
    if not ours.high < chars.low:
        raise AssertionError(f"At equal time the course's tokens reach {ours} nats/char and characters {chars}: "
                             "the intervals are not apart, so this run does not show that tokens win.")


def plot(runs: dict[str, dict], ax=None):
    """Validation nats/char against training seconds, one line per run, the final interval as a bar."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.8))[1]
    for run_ in runs.values():
        seconds, loss = zip(*run_["curve"])
        line, = ax.plot(seconds, loss, marker=".", label=f"{run_['name']} ({run_['steps']} steps)")
        final: stats.Interval = run_["nats_per_char"]
        ax.errorbar(seconds[-1], final.estimate, yerr=[[final.estimate - final.low], [final.high - final.estimate]],
                    color=line.get_color(), capsize=4)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("The same GPT and loop, for the same time: tokens against characters")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
