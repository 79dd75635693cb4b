"""RLHF with PPO (lesson 06): step 3 of the InstructGPT recipe, around ``rlhf_helpers.ppo``.

``ppo.py`` holds the algorithm; this module holds the course's run of it:

- **the settings**: the profile's ``PPOSizes`` become a ``ppo.PPOConfig``;
- **the reward**: the ``reward_model`` artifact of lesson 05 scores each (prompt, response) through
  ``reward.score``, which renders the conversation with the chat template exactly as the reward
  model saw it in training, and normalises with the mean and spread it measured on SFT answers;
- **the evaluation**: on held-out prompts, a policy's gold utility (the hidden "human" of lesson
  05, which PPO never sees), its reward-model score, and its KL divergence from the SFT model;
- **two artifacts**: ``ppo`` (the policy trained from the ``sft`` artifact, saved with
  ``save_pretrained``, with its metrics history, held-out checkpoints and a table of answers
  before and after) and ``ppo_overoptimisation`` (runs at a small or zero beta and a larger
  learning rate, one per beta in the profile, judged every few steps: Gao et al.'s curves of
  proxy reward and gold utility against KL);
- **the LoRA reference trick**: a LoRA policy whose adapter-off model is the SFT model, and the
  memory it saves;
- **pictures**: a live grid of every metric during training, and the over-optimisation plot.

Why ``reward.score`` and not ``ppo``'s own read of the reward model at the ``<|im_end|>`` token:
trl's ``RewardTrainer`` trained the reward model on the chat template's rendering, which puts a
newline after ``<|im_end|>``, and read the score there. Read one token early the score is a
different function (on the CPU profile it correlates about 0.8 with the trained one). So PPO gets
the score through its ``reward_fn`` hook; the reward model itself still starts the value model.

The gold utility of a response that never ended carries a penalty of ``labeler.W_UNENDED``;
``ppo`` calls ``gold_fn(prompts, texts)`` without the ended flags, so the training history's
``gold`` is corrected with the step's end rate (the penalty is additive, so the correction is
exact for the mean).

Under ``accelerate launch`` both artifacts are trained by every process together (``ppo.train_ppo``
shares each batch across them); each process also judges the policy on the held-out prompts, the
same judgement everywhere, and the artifact cache keeps one copy.

Left out: several samples per prompt, a replay of the SFT loss ("PPO-ptx" in InstructGPT),
reward-model ensembles, early stopping on KL, and any change to ``ppo.py``'s algorithm.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rlhf_helpers import evaluation, instructions, labeler, ppo, reward, sft

RLHF_VERSION = 2  # bump when the recipe changes, so cached policies are rebuilt
PPO_SEED = 0
NOISE_SEED = 99  # the noise-reward control's scores
METRICS = (  # the training metrics the live grid shows, with their axis labels
    ("score", "RM score (normalised)"), ("gold", "gold utility"), ("kl", "KL to reference (nats)"),
    ("reward", "score - beta * KL"), ("beta", "beta"), ("entropy", "entropy (nats/token)"),
    ("policy_loss", "policy loss"), ("approx_kl", "approx KL old/new"), ("clip_frac", "clip fraction"),
    ("value_loss", "value loss"), ("value_clip_frac", "value clip fraction"),
    ("explained_variance", "explained variance"), ("response_length", "response length (tokens)"),
    ("end_rate", "end-token rate"), ("tokens_per_s", "throughput (tokens/s)"),
)


# --------------------------------------------------------------------------------------------
# Settings and prompts
# --------------------------------------------------------------------------------------------


def ppo_config(sizes, **overrides) -> ppo.PPOConfig:
    """The ``PPOConfig`` of a profile's ``PPOSizes`` (``overrides`` win)."""
    settings = dict(batch_size=sizes.batch_size, mini_batch_size=sizes.mini_batch_size, ppo_epochs=sizes.ppo_epochs,
                    lr=sizes.lr, init_kl_coef=sizes.kl_coef, max_new_tokens=sizes.max_new_tokens, seed=PPO_SEED,
                    temperature=evaluation.TEMPERATURE)  # PPO samples as every model is judged
    return ppo.PPOConfig(**{**settings, **overrides})


def training_prompts() -> list[str]:
    """The distinct prompts of the training demonstrations: what PPO practises on (never judged)."""
    return list(dict.fromkeys(task.prompt for task in instructions.make_tasks("train")))


# --------------------------------------------------------------------------------------------
# The reward and the gold utility
# --------------------------------------------------------------------------------------------


def load_reward():
    """``(reward_model, tokenizer, (mean, std))``: lesson 05's reward model, built if it is missing."""
    model, tokenizer, stats = reward.load_reward_model()
    return model, tokenizer, (float(stats.mean), float(stats.std))


def reward_fn(reward_model, tokenizer):
    """``fn(prompts, responses) -> raw scores``, read as the reward model was trained (``reward.score``)."""

    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return reward.score(reward_model, tokenizer, prompts, responses)

    return score


def gold_fn(prompts: list[str], responses: list[str]) -> list[float]:
    """The gold utility of responses that ended (what ``ppo`` asks; see ``with_unended_penalty``)."""
    return labeler.gold_utilities(prompts, responses)


def with_unended_penalty(metrics: dict) -> dict:
    """Correct a step's mean ``gold`` for the responses that never ended; in place, returned.

    ``gold_fn`` cannot know which responses ended, so it scores them all as ended; each one that
    did not loses exactly ``labeler.W_UNENDED``, so the mean loses ``W_UNENDED * (1 - end_rate)``.
    """
    if "gold" in metrics and "gold_if_ended" not in metrics:
        metrics["gold_if_ended"] = metrics["gold"]
        metrics["gold"] = metrics["gold"] - labeler.W_UNENDED * (1 - metrics["end_rate"])
    return metrics


# --------------------------------------------------------------------------------------------
# Evaluation on held-out prompts
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(policy, tokenizer, prompts: list[str], config: ppo.PPOConfig, *, reward_model, reward_tokenizer,
             reward_stats: tuple[float, float], ref_model=None, seed: int = evaluation.SEED) -> dict:
    """Sample one answer per prompt as the evaluation protocol says (``evaluation.sample``, at
    ``config``'s temperature and length) and judge it.

    Returns the means ``gold`` (gold utility, the unended penalty included), ``score`` (the reward
    model's, normalised, a missing end scored ``config.missing_eos_penalty`` as in training),
    ``kl`` (summed over each answer: ``log pi(y|x) - log pi_ref(y|x)``, a sample of KL(pi || ref)),
    ``following`` (instruction-following rate), ``end_rate`` and ``length`` (tokens), and
    ``rows``: one dict per prompt with the answer and its numbers. ``ref_model`` None: a peft
    policy with its adapter switched off; pass the policy itself to measure the SFT model (KL 0).
    """
    rows = []
    for batch in evaluation.sample(policy, tokenizer, prompts, config, seed=seed):
        rows += _judge_batch(policy, tokenizer, batch, config, reward_model, reward_tokenizer, reward_stats, ref_model)
    mean = lambda key: sum(float(row[key]) for row in rows) / len(rows)
    return {"gold": mean("gold"), "score": mean("score"), "kl": mean("kl"), "following": mean("follows"),
            "end_rate": mean("ended"), "length": mean("length"), "rows": rows}


def _judge_batch(policy, tokenizer, batch: evaluation.Sampled, config, reward_model, reward_tokenizer, reward_stats,
                 ref_model) -> list[dict]:
    """One row per answer of a sampled batch: its gold utility, reward score and KL."""
    sequences = torch.cat([batch.prompt_ids, batch.responses], 1)
    attention_mask = torch.cat([batch.prompt_mask, batch.mask], 1)
    logits = ppo.response_logits(policy, sequences, attention_mask, batch.responses.size(1))
    logprobs = ppo.logprobs_from_logits(logits, batch.responses, config.temperature)
    if ref_model is policy:  # the SFT model judged against itself: KL 0
        ref_logprobs = logprobs
    else:
        ref_logprobs = ppo.reference_logprobs(policy, ref_model, sequences, attention_mask, batch.responses,
                                              config.temperature)
    kl = ((logprobs - ref_logprobs) * batch.mask).sum(1)
    raw = reward.score(reward_model, reward_tokenizer, batch.prompts, batch.texts)
    has_end = torch.tensor(batch.ended)
    scores = ppo.normalise_scores(raw, reward_stats, has_end, config.missing_eos_penalty)
    gold = labeler.gold_utilities(batch.prompts, batch.texts, batch.ended)
    return [{"prompt": prompt, "response": batch.texts[i], "ended": batch.ended[i], "gold": gold[i],
             "score": scores[i].item(), "kl": kl[i].item(), "length": int(batch.mask[i].sum()),
             "follows": instructions.follows(prompt, batch.texts[i])} for i, prompt in enumerate(batch.prompts)]


def summary(evaluation: dict) -> dict:
    """An evaluation without its rows, rounded: for tables and the bench."""
    return {key: round(value, 4) for key, value in evaluation.items() if key != "rows"}


def word_shift(before: list[str], after: list[str], top: int = 10, min_count: int = 5) -> list[tuple[str, int, int]]:
    """The words whose use grew most from ``before`` to ``after`` answers: ``(word, count before,
    count after)``, by the ratio of (after + 1) to (before + 1), words seen fewer than ``min_count``
    times after left out. What a policy learned the reward model likes, read off its answers."""
    from collections import Counter

    count = lambda texts: Counter(w for text in texts for w in labeler._words(text))
    old, new = count(before), count(after)
    grown = sorted((w for w in new if new[w] >= min_count), key=lambda w: (-(new[w] + 1) / (old[w] + 1), w))
    return [(w, old[w], new[w]) for w in grown[:top]]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(policy, ref_model, tokenizer, config: ppo.PPOConfig, steps: int, *, reward_model, reward_tokenizer,
          reward_stats: tuple[float, float], prompts: list[str] | None = None, progress=None,
          callback=None, score_fn=None) -> list[dict]:
    """``ppo.train_ppo`` with the course's reward, gold utility and training prompts; the history.

    ``ref_model`` None means a peft policy with its adapter disabled. The value model starts as a
    copy of the reward model. ``score_fn(prompts, responses) -> raw scores`` replaces the reward
    model's scores if given (``noise_reward_fn``: the control). Each history row's ``gold``
    includes the unended penalty.
    """

    def on_step(metrics, batch_prompts, responses):
        with_unended_penalty(metrics)
        if callback is not None:
            callback(metrics, batch_prompts, responses)

    score_fn = score_fn or reward_fn(reward_model, reward_tokenizer)
    history = ppo.train_ppo(policy, ref_model, reward_model, None, tokenizer, prompts or training_prompts(), config,
                            reward_stats=reward_stats, reward_fn=score_fn, gold_fn=gold_fn, steps=steps,
                            progress=progress, callback=on_step)
    return history


def noise_reward_fn(reward_stats: tuple[float, float], seed: int = NOISE_SEED):
    """The control's reward: a random score for every answer, whatever it says.

    Drawn with the reward model's own mean and spread, so after normalisation it looks like a real
    score to PPO, and it has its own generator, so it does not disturb the sampling. As in the real
    run, an answer that never ends gets the fixed penalty instead (``ppo.normalise_scores``), so the
    control is "noise, plus: end your answers". Whatever a policy trained on it gains in gold
    utility comes from that and from drift alone: the bar that a real reward has to clear.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = reward_stats

    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return mean + std * torch.randn(len(responses), generator=generator)

    return score


def smooth(values: list[float], window: int = 5) -> list[float]:
    """A trailing moving average: a noisy per-batch metric, readable."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_history(history: list[dict], metrics=METRICS, columns: int = 5, fig=None, title: str | None = None):
    """A grid of every training metric against the PPO step (raw and smoothed); returns the figure."""
    import matplotlib.pyplot as plt

    rows = -(-len(metrics) // columns)
    if fig is None:
        fig = plt.figure(figsize=(3.1 * columns, 2.3 * rows))
    fig.clear()
    steps = [row["step"] for row in history]
    for i, (key, label) in enumerate(metrics):
        ax = fig.add_subplot(rows, columns, i + 1)
        values = [row.get(key, float("nan")) for row in history]
        ax.plot(steps, values, color="C0", alpha=0.35, linewidth=1)
        ax.plot(steps, smooth(values), color="C0", linewidth=1.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("PPO step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LivePlot:
    """A ``train`` callback that redraws the metric grid every ``every`` steps, in place.

    In Jupyter it clears the cell's output and shows the new grid (``clear_output(wait=True)``)
    with the last batch's first answers under it; outside Jupyter it does nothing but record.
    ``metrics`` are the panels, ``(key, label)`` pairs (default: every metric of ``ppo_step``).
    """

    def __init__(self, every: int = 5, total: int | None = None, samples: int = 2, metrics=METRICS):
        self.every, self.total, self.samples, self.metrics = every, total, samples, metrics
        self.history: list[dict] = []

    def __call__(self, metrics: dict, prompts: list[str], responses: list[str]) -> None:
        self.history.append(dict(metrics))
        last = self.total is not None and metrics["step"] == self.total
        if metrics["step"] % self.every and not last:
            return
        try:
            from IPython import get_ipython
            from IPython.display import clear_output, display
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt

        fig = plot_history(self.history, self.metrics, title=f"PPO step {metrics['step']}" +
                           (f" of {self.total}" if self.total else ""))
        clear_output(wait=True)
        seconds = sum(row["seconds"] for row in self.history)
        print(f"training: step {metrics['step']}" + (f" of {self.total}" if self.total else "") +
              f", {seconds:.0f} s so far; score {metrics['score']:+.2f}, KL {metrics['kl']:.2f} nats")
        display(fig)
        plt.close(fig)
        for prompt, response in list(zip(prompts, responses))[:self.samples]:
            print(f"{prompt!r} -> {response!r}")


# --------------------------------------------------------------------------------------------
# A run: PPO from the SFT model at one beta, judged on held-out prompts as it goes
# --------------------------------------------------------------------------------------------


def run_from_sft(config: ppo.PPOConfig, steps: int, *, judge: dict, prompts: list[str], eval_every: int,
                 progress=None, callback=None) -> dict:
    """Train a fresh copy of the SFT model (a second copy is the frozen reference) for ``steps`` steps.

    Every ``eval_every`` steps (and at step 0, the SFT model itself) the policy is judged on
    ``prompts`` with ``evaluate``. ``judge`` holds ``reward_model``, ``reward_tokenizer`` and
    ``reward_stats``. Returns ``{"policy", "tokenizer", "history", "checkpoints": [{"step", "kl",
    "score", "gold", ...}], "last": the last evaluation with its rows, "seconds"}``; ``seconds``
    counts training and judging.
    """
    policy, tokenizer = sft.load_sft_model()
    ref_model, _ = sft.load_sft_model()  # a second, frozen copy: the reference
    start = time.perf_counter()
    last = evaluate(policy, tokenizer, prompts, config, ref_model=policy, **judge)
    checkpoints = [{"step": 0, **summary(last)}]

    def on_step(metrics, batch_prompts, responses):
        nonlocal last
        if metrics["step"] % eval_every == 0 or metrics["step"] == steps:
            last = evaluate(policy, tokenizer, prompts, config, ref_model=ref_model, **judge)
            checkpoints.append({"step": metrics["step"], **summary(last)})
        if callback is not None:
            callback(metrics, batch_prompts, responses)

    history = train(policy, ref_model, tokenizer, config, steps, progress=progress, callback=on_step, **judge)
    return {"policy": policy, "tokenizer": tokenizer, "ref_model": ref_model, "history": history,
            "checkpoints": checkpoints, "last": last, "seconds": round(time.perf_counter() - start, 1)}


def load_judge() -> dict:
    """``{"reward_model", "reward_tokenizer", "reward_stats"}``: the keyword arguments ``evaluate``,
    ``train`` and ``run_from_sft`` take to score answers (``load_reward``, as a dict)."""
    reward_model, reward_tokenizer, stats = load_reward()
    return dict(reward_model=reward_model, reward_tokenizer=reward_tokenizer, reward_stats=stats)




# --------------------------------------------------------------------------------------------
# The ``ppo`` artifact
# --------------------------------------------------------------------------------------------


def ppo_artifact_config(profile=None) -> dict:
    """What the ``ppo`` artifact depends on: the SFT model, the reward model, the PPO sizes."""
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    return {"sft": sft.sft_config(profile), "reward": reward.reward_config(profile), "ppo": asdict(profile.ppo),
            "evaluation": evaluation.protocol(profile), "seed": PPO_SEED, "version": RLHF_VERSION}


def sample_table(before: dict, after: dict, control: dict) -> list[dict]:
    """One row per held-out prompt: the SFT, PPO and noise-control answers, each with its numbers."""
    return [{"prompt": b["prompt"], "sft": b["response"], "sft_ended": b["ended"], "sft_gold": b["gold"],
             "sft_score": b["score"], "ppo": a["response"], "ppo_ended": a["ended"], "ppo_gold": a["gold"],
             "ppo_score": a["score"], "ppo_kl": a["kl"], "control": c["response"], "control_ended": c["ended"],
             "control_gold": c["gold"], "control_score": c["score"]}
            for b, a, c in zip(before["rows"], after["rows"], control["rows"])]


def gold_gains(samples: list[dict]) -> dict:
    """Paired bootstrap intervals over the held-out prompts (``stats.Interval``): ``"ppo"`` and
    ``"control"``, each one's gold utility minus the SFT model's, and ``"ppo_over_control"``, PPO's
    minus the noise control's: what the reward model taught beyond drift."""
    from rlhf_helpers import stats

    gold = {name: [row[f"{name}_gold"] for row in samples] for name in ("sft", "ppo", "control")}
    prompts = [row["prompt"] for row in samples]
    return {"ppo": stats.paired_difference(gold["ppo"], gold["sft"], prompts),
            "control": stats.paired_difference(gold["control"], gold["sft"], prompts),
            "ppo_over_control": stats.paired_difference(gold["ppo"], gold["control"], prompts)}


def noise_control(config: ppo.PPOConfig, steps: int, judge: dict, progress=None) -> tuple:
    """``(policy, reference)``: the SFT model trained exactly as the ``ppo`` run, for as many steps,
    but on ``noise_reward_fn``'s random scores. PPO's gold gain must beat this run's."""
    policy, tokenizer = sft.load_sft_model()
    ref_model, _ = sft.load_sft_model()
    train(policy, ref_model, tokenizer, config, steps, progress=progress,
          score_fn=noise_reward_fn(judge["reward_stats"]), **judge)
    return policy, ref_model


def _build_ppo(folder: Path, progress, callback=None) -> None:
    from rlhf_helpers.env import get_profile

    profile = get_profile()
    sizes = profile.ppo
    config = ppo_config(sizes)
    judge = load_judge()
    run = run_from_sft(config, sizes.steps, judge=judge, prompts=evaluation.prompts(sizes.checkpoint_prompts),
                       eval_every=sizes.eval_every, progress=progress, callback=callback)
    progress.set_description("the noise-reward control")
    control_policy, control_ref = noise_control(config, sizes.steps, judge, progress)
    # the final judgement, on the protocol's prompts: the SFT model, the PPO policy, the control
    prompts = evaluation.prompts(profile.eval_prompts)
    sft_model, tokenizer = sft.load_sft_model()
    before = evaluate(sft_model, tokenizer, prompts, config, ref_model=sft_model, **judge)
    after = evaluate(run["policy"], tokenizer, prompts, config, ref_model=run["ref_model"], **judge)
    control = evaluate(control_policy, tokenizer, prompts, config, ref_model=control_ref, **judge)
    run["policy"].save_pretrained(folder / "model")  # safetensors
    tokenizer.save_pretrained(folder / "model")
    (folder / "history.json").write_text(json.dumps(run["history"], indent=1))
    (folder / "samples.json").write_text(json.dumps(sample_table(before, after, control), indent=1,
                                                    ensure_ascii=False))
    (folder / "evaluation.json").write_text(json.dumps(
        {"sft": summary(before), "ppo": summary(after), "noise_control": summary(control), "beta": config.init_kl_coef,
         "checkpoints": run["checkpoints"], "seconds": run["seconds"],
         "train_seconds": round(sum(row["seconds"] for row in run["history"]), 1),
         "eval_prompts": len(prompts), "reward_stats": list(judge["reward_stats"])}, indent=1))


def ppo_path(callback=None) -> Path:
    """The folder of the ``ppo`` artifact (trained in a couple of minutes on a CPU, if missing).

    ``callback(metrics, prompts, responses)`` is called after every PPO step while it trains
    (a ``LivePlot``, say); it is not called when the artifact already exists.
    """
    from rlhf_helpers import artifacts

    return artifacts.fetch("ppo", ppo_artifact_config(), lambda folder, progress: _build_ppo(folder, progress, callback),
                           made_by="lesson 06 (rlhf_helpers.rlhf)",
                           together=True)  # under a launch, every process trains it (ppo.train_ppo)


def load_ppo_policy():
    """The PPO policy as ``(model, tokenizer)`` (a ``GPT2LMHeadModel`` unless ``--model`` chose another
    architecture), in eval mode, on the course device."""
    from rlhf_helpers import gpt

    return gpt.load_saved_model(ppo_path() / "model")


def ppo_history() -> list[dict]:
    """The metrics of every PPO step of the ``ppo`` artifact's run."""
    return json.loads((ppo_path() / "history.json").read_text())


def ppo_samples() -> list[dict]:
    """Held-out prompts with the SFT, PPO and noise-control answers, their gold utilities and scores."""
    return json.loads((ppo_path() / "samples.json").read_text())


def ppo_evaluation() -> dict:
    """Held-out means of the SFT model (``sft``), the policy (``ppo``) and the noise-reward control
    (``noise_control``), ``beta``, the run's ``checkpoints``, ``seconds`` (training and judging the
    ``ppo`` run) and ``train_seconds``."""
    return json.loads((ppo_path() / "evaluation.json").read_text())


# --------------------------------------------------------------------------------------------
# The ``ppo_overoptimisation`` artifact: runs at small beta, judged every few steps
# --------------------------------------------------------------------------------------------


def overoptimisation_config(profile=None) -> dict:
    """What the ``ppo_overoptimisation`` artifact depends on (the same as ``ppo``'s)."""
    return {**ppo_artifact_config(profile), "stage": "overoptimisation"}


def _build_overoptimisation(folder: Path, progress) -> None:
    from rlhf_helpers.env import get_profile

    sizes = get_profile().ppo
    judge = load_judge()
    prompts = evaluation.prompts(sizes.checkpoint_prompts)
    progress.reset(total=len(sizes.overopt_betas) * sizes.overopt_steps)
    runs = []
    for beta in sizes.overopt_betas:
        progress.set_description(f"beta={beta:g}")
        config = ppo_config(sizes, init_kl_coef=beta, lr=sizes.overopt_lr)
        run = run_from_sft(config, sizes.overopt_steps, judge=judge, prompts=prompts,
                           eval_every=sizes.overopt_eval_every, callback=lambda *_: progress.update())
        runs.append({"beta": beta, "lr": config.lr, "checkpoints": run["checkpoints"], "history": run["history"],
                     "examples": run["last"]["rows"], "seconds": run["seconds"]})
    (folder / "runs.json").write_text(json.dumps({"runs": runs, "checkpoint_prompts": len(prompts)},
                                                 indent=1, ensure_ascii=False))


def overoptimisation_path() -> Path:
    """The folder of the ``ppo_overoptimisation`` artifact (a minute or two on a CPU, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("ppo_overoptimisation", overoptimisation_config(), _build_overoptimisation,
                           made_by="lesson 06 (rlhf_helpers.rlhf)", together=True)


def overoptimisation_runs() -> list[dict]:
    """One dict per beta: ``{"beta", "checkpoints", "history", "examples" (the last judgement's
    answers), "seconds"}``."""
    return json.loads((overoptimisation_path() / "runs.json").read_text())["runs"]


def peak(checkpoints: list[dict], key: str = "gold") -> dict:
    """The checkpoint where ``key`` is highest (the first, on a tie)."""
    return max(checkpoints, key=lambda c: c[key])


def plot_overoptimisation(runs: list[dict], axes=None):
    """Proxy (reward-model score) and gold utility against the square root of KL, one line per run.

    ``runs``: dicts with ``beta`` and ``checkpoints`` (``kl``, ``score``, ``gold``). As in Gao et
    al. 2022 the x axis is sqrt(KL), a distance from the SFT model in nats^1/2: KL itself grows
    quadratically with it. Returns the two axes.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    proxy_ax, gold_ax = axes
    for i, run in enumerate(runs):
        distance = [max(c["kl"], 0.0) ** 0.5 for c in run["checkpoints"]]
        label = run.get("label") or f"beta={run['beta']:g}"
        proxy_ax.plot(distance, [c["score"] for c in run["checkpoints"]], marker="o", markersize=3, color=f"C{i}",
                      label=label)
        gold_ax.plot(distance, [c["gold"] for c in run["checkpoints"]], marker="s", markersize=3, color=f"C{i}",
                     label=label)
        best = peak(run["checkpoints"])
        gold_ax.scatter([best["kl"] ** 0.5], [best["gold"]], s=90, facecolors="none", edgecolors=f"C{i}")
    for ax, name in ((proxy_ax, "proxy: reward-model score (normalised)"), (gold_ax, "gold utility (the hidden human)")):
        ax.set_xlabel("sqrt(KL(policy || SFT)) on held-out prompts (nats^1/2)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    proxy_ax.set_title("What PPO optimises")
    gold_ax.set_title("What we wanted (circle: the best checkpoint)")
    return proxy_ax, gold_ax


# --------------------------------------------------------------------------------------------
# The LoRA reference trick
# --------------------------------------------------------------------------------------------


def lora_ppo_policy(r: int, alpha: int):
    """A LoRA policy for PPO whose adapter-off model is the SFT model, as ``(PeftModel, tokenizer)``.

    Lesson 04's ``sft_lora`` adapter is merged into its base (``merge_and_unload``): that merged
    model is the SFT model, and so PPO's reference. A *fresh* rank-``r`` adapter on top is the
    policy; its ``B`` starts at zero, so at step 0 policy and reference agree and the KL is 0.
    (Continuing to train the ``sft_lora`` adapter itself would not do: with it switched off the
    model is the *base* model, which never learned to answer, and the KL penalty would pull the
    policy back toward it.) The same recipe as trl's 20 B example: merge the SFT adapter, then train
    a new one with PPO.
    """
    from rlhf_helpers import lora, peft_sft

    sft_lora, tokenizer = peft_sft.load_sft_lora()
    merged = sft_lora.merge_and_unload()  # a plain model (GPT2LMHeadModel by default): the SFT model of lesson 04
    return lora.wrap_with_peft(merged, lora.peft_lora_config(r=r, alpha=alpha, model=merged)).eval(), tokenizer


def reference_memory(policy, lora_policy) -> dict:
    """Parameter bytes of PPO's policy + reference: a frozen full copy versus a LoRA adapter switched off.

    Full fine-tuning needs the policy and a second, frozen copy (``2 *`` the model); a LoRA policy
    *is* its reference with the adapter disabled, so the reference costs 0 extra bytes and only the
    adapter is added to the base. Returns bytes for each part and the saving.
    """
    from rlhf_helpers import lora

    model_bytes = lora.parameter_bytes(policy)
    adapter_bytes = lora.parameter_bytes(lora_policy, trainable_only=True)
    full = 2 * model_bytes
    with_lora = lora.parameter_bytes(lora_policy)  # base + adapter, once
    return {"model_bytes": model_bytes, "adapter_bytes": adapter_bytes, "full_policy_and_reference": full,
            "lora_policy_and_reference": with_lora, "saved_bytes": full - with_lora,
            "saved_fraction": (full - with_lora) / full}


def lora_ppo_demo(policy, tokenizer, steps: int, sizes, *, judge: dict, batch_size: int = 16) -> dict:
    """A few PPO steps with a LoRA ``policy`` (``lora_ppo_policy``) and no reference model at all.

    Returns the history, and whether every frozen weight stayed untouched (only the adapter trains).
    """
    frozen = {name: p.detach().clone() for name, p in policy.named_parameters() if not p.requires_grad}
    config = ppo_config(sizes, batch_size=batch_size, mini_batch_size=min(batch_size, sizes.mini_batch_size))
    history = train(policy, None, tokenizer, config, steps, **judge)
    untouched = all(torch.equal(p, frozen[name]) for name, p in policy.named_parameters() if name in frozen)
    return {"history": history, "base_untouched": untouched}
