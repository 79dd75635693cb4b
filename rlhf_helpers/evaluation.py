"""The course's evaluation protocol: which prompts a model is judged on, how its answers are
sampled, and which figures are reported.

Lessons 03 to 07 and ``python -m course bench`` judge every model through this module, so the SFT
model has the same numbers wherever it appears: lesson 03's rate is lesson 06's "before" and lesson
07's baseline. Three decisions make up the protocol:

- **The prompts.** The first ``Profile.eval_prompts`` (400) distinct held-out prompts. The two
  task families alternate, so 400 prompts are 200 of each. On 400 prompts a rate's 95 % interval
  is at most about ±5 points; on one family's 200, about ±7.
- **The sampling.** One answer per prompt at ``TEMPERATURE`` 0.7 from the model's whole
  distribution (no top-k, no top-p), at most ``MAX_NEW_TOKENS`` new tokens, from the seed ``SEED``,
  in batches of ``BATCH_SIZE``. It is the setting PPO samples with in lesson 06, whose
  log-probabilities need the whole distribution. Measured on the SFT model, 0.7 is the highest
  temperature tried that keeps nine words in ten real: at 1.0 one word in seven was invented, and
  at 0.5 (which followed 78 % of the time against 70 %) the answers repeated each other's phrases
  (distinct-2 0.69 against 0.82), leaving RL less variety to learn from. One setting for the
  course is what lets the lessons' numbers meet.
- **The figures.** The instruction-following rate, overall and per family, the gold utility of
  lesson 05 (a cut-off answer loses ``labeler.W_UNENDED``), and the real-word rate of lesson 02,
  each with a 95 % bootstrap interval over prompts (``stats``).

The same seed, model, prompts and device give the same answers, whatever ran before: sampling
draws from a forked random state and leaves the global one as it was.

Left out: several answers per prompt, greedy decoding, and judging by a language model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf_helpers import instructions, labeler, ppo, stats, words

TEMPERATURE = 0.7  # the course's one sampling temperature: evaluation, PPO, the arena
MAX_NEW_TOKENS = 32  # the longest answer judged
SEED = 1234  # the evaluation's samples; a different stream from any training run's
BATCH_SIZE = 64  # prompts sampled together; part of the protocol, as batching changes the draws


class Sampled(NamedTuple):
    """One batch of sampled answers: the prompts' token ids and mask (left-padded), the answers'
    ids and mask (cut after the end token), whether each ended, and the decoded texts."""

    prompts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    ended: list[bool]
    texts: list[str]


def prompts(n: int | None = None) -> list[str]:
    """The first ``n`` distinct held-out prompts (all 414 if ``n`` is None): what every model is
    judged on.

    One per held-out task: ``about`` prompts ("Continue this line about heart: Speak, for my") and
    ``continue`` prompts alternate, so any even ``n`` is balanced. The topics are the twelve
    training topics; what is new is the opening, which no training prompt uses and no prompt
    repeats.
    """
    distinct = list(dict.fromkeys(task.prompt for task in instructions.make_tasks("heldout")))
    if n is not None and not 0 < n <= len(distinct):
        raise ValueError(f"Asked for {n} evaluation prompts; there are {len(distinct)} held-out prompts.")
    return distinct if n is None else distinct[:n]


def protocol(profile) -> dict:
    """The protocol's settings, for the configs of the artifacts it judges (a change rebuilds them)."""
    return {"prompts": profile.eval_prompts, "temperature": TEMPERATURE, "max_new_tokens": MAX_NEW_TOKENS,
            "seed": SEED, "batch_size": BATCH_SIZE}


def sampling_config(**overrides) -> ppo.PPOConfig:
    """The protocol's sampling as the ``ppo.PPOConfig`` that ``ppo.sample_responses`` reads."""
    return ppo.PPOConfig(**{"temperature": TEMPERATURE, "max_new_tokens": MAX_NEW_TOKENS, **overrides})


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], config: ppo.PPOConfig | None = None, *, seed: int = SEED,
           batch_size: int = BATCH_SIZE) -> list[Sampled]:
    """One answer per prompt, sampled as the protocol says (``config`` defaults to
    ``sampling_config()``), batch by batch; the global random state is left as it was."""
    config = config or sampling_config()
    device = next(model.parameters()).device
    end_id, pad_id = ppo.special_ids(tokenizer)
    batches = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            prompt_ids, prompt_mask = ppo.encode_prompts(tokenizer, batch, device)
            responses, mask, has_end = ppo.sample_responses(model, prompt_ids, prompt_mask, config, end_id, pad_id)
            batches.append(Sampled(batch, prompt_ids, prompt_mask, responses, mask, has_end.tolist(),
                                   ppo.decode(tokenizer, responses)))
    return batches


def answers(model, tokenizer, prompts: list[str], **kwargs) -> tuple[list[str], list[bool]]:
    """``(texts, ended)``: each prompt's sampled answer, and whether it ended before the limit."""
    batches = sample(model, tokenizer, prompts, **kwargs)
    return [t for b in batches for t in b.texts], [e for b in batches for e in b.ended]


def figures(prompts: list[str], responses: list[str], ended: list[bool]) -> dict[str, stats.Interval]:
    """The protocol's figures, each with its 95 % bootstrap interval over prompts:

    ``following`` (all prompts) and ``following_<family>`` for each family, ``gold`` (the gold
    utility, cut-off answers penalised) and ``real_words`` (share of real words, lesson 02).
    """
    if not len(prompts) == len(responses) == len(ended):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} answers and {len(ended)} ended flags: "
                         "they must pair up.")
    follows = [float(instructions.follows(p, r)) for p, r in zip(prompts, responses)]
    result = {"following": stats.bootstrap_mean(follows, prompts)}
    families = [instructions.parse_prompt(p).family for p in prompts]
    for family in instructions.FAMILIES:
        mine = [(f, p) for f, p, fam in zip(follows, prompts, families) if fam == family]
        if mine:
            result[f"following_{family}"] = stats.bootstrap_mean(*map(list, zip(*mine)))
    result["gold"] = stats.bootstrap_mean(labeler.gold_utilities(prompts, responses, ended), prompts)
    result["real_words"] = words.real_word_rate(responses)
    return result


def judge(model, tokenizer, prompts: list[str], **kwargs) -> tuple[dict[str, stats.Interval], list[str], list[bool]]:
    """Sample (``answers``) and measure (``figures``): ``(figures, texts, ended)``."""
    texts, ended = answers(model, tokenizer, prompts, **kwargs)
    return figures(prompts, texts, ended), texts, ended


def table(rows: dict[str, dict[str, stats.Interval]]) -> str:
    """The figures of several models, one line each, rates in percent with their intervals."""
    columns = ["following"] + [f"following_{f}" for f in instructions.FAMILIES] + ["real_words", "gold"]
    heads = {"following": "follows", "real_words": "real words", "gold": "gold U"}
    width = 24
    lines = [f"{'model':10}" + "".join(f"{heads.get(c, c.replace('following_', 'follows ')):>{width}}" for c in columns)]
    for name, row in rows.items():
        cells = [(row[c].percent() if c != "gold" else str(row[c])) if c in row else "-" for c in columns]
        lines.append(f"{name:10}" + "".join(f"{cell:>{width}}" for cell in cells))
    return "\n".join(lines)


def check_beats(model: dict[str, stats.Interval], control: dict[str, stats.Interval], claim: str,
                keys: tuple[str, ...] = tuple(f"following_{f}" for f in instructions.FAMILIES)) -> None:
    """A sanity check: on every figure of ``keys`` the model's whole 95 % interval lies above the
    control's (the model before training, say). ``AssertionError`` with ``claim`` otherwise.

    Separate intervals are a stricter test than a paired one: it holds only for a large gain.
    """
    for key in keys:
        if not model[key].low > control[key].high:
            raise AssertionError(f"{claim}: not shown for {key}. The model has {model[key].percent()}, the "
                                 f"control {control[key].percent()} (95 % intervals), and they overlap.")
