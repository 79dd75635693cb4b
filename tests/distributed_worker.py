"""Tiny data-parallel recipes, run alone by tests/test_distributed.py and in 2 processes by this script.

    accelerate launch --config_file scale/accelerate/cpu_gloo.yaml tests/distributed_worker.py OUT

``OUT`` holds ``rollout.safetensors``, a fixed PPO rollout of 8 answers that the test made in its
own process (a fixed batch: sampling in two processes could never match sampling in one). Each
process then runs, from the same start:

1. the PPO update of that rollout (``ppo.experience_from_rollout``, ``ppo.ppo_update``,
   ``ppo.global_step_metrics``), each process on its 4 rows, in micro-batches of 2;
2. the same with ``distributed.average_gradients`` switched off (the control);
3. three steps of the base GPT's ``gpt.train``, and the same switched off;
4. two steps of ``ppo.train_ppo`` that sample (a smoke run: the two processes must stay one model).

and writes what it ended with to ``OUT/rank<r>.safetensors`` (weights) and ``OUT/rank<r>.json``
(metrics, histories, texts). Tensors travel as safetensors, never as pickles.
"""

from __future__ import annotations

import copy
import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the course root: `tests` and `rlhf_helpers`

from rlhf_helpers import distributed, gpt, ppo  # noqa: E402
from tests.test_ppo import count_t7, tiny_policy, tiny_tokenizer  # noqa: E402

PROMPTS = ["t4 t5", "t6", "t7 t8 t9", "t10", "t11 t12", "t13", "t14 t15", "t4"]
# one global minibatch per epoch, so that the rows' split into minibatches cannot differ between
# one process and two: two optimiser steps on the whole batch
CONFIG = ppo.PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=2, max_new_tokens=6, lr=1e-2, temperature=1.0)
BETA = 0.1


def fresh_models():
    """The policy and value model every run starts from: the same weights in every process."""
    policy = ppo.disable_dropout(tiny_policy(seed=0))
    value_model = ppo.value_model_from_causal_lm(copy.deepcopy(policy))
    torch.manual_seed(1)
    torch.nn.init.normal_(value_model.head.weight, std=0.1)  # values that differ, so the value loss teaches
    return policy, value_model


@torch.no_grad()
def fixed_rollout() -> dict[str, torch.Tensor]:
    """A rollout of ``PROMPTS``, per-row tensors only, with each token's entropy (``token_entropy``)
    so that a process can compute its slice's mean entropy."""
    policy, value_model = fresh_models()
    torch.manual_seed(0)
    batch = ppo.rollout(policy, copy.deepcopy(policy), value_model, tiny_tokenizer(), PROMPTS, CONFIG,
                        reward_fn=count_t7)
    logits = ppo.response_logits(policy, batch["sequences"], batch["attention_mask"], batch["responses"].size(1))
    logp = torch.log_softmax(logits / CONFIG.temperature, -1)
    rows = {k: v.contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    return {**rows, "token_entropy": -(logp.exp() * logp).sum(-1)}


def ppo_update_on(rollout: dict[str, torch.Tensor], config: ppo.PPOConfig = CONFIG):
    """Steps 3 to 5 of fresh models on a fixed rollout (under a launch, on this process's slice);
    returns ``(policy, value_model, metrics of the global batch)``."""
    policy, value_model = fresh_models()
    optimizer = ppo.make_optimizer(policy, value_model, config.lr)
    batch = ppo.experience_from_rollout({k: distributed.shard(v) for k, v in rollout.items()}, config, BETA)
    batch["entropy"] = ppo.masked_mean(batch.pop("token_entropy"), batch["mask"])
    update = ppo.ppo_update(policy, value_model, optimizer, batch, config, torch.Generator().manual_seed(0))
    metrics = ppo.global_step_metrics(ppo.step_metrics(batch, update, 1.0, BETA), batch)
    return policy, value_model, metrics


def fresh_gpt() -> gpt.GPT:
    """A tiny GPT without biases. With them, the keys' bias would have a gradient that is exactly 0
    in exact arithmetic (a softmax ignores a constant added to a whole row of scores), so what is
    computed is rounding noise, which AdamW scales up to a step of its own (about 1e-5 here):
    a difference between one process and two that says nothing about the synchronisation."""
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=False))


def train_gpt() -> gpt.GPT:
    """Three steps of the base GPT's loop on a tiny model (AdamW, gradient clipping)."""
    model = fresh_gpt()
    data = torch.arange(400) * 7 % 12
    gpt.train(model, data, None, steps=3, batch_size=4, lr=1e-2, log_every=3, eval_iters=1, seed=0, progress=False)
    return model


@contextmanager
def gradients_not_averaged():
    """The control: every process keeps its own gradients, as if the all-reduce were forgotten."""
    saved = distributed.average_gradients
    distributed.average_gradients = lambda params: None
    try:
        yield
    finally:
        distributed.average_gradients = saved


def weights(prefix: str, *models) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{i}.{name}": p.detach().clone().contiguous()
            for i, model in enumerate(models) for name, p in model.named_parameters()}


def smoke_train_ppo():
    """Two PPO steps that sample, with an adaptive KL controller; returns the policy, history, answers."""
    policy, value_model = fresh_models()
    config = ppo.PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=5, lr=1e-2, target_kl=1.0)
    seen = []
    history = ppo.train_ppo(policy, copy.deepcopy(policy), None, value_model, tiny_tokenizer(), PROMPTS, config,
                            reward_fn=count_t7, gold_fn=lambda p, r: [len(x.split()) for x in r], steps=2,
                            callback=lambda metrics, prompts, texts: seen.append([prompts, texts]))
    return policy, history, seen


def main(out: Path) -> None:
    torch.set_num_threads(1)
    distributed.start("cpu")
    rank = distributed.rank()
    from safetensors.torch import load_file, save_file

    rollout = load_file(out / "rollout.safetensors")
    tensors, report = {}, {"world_size": distributed.world_size()}
    policy, value_model, report["ppo_metrics"] = ppo_update_on(rollout, replace(CONFIG, micro_batch_size=2))
    tensors.update(weights("ppo", policy, value_model))
    with gradients_not_averaged():
        policy, value_model, _ = ppo_update_on(rollout, replace(CONFIG, micro_batch_size=2))
        tensors.update(weights("ppo_alone", policy, value_model))
    tensors.update(weights("gpt", train_gpt()))
    with gradients_not_averaged():
        tensors.update(weights("gpt_alone", train_gpt()))
    policy, report["history"], report["answers"] = smoke_train_ppo()
    tensors.update(weights("train_ppo", policy))
    save_file(tensors, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    distributed.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
