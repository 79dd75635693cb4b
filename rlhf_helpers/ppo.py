"""PPO for language models (lesson 06): step 3 of the InstructGPT recipe, written out in full.

The SFT model is the *policy*. Each PPO step:

1. **Rollouts.** Sample one response per prompt (plain temperature sampling: no top-k, no
   top-p), cut each response after its first ``<|im_end|>``, and record the log-probability of
   every sampled token *at the sampling temperature* (the logits are divided by it).
2. **Scores.** The reward model reads prompt + response and gives one number, read at the last
   real token. It is normalised with the caller's ``(mean, std)`` (Ziegler et al. 2019 make the
   initial policy's samples score mean 0, std 1; ``score_statistics`` measures that), and a
   response that never ended gets a fixed score instead (``missing_eos_penalty``, -1 by default).
   The reward model must read the text exactly as it was trained to: ours (lesson 05) was trained
   by trl on the chat template's rendering, which ends with a newline after ``<|im_end|>``, so
   lesson 06 scores through ``reward_fn=reward.score`` rather than the raw token ids.
3. **Per-token rewards.** Every response token pays ``-beta * (logprob - ref_logprob)``, a
   sample of the KL divergence from the *reference* (the frozen SFT model); the last real token
   also gets the score. ``beta`` is fixed, or steered toward a target KL by an adaptive
   controller (Ziegler et al. 2019).
4. **Advantages.** A value model (a copy of the reward model, one value per token) estimates
   the return to come; generalised advantage estimation (GAE, gamma = 1, lambda = 0.95) turns
   rewards and values into advantages, then advantages are whitened over the batch, padding
   left out of every mean.
5. **Update.** A few epochs over shuffled minibatches of the rollouts: the clipped-ratio
   policy loss plus the clipped value loss, one AdamW step per minibatch, gradient norm clipped.

It follows OpenAI's ``lm-human-preferences`` as reproduced in Huang et al. 2024, "The N+
implementation details of RLHF with PPO" (https://arxiv.org/abs/2403.17031), and is laid out
like CleanRL's single-file ``ppo.py``: pure functions first (each one tested), the loop last.
Dropout is off in every model, so the log-probabilities of the rollout and of the update agree.

Two choices differ from trl's old ``PPOv2Trainer`` and are deliberate: the episode *ends* at the
last real response token (GAE bootstraps nothing after it; trl kept one value past the end),
and the reward model's score is read at an index we compute from our masks, not by searching
for the pad token (the same token unless the policy samples ``<|pad|>`` itself).

Beyond one CPU process, three switches, each a no-op alone on a CPU (so one process computes
exactly what it always did):

- **Several processes** (``accelerate launch``, see ``rlhf_helpers.distributed``): the batch of
  prompts is the global batch, ``batch_size`` on any number of processes; each process samples
  and scores its slice, whitens advantages with the global batch's mean and variance
  (``global_masked_whiten``), trains on its share of every global minibatch and averages its
  gradients with the others', so every copy of the policy takes the step one process would take
  on the whole minibatch. The metrics and the KL controller see the global batch.
- **Gradient accumulation** (``PPOConfig.micro_batch_size``): a minibatch too big for memory is
  run in micro-batches whose gradients add up to the whole minibatch's.
- **Mixed precision**: the forward passes run in bf16 where the profile asks for it on CUDA
  (``env.autocast``); log-probabilities, values and losses are computed in float32.

What is left out: reward whitening and clipping, learning-rate annealing, early stopping on the
approximate KL, several samples per prompt, and a key/value cache shared between rollout and
scoring.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf_helpers import distributed
from rlhf_helpers.env import autocast

END_TOKEN = "<|im_end|>"  # closes the assistant's message in the course's ChatML template

# --------------------------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Everything one PPO run needs besides the models and the prompts."""

    batch_size: int = 64  # prompts, hence responses, per PPO step
    mini_batch_size: int = 16  # responses per gradient step
    ppo_epochs: int = 4  # passes over each batch of rollouts
    lr: float = 1e-4  # AdamW, for the policy and the value model alike
    clip_eps: float = 0.2  # the policy ratio is clipped to [1 - eps, 1 + eps]
    clip_range_value: float = 0.2  # a new value may move this far from the old one, in the loss
    vf_coef: float = 0.1  # weight of the value loss in the total loss
    gamma: float = 1.0  # discount: 1, a response is short and only its end is scored
    lam: float = 0.95  # GAE's lambda: 1 is the Monte-Carlo return, 0 one-step TD
    temperature: float = 0.7  # sampling temperature, also used for every log-probability
    max_new_tokens: int = 32  # longest response
    init_kl_coef: float = 0.05  # beta, the price of one nat of KL from the reference
    target_kl: float | None = None  # None: beta stays fixed; else adapt beta toward this KL
    kl_horizon: int = 10_000  # the adaptive controller's horizon, in samples
    missing_eos_penalty: float | None = -1.0  # normalised score of a response with no end token
    max_grad_norm: float = 1.0  # gradient-norm clipping
    seed: int = 0
    # rows per forward and backward pass within a minibatch, in each process (gradient accumulation);
    # None: the whole minibatch at once. The step is the same either way, up to rounding.
    micro_batch_size: int | None = None

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of mini_batch_size "
                             f"{self.mini_batch_size}.")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be None or at least 1, got {self.micro_batch_size}.")
        if self.temperature <= 0:
            raise ValueError("PPO samples, so temperature must be > 0 (1.0 is the model's own distribution).")


# --------------------------------------------------------------------------------------------
# Statistics over the real tokens only
# --------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The mean of ``x`` where ``mask`` is 1; whatever sits under the padding is never read."""
    mask = mask.bool()
    x = torch.where(mask, x, torch.zeros_like(x))  # 0 * inf would be nan, so select, don't multiply
    if dim is None:
        return x.sum() / mask.sum()
    return x.sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """The variance of ``x`` where ``mask`` is 1; ``unbiased`` applies Bessel's n / (n - 1)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("An unbiased variance needs at least two unmasked values.")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Rescale ``x`` to (masked) variance 1, and mean 0 if ``shift_mean``; padding comes out 0.

    PPO whitens advantages so that the step size does not depend on the reward's scale, and
    half of the tokens in a batch get pushed up, half down. Padding must not count, or the
    many zeros after short responses would drag the mean. (trl's old ``masked_whiten``.)
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------
# The same statistics over a batch split across processes
# --------------------------------------------------------------------------------------------


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_mean`` over the global batch, when its rows are split across processes.

    Each process sums its real values and counts them; one all-reduce adds up the sums and the
    counts, and their ratio is the mean one process would compute on every row at once (the mean
    of the processes' means would not be: their responses hold different numbers of tokens).
    Alone, ``masked_mean``.
    """
    if distributed.world_size() == 1:
        return masked_mean(x, mask)
    mask = mask.bool()
    local = torch.stack([torch.where(mask, x, torch.zeros_like(x)).sum(), mask.sum().to(x.dtype)])
    total = distributed.sum_over_processes(local)
    return total[0] / total[1]


def global_masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """``masked_var`` over the global batch: the same two passes (the global mean, then the mean
    squared distance from it), each one all-reduce. Alone, ``masked_var``."""
    if distributed.world_size() == 1:
        return masked_var(x, mask, unbiased)
    mean = global_masked_mean(x, mask)
    var = global_masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = distributed.sum_over_processes(mask.sum())
        if n < 2:
            raise ValueError("An unbiased variance needs at least two unmasked values.")
        var = var * n / (n - 1)
    return var


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                         eps: float = 1e-8) -> torch.Tensor:
    """``masked_whiten`` with the global batch's mean and variance, so that every process scales its
    advantages as one process would scale the whole batch's. Alone, ``masked_whiten``."""
    if distributed.world_size() == 1:
        return masked_whiten(x, mask, shift_mean, eps)
    mean, var = global_masked_mean(x, mask), global_masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------
# Log-probabilities of the sampled tokens
# --------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p(token)`` ``(B, T)`` under ``softmax(logits / temperature)``, the distribution sampled.

    Forgetting the temperature is a classic bug: the rollout samples from a sharper distribution
    than the one PPO then thinks it sampled from, and the ratio is wrong from the first step.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The mean entropy (nats) of the next-token distribution over the real response tokens."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T): -sum_v p(v) log p(v)
    return masked_mean(entropy, mask)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, as ``generate`` numbers them.

    With left padding a GPT-2 left to itself would number positions from the first *pad*, and its
    log-probabilities would not be those of the tokens it sampled. Llama and Qwen2 take the same
    ``position_ids`` for their rotary embeddings.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """The logits ``(B, R, V)`` that predicted each of the last ``response_len`` tokens.

    The token at position t is predicted by the logits at position t - 1, hence the shift.
    """
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask))
    prompt_len = sequences.size(1) - response_len
    return out.logits[:, prompt_len - 1:-1]


@torch.no_grad()
def reference_logprobs(policy, ref_model, sequences: torch.Tensor, attention_mask: torch.Tensor,
                       responses: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of ``responses`` under the reference model.

    ``ref_model`` is a frozen copy of the SFT model, or ``None`` when ``policy`` is a peft (LoRA)
    model: the reference is then the policy itself with its adapter switched off, which costs no
    memory at all (``with policy.disable_adapter():``).
    """
    if ref_model is not None:
        logits = response_logits(ref_model, sequences, attention_mask, responses.size(1))
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            logits = response_logits(policy, sequences, attention_mask, responses.size(1))
    else:
        raise ValueError("ref_model=None needs a peft policy (one with disable_adapter()); "
                         "pass a frozen copy of the SFT model as ref_model instead.")
    return logprobs_from_logits(logits, responses, temperature)


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


def truncate_after_end(responses: torch.Tensor, end_id: int, pad_id: int):
    """Replace every token after the first ``end_id`` by ``pad_id``.

    Returns ``(responses, mask, has_end)``: the truncated responses, a mask ``(B, R)`` that is 1
    on the real tokens (the end token included: choosing to stop is an action too), and whether
    each row ended at all. The mask is 1 on a prefix of each row.
    """
    is_end = responses == end_id
    after_end = (is_end.long().cumsum(1) - is_end.long()) > 0  # an end token strictly before
    return responses.masked_fill(after_end, pad_id), (~after_end).long(), is_end.any(1)


def special_ids(tokenizer) -> tuple[int, int]:
    """The ids of the end token (a response stops there) and of the pad token.

    The end token is the one the chat template closes an answer with (``tokenizers.end_of_answer_id``):
    ``<|im_end|>`` in the course's ChatML, whatever the template of a ``--model`` writes otherwise.
    A tokenizer without a template (a test's) needs a token named ``<|im_end|>``.
    """
    from rlhf_helpers.tokenizers import end_of_answer_id

    if getattr(tokenizer, "chat_template", None):
        end_id = end_of_answer_id(tokenizer)
    else:  # no template (plain prompts): the ChatML end token by name
        end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    if end_id is None or end_id == tokenizer.unk_token_id or tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer needs an end token ({END_TOKEN}, or the one its chat template closes an "
                         "answer with) and a pad token (the course tokenizer has both).")
    return end_id, tokenizer.pad_token_id


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as left-padded ``(ids, attention mask)``, through the chat template if there is one.

    Left padding puts every prompt's last token in the same column, so responses start together.
    """
    if getattr(tokenizer, "chat_template", None):
        from rlhf_helpers.sft import chat_prompt

        prompts = [chat_prompt(tokenizer, p) for p in prompts]
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.no_grad()
def sample_responses(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: PPOConfig,
                     end_id: int, pad_id: int):
    """Sample one response per prompt at ``config.temperature``, then ``truncate_after_end``.

    ``top_k=0`` and ``top_p=1.0`` switch off the filters ``generate`` might otherwise take from a
    generation config: PPO's log-probabilities assume the full (tempered) distribution.
    """
    from rlhf_helpers.models import context_length

    policy.eval()
    context = context_length(policy)
    if prompt_ids.size(1) + config.max_new_tokens > context:
        raise ValueError(f"Prompts of {prompt_ids.size(1)} tokens + {config.max_new_tokens} new tokens "
                         f"exceed the model's context of {context}; lower max_new_tokens.")
    sequences = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True,
                                temperature=config.temperature, top_k=0, top_p=1.0,
                                max_new_tokens=config.max_new_tokens, eos_token_id=end_id, pad_token_id=pad_id)
    return truncate_after_end(sequences[:, prompt_ids.size(1):], end_id, pad_id)


# --------------------------------------------------------------------------------------------
# The reward model and the value model
# --------------------------------------------------------------------------------------------


class ValueModel(nn.Module):
    """A transformer ``backbone`` and a linear ``head``: one scalar per token, ``(B, T)``.

    The value at position t estimates the return to come from the state "prompt + response up
    to token t". It is a separate network from the policy (Huang et al.'s recipe), started from
    the reward model, which already knows how to judge a response.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # float32 values even from a bf16 forward pass


def value_model_from_reward_model(reward_model) -> ValueModel:
    """A ``ValueModel`` initialised as a copy of a reward model (``AutoModelForSequenceClassification``
    with one label: ``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification``, ...).

    Its transformer (``reward_model.base_model``: GPT-2's ``transformer``, Llama's ``model``) and its
    ``score`` head are deep-copied, so training the value model leaves the reward model untouched.
    """
    return ValueModel(copy.deepcopy(reward_model.base_model), copy.deepcopy(score_head(reward_model)))


def score_head(reward_model) -> nn.Linear:
    """The reward model's scalar head: ``score``, the name transformers gives it in every decoder's
    ``...ForSequenceClassification``."""
    head = getattr(reward_model, "score", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(reward_model).__name__} has no linear 'score' head; build the reward model with "
                         "AutoModelForSequenceClassification (num_labels=1) from a decoder-only model.")
    return head


def value_model_from_causal_lm(model) -> ValueModel:
    """A ``ValueModel`` from a copy of a language model's transformer and a zero head.

    For runs without a reward model (a python ``reward_fn``). Pass a plain model, not a peft one.
    """
    if hasattr(model, "disable_adapter"):
        raise ValueError("Pass the plain (or merged) language model, not a peft model.")
    head = nn.Linear(model.config.get_text_config().hidden_size, 1, bias=False)
    nn.init.zeros_(head.weight)  # every value starts at 0: no guess is better than a random one
    return ValueModel(copy.deepcopy(model.base_model), head).to(next(model.parameters()).device)


@torch.no_grad()
def reward_model_scores(reward_model, sequences: torch.Tensor, attention_mask: torch.Tensor,
                        last_index: torch.Tensor) -> torch.Tensor:
    """The reward model's score ``(B,)`` of each sequence, read at its last real token.

    What a ``...ForSequenceClassification`` does itself when it finds the last non-pad token; we
    pass the index, known from the masks.
    """
    hidden = reward_model.base_model(input_ids=sequences, attention_mask=attention_mask,
                                     position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
    last = hidden[torch.arange(sequences.size(0), device=sequences.device), last_index]
    return score_head(reward_model)(last).squeeze(-1).float()


def normalise_scores(raw: torch.Tensor, reward_stats: tuple[float, float], has_end: torch.Tensor,
                     missing_eos_penalty: float | None) -> torch.Tensor:
    """``(raw - mean) / std``, and ``missing_eos_penalty`` instead for a response that never ended.

    The penalty *replaces* the score (``penalty_reward_value`` in ``lm-human-preferences``): a
    response that runs to the token limit scores low however good its first words, so the policy
    learns to finish its answers. ``None`` keeps the reward model's score.
    """
    mean, std = reward_stats
    scores = (raw - mean) / std
    if missing_eos_penalty is not None:
        scores = torch.where(has_end, scores, torch.full_like(scores, missing_eos_penalty))
    return scores


# --------------------------------------------------------------------------------------------
# Per-token rewards, the KL coefficient, advantages
# --------------------------------------------------------------------------------------------


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``(B, R)``: ``-beta * kl`` at every real token, plus the score at the last one.

    ``kl = logprob - ref_logprob`` of the sampled token is a one-sample estimate of the KL
    divergence from the reference; summed over a response it estimates the sequence's KL.
    Returns ``(rewards, kl)``, both 0 on padding.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.sum(1).long() - 1  # the last real token of each response
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] += scores
    return rewards, kl


class FixedKLController:
    """A constant ``beta``."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Steer ``beta`` so that the policy's KL from the reference approaches ``target``.

    Ziegler et al. 2019 ("Fine-tuning language models from human preferences"): with the
    proportional error ``e = clip(KL / target - 1, -0.2, 0.2)``, multiply beta by
    ``1 + e * n_steps / horizon`` after each batch of ``n_steps`` samples. Too much KL raises the
    price of KL; too little lowers it. The clip keeps one odd batch from swinging beta far.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


def kl_controller(config: PPOConfig):
    """Adaptive if ``config.target_kl`` is set, else fixed at ``config.init_kl_coef``."""
    if config.target_kl is None:
        return FixedKLController(config.init_kl_coef)
    return AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (did step t go better than expected?) and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. The episode ends at the last real token: rewards
    and values under the padding are zeroed, so nothing is bootstrapped past the end (the mask
    must be 1 on a prefix of each row, as ``truncate_after_end`` makes it). Returns
    ``(advantages, returns)`` with ``returns = advantages + values``, the value model's target.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    T = rewards.size(1)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


# --------------------------------------------------------------------------------------------
# The two losses
# --------------------------------------------------------------------------------------------


def policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_eps: float = 0.2):
    """PPO's clipped surrogate loss over the real tokens; returns ``(loss, clip_frac, approx_kl)``.

    ``ratio = pi_new / pi_old`` of each sampled token. The loss is
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``: once the ratio has moved ``eps``
    in the direction the advantage favours, the clipped term wins and its gradient is 0, so one
    batch cannot push the policy far. ``clip_frac`` is the fraction of tokens where that
    happened (trl's ``pg_clipfrac``). ``approx_kl`` estimates KL(old || new) with
    ``(ratio - 1) - log ratio`` (Schulman's k3, CleanRL's ``approx_kl``): always >= 0.
    """
    logratio = new_logprobs - old_logprobs
    ratio = torch.exp(logratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float = 0.2):
    """The clipped value loss over the real tokens; returns ``(loss, value_clip_frac)``.

    ``0.5 * max((V - R)^2, (V_clipped - R)^2)`` where ``V_clipped`` is the new value kept within
    ``clip_range_value`` of the value at rollout time: the pessimistic of the two, as in
    OpenAI's baselines. ``value_clip_frac`` is the fraction of tokens where the clipped error won.
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_loss = (new_values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_frac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over the real tokens of the global batch.

    1: the value model predicts the returns perfectly; 0: no better than their mean; negative:
    worse than that. NaN when the returns do not vary. Under a launch the variances are the
    global batch's (``global_masked_var``); alone, this batch's.
    """
    var_returns = global_masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return float("nan")
    return float(1 - global_masked_var(returns - values, mask, unbiased=False) / var_returns)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0, in the modules and in the config; returns it.

    With dropout on, the same tokens get different log-probabilities on every forward pass: the
    ratio would not start at 1, and the KL to the reference would be noise. ``model.eval()``
    alone is not enough, because the update runs the policy in training mode. GPT-2 drops out
    through ``nn.Dropout`` modules; Llama and Qwen2 keep their attention's rate as a number
    (``attention_dropout``), read at every forward pass.
    """
    config = getattr(model, "config", None)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout"):
        if config is not None and hasattr(config, name):
            setattr(config, name, 0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def make_optimizer(policy: nn.Module, value_model: nn.Module, lr: float) -> torch.optim.AdamW:
    """One AdamW (eps 1e-5, no weight decay) over the trainable parameters of both models.

    The two models share no parameter, so one optimizer over the summed loss is the same as two
    optimizers, except that the gradient norm is clipped over both at once (as trl does).
    """
    params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0)


def decode(tokenizer, responses: torch.Tensor) -> list[str]:
    """Response texts, special tokens (end, padding) dropped, whitespace stripped."""
    return [text.strip() for text in tokenizer.batch_decode(responses, skip_special_tokens=True)]


@torch.no_grad()
def score_responses(prompts: list[str], texts: list[str], sequences: torch.Tensor,
                    attention_mask: torch.Tensor, last_index: torch.Tensor, reward_model=None,
                    reward_fn=None) -> torch.Tensor:
    """Raw scores ``(B,)``: from ``reward_fn(prompts, texts)`` if given, else from the reward model.

    A python ``reward_fn`` (a verifiable reward, or a test's) reads texts; the reward model reads
    the token ids.
    """
    if reward_fn is not None:
        return torch.as_tensor(reward_fn(prompts, texts), dtype=torch.float32, device=sequences.device)
    reward_model.eval()
    return reward_model_scores(reward_model, sequences, attention_mask, last_index)


@torch.no_grad()
def rollout(policy, ref_model, value_model, tokenizer, prompts: list[str], config: PPOConfig,
            reward_model=None, reward_fn=None, reward_stats: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Steps 1 and 2 for one batch of prompts: sample answers, and score them.

    Returns a dict of tensors, one row per answer: the ``sequences`` (prompt then answer) with
    their ``attention_mask``; the ``responses``, their ``mask`` (1 on real tokens) and ``has_end``;
    the policy's ``logprobs`` of its own tokens and the reference's ``ref_logprobs``; the value
    model's ``values``; the ``raw_scores`` and normalised ``scores``; the mean ``entropy``; and
    the answers as ``texts``. Everything the rest of the step needs, computed without gradients.
    The forward passes run in bf16 where the profile asks for it on CUDA (``env.autocast``).
    """
    device = next(policy.parameters()).device
    end_id, pad_id = special_ids(tokenizer)
    # 1. rollouts, and the log-probabilities the policy gave its own samples
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    with autocast(device):
        responses, mask, has_end = sample_responses(policy, prompt_ids, prompt_mask, config, end_id, pad_id)
        sequences = torch.cat([prompt_ids, responses], 1)
        attention_mask = torch.cat([prompt_mask, mask], 1)
        logits = response_logits(policy, sequences, attention_mask, responses.size(1))
        logprobs = logprobs_from_logits(logits, responses, config.temperature)
        entropy = entropy_from_logits(logits, mask, config.temperature)
        ref_logprobs = reference_logprobs(policy, ref_model, sequences, attention_mask, responses, config.temperature)
        value_model.eval()
        # the value of the state *before* each response token, read where that token is predicted
        values = value_model(sequences, attention_mask)[:, prompt_ids.size(1) - 1:-1]
        # 2. one score per response
        texts = decode(tokenizer, responses)
        last_index = attention_mask.size(1) - mask.size(1) + mask.sum(1) - 1
        raw = score_responses(prompts, texts, sequences, attention_mask, last_index, reward_model, reward_fn)
    scores = normalise_scores(raw, reward_stats, has_end, config.missing_eos_penalty)
    return dict(sequences=sequences, attention_mask=attention_mask, responses=responses, mask=mask,
                has_end=has_end, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values,
                raw_scores=raw, scores=scores, entropy=entropy, texts=texts)


@torch.no_grad()
def make_experience(policy, ref_model, value_model, tokenizer, prompts: list[str], config: PPOConfig,
                    beta: float, reward_model=None, reward_fn=None,
                    reward_stats: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Steps 1 to 4 for one batch of prompts: a ``rollout``, then ``experience_from_rollout``."""
    batch = rollout(policy, ref_model, value_model, tokenizer, prompts, config, reward_model, reward_fn,
                    reward_stats)
    return experience_from_rollout(batch, config, beta)


def experience_from_rollout(batch: dict, config: PPOConfig, beta: float) -> dict:
    """Steps 3 and 4 for a ``rollout``'s batch: rewards, advantages and returns.

    Returns the rollout's dict with ``rewards`` and ``kl`` (per token), ``returns``, the
    ``advantages`` whitened over the batch, and the ``explained_variance`` of the values. Under a
    launch, "the batch" of the whitening and of the explained variance is the global batch, every
    process's rows (``global_masked_whiten``); everything else is per row.
    """
    mask = batch["mask"]
    # 3. per-token rewards: the KL penalty everywhere, the score at the end
    rewards, kl = per_token_rewards(batch["scores"], batch["logprobs"], batch["ref_logprobs"], mask, beta)
    # 4. advantages and returns; advantages whitened over the batch
    advantages, returns = gae(rewards, batch["values"], mask, config.gamma, config.lam)
    return {**batch, "rewards": rewards, "kl": kl, "returns": returns,
            "advantages": global_masked_whiten(advantages, mask),
            "explained_variance": explained_variance(batch["values"], returns, mask)}


def minibatches(batch: dict, config: PPOConfig, generator: torch.Generator | None = None):
    """``ppo_epochs`` passes over the batch, each in a fresh random order, in minibatches of
    ``mini_batch_size`` rows: dicts holding the batch's per-row tensors."""
    n = batch["responses"].size(0)
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(batch["responses"].device)
        for start in range(0, n, config.mini_batch_size):
            rows = order[start:start + config.mini_batch_size]
            yield {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() > 0}


def new_logprobs_and_values(policy, value_model, minibatch: dict, config: PPOConfig):
    """The *current* policy's log-probabilities of a minibatch's sampled tokens, and the current
    values of the same states, with gradients: what the two losses compare with the rollout's.
    Both come out in float32, from forward passes in bf16 where the profile asks for it on CUDA."""
    response_len = minibatch["responses"].size(1)
    with autocast(minibatch["sequences"].device):
        logits = response_logits(policy, minibatch["sequences"], minibatch["attention_mask"], response_len)
        new_logprobs = logprobs_from_logits(logits, minibatch["responses"], config.temperature)
        new_values = value_model(minibatch["sequences"], minibatch["attention_mask"])[:, -response_len - 1:-1]
    return new_logprobs, new_values


def per_process_config(config: PPOConfig) -> PPOConfig:
    """The sizes one process works with under a launch: ``batch_size`` and ``mini_batch_size``
    divided by the number of processes, each of which must split evenly, so that the global batch
    and the global minibatch stay the recipe's on any number of processes. Alone, ``config``."""
    if distributed.world_size() == 1:
        return config
    return replace(config, batch_size=distributed.per_process(config.batch_size, "batch_size"),
                   mini_batch_size=distributed.per_process(config.mini_batch_size, "mini_batch_size"))


def micro_batches(minibatch: dict, size: int | None):
    """A minibatch's rows in chunks of ``size`` (the last may be shorter); None: the whole minibatch."""
    rows = minibatch["responses"].size(0)
    if size is None or size >= rows:
        yield minibatch
        return
    for start in range(0, rows, size):
        yield {k: v[start:start + size] for k, v in minibatch.items()}


def accumulate_gradients(policy, value_model, minibatch: dict, config: PPOConfig) -> torch.Tensor:
    """The backward passes of one minibatch: its loss's gradients, added into ``.grad``.

    The loss is a mean over the real tokens of the *global* minibatch. When it is computed in
    parts, in micro-batches (``config.micro_batch_size``: gradient accumulation) or in processes
    (each holding a slice of the global minibatch), each part's mean counts for its *share* of the
    whole, ``part mean * part tokens / all tokens``: the shares add up to the whole minibatch's
    mean. The gradients are multiplied by the number of processes, because
    ``distributed.average_gradients`` divides by it. So after the backward passes and the average,
    every process holds the gradient one process computes on the global minibatch at once. Alone,
    with no micro-batches, the share is exactly 1 and this is the plain backward pass.

    Returns ``(policy_loss, approx_kl, clip_frac, value_loss, value_clip_frac)`` as one tensor,
    each the global minibatch's mean, the same in every process.
    """
    world = distributed.world_size()
    tokens = distributed.sum_over_processes(minibatch["mask"].sum())  # the global minibatch's real tokens
    stats = 0
    for part in micro_batches(minibatch, config.micro_batch_size):
        new_logprobs, new_values = new_logprobs_and_values(policy, value_model, part, config)
        pg_loss, clip_frac, approx_kl = policy_loss(new_logprobs, part["logprobs"], part["advantages"],
                                                    part["mask"], config.clip_eps)
        vf_loss, vf_clip_frac = value_loss(new_values, part["values"], part["returns"], part["mask"],
                                           config.clip_range_value)
        share = part["mask"].sum() / tokens
        ((pg_loss + config.vf_coef * vf_loss) * (share * world)).backward()
        stats = stats + torch.stack([pg_loss, approx_kl, clip_frac, vf_loss, vf_clip_frac]).detach() * share
    return distributed.sum_over_processes(stats)


def ppo_update(policy, value_model, optimizer, batch: dict, config: PPOConfig,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """Step 5: one gradient step per minibatch (``minibatches``); returns the mean of each statistic.

    Under a launch ``batch`` is this process's slice of the global batch, and each process takes
    ``mini_batch_size / N`` of its rows into every global minibatch (``per_process_config``; the
    same seeded ``generator`` orders every process's rows). ``accumulate_gradients`` and
    ``distributed.average_gradients`` give every process the global minibatch's gradient, so all
    clip the same gradient and take the same step.
    """
    policy.train()  # dropout is 0 (``disable_dropout``), so train and eval modes compute the same
    value_model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = ("policy_loss", "approx_kl", "clip_frac", "value_loss", "value_clip_frac")
    stats: dict[str, list[float]] = {name: [] for name in names}
    for mb in minibatches(batch, per_process_config(config), generator):
        # one gradient step on both models
        optimizer.zero_grad(set_to_none=True)
        mb_stats = accumulate_gradients(policy, value_model, mb, config)
        distributed.average_gradients(params)  # alone: nothing
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        for key, value in zip(stats, mb_stats.tolist()):
            stats[key].append(value)
    policy.eval()
    value_model.eval()
    return {key: sum(values) / len(values) for key, values in stats.items()}


def step_metrics(batch: dict, update: dict[str, float], seconds: float, beta: float) -> dict[str, float]:
    """What one PPO step reports, from its experience ``batch`` and its ``update``'s statistics.

    ``score_raw`` (the reward model's, before normalising) and ``score`` (normalised,
    missing-end penalty applied), ``kl`` (sum over a response of logprob - ref_logprob, mean over
    the batch), ``beta`` (used this step), ``reward`` (score - beta * kl, what PPO maximises),
    ``entropy`` (nats per token, at the sampling temperature), the update's statistics (such as
    ``policy_loss``, ``approx_kl``: k3, old vs new policy, ``clip_frac``, ``value_loss``),
    ``explained_variance`` (of the rollout's values, if the batch has it), ``response_length``
    (real tokens), ``end_rate`` (fraction that ended), ``tokens_per_s`` (response tokens per
    second of the whole step) and ``seconds``.
    """
    tokens = batch["mask"].sum().item()
    n = batch["responses"].size(0)
    metrics = {
        "score_raw": batch["raw_scores"].mean().item(), "score": batch["scores"].mean().item(),
        "kl": batch["kl"].sum(1).mean().item(), "beta": beta, "reward": batch["rewards"].sum(1).mean().item(),
        "entropy": batch["entropy"].item(), **update,
        "response_length": tokens / n, "end_rate": batch["has_end"].float().mean().item(),
        "tokens_per_s": tokens / seconds, "seconds": seconds,
    }
    if "explained_variance" in batch:
        metrics["explained_variance"] = batch["explained_variance"]
    return metrics


ROW_MEANS = ("score_raw", "score", "kl", "reward", "response_length", "end_rate", "gold")  # means over answers


def global_step_metrics(metrics: dict[str, float], batch: dict) -> dict[str, float]:
    """A step's metrics over the global batch, from each process's metrics of its slice.

    Every process holds as many answers, so a mean over answers (``ROW_MEANS``) is the mean of
    the processes' means. ``entropy`` is a mean over tokens: each process's counts by its number
    of tokens. ``tokens_per_s`` adds up; ``seconds`` stays this process's (they wait for each other
    at every all-reduce). The update's statistics, ``explained_variance`` and ``beta`` are the
    global batch's already. One all-reduce; alone, ``metrics`` itself.
    """
    world = distributed.world_size()
    if world == 1:
        return metrics
    means = [key for key in ROW_MEANS if key in metrics]
    tokens = float(batch["mask"].sum())
    local = [metrics[key] for key in means] + [metrics["entropy"] * tokens, tokens, metrics["tokens_per_s"]]
    total = distributed.sum_over_processes(torch.tensor(local, dtype=torch.float64, device=batch["mask"].device))
    out = dict(metrics)
    out.update({key: (total[i] / world).item() for i, key in enumerate(means)})
    out["entropy"], out["tokens_per_s"] = (total[-3] / total[-2]).item(), total[-1].item()
    return out


def ppo_step(policy, ref_model, value_model, optimizer, tokenizer, prompts: list[str], config: PPOConfig,
             kl_ctl, *, reward_model=None, reward_fn=None, reward_stats: tuple[float, float] = (0.0, 1.0),
             gold_fn=None, generator: torch.Generator | None = None) -> tuple[dict, list[str]]:
    """One PPO step on one batch of prompts; returns ``(metrics, response texts)``.

    The metrics are ``step_metrics``'s, and ``gold`` (mean of ``gold_fn(prompts, responses)``),
    only with a ``gold_fn``.

    Under a launch ``prompts`` is the global batch, the same in every process: each process
    answers its slice (``distributed.shard``), the metrics are the global batch's
    (``global_step_metrics``), the KL controller sees the global batch's KL, and every process
    gets every answer's text, in the order of ``prompts``.
    """
    start = time.perf_counter()
    beta = kl_ctl.value
    mine = distributed.shard(prompts)  # this process's prompts; alone, all of them
    batch = make_experience(policy, ref_model, value_model, tokenizer, mine, config, beta,
                            reward_model, reward_fn, reward_stats)
    update = ppo_update(policy, value_model, optimizer, batch, config, generator)
    metrics = step_metrics(batch, update, time.perf_counter() - start, beta)
    if gold_fn is not None:
        gold = gold_fn(mine, batch["texts"])
        metrics["gold"] = sum(gold) / len(gold)
    metrics = global_step_metrics(metrics, batch)
    kl_ctl.update(metrics["kl"], len(prompts))  # the price of KL for the next step
    return metrics, distributed.gather(batch["texts"])


def prompt_batches(prompts: list[str], batch_size: int, generator: torch.Generator):
    """Endless batches of prompts: each pass over the list in a fresh random order."""
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += torch.randperm(len(prompts), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        yield [prompts[i] for i in chosen]


def train_ppo(policy, ref_model, reward_model, value_model, tokenizer, prompts: list[str], config: PPOConfig,
              *, reward_stats: tuple[float, float] = (0.0, 1.0), reward_fn=None, gold_fn=None, steps: int = 100,
              progress=None, callback=None) -> list[dict]:
    """Train ``policy`` with PPO for ``steps`` steps; returns the metrics of every step.

    ``prompts`` are plain instructions (the chat template is applied if the tokenizer has one).
    The score comes from ``reward_model`` (an ``AutoModelForSequenceClassification``), or, if it is
    given, from ``reward_fn(prompts, responses) -> list or tensor of floats`` (then
    ``reward_model`` may be None). ``value_model`` None means a copy of the reward model
    (``value_model_from_reward_model``). ``ref_model`` None means the peft policy with its
    adapter disabled. ``reward_stats`` is the ``(mean, std)`` that normalises raw scores
    (``score_statistics`` measures it on the SFT model's samples). ``gold_fn(prompts,
    responses) -> list[float]`` adds a ``gold`` metric. ``progress`` is a tqdm bar to drive;
    ``callback(metrics, prompts, responses)`` is called after every step.

    In place: ``policy`` and ``value_model`` are trained; dropout is switched off in every model
    and the reference and reward models are frozen. All models must be on the policy's device.

    Under ``accelerate launch`` every process runs this with the same arguments and they train
    one policy together (``ppo_step``): the same seeded generator draws the same global batches
    of prompts everywhere, each process samples its slice with its own seed, and the trained
    models start from rank 0's weights. ``progress`` and ``callback`` run in every process, with
    the global metrics and every answer (a callback that judges the policy judges the same
    weights everywhere); print or save from one process only if that matters.
    """
    from rlhf_helpers.env import seed_everything

    per_process_config(config)  # sizes that do not split across the processes: refused before any work
    distributed.start(next(policy.parameters()).device)
    if reward_model is None and reward_fn is None:
        raise ValueError("Give a reward_model or a reward_fn.")
    if value_model is None:
        if reward_model is None:
            raise ValueError("Without a reward model, pass a value_model (value_model_from_causal_lm(policy)).")
        value_model = value_model_from_reward_model(reward_model)
    seed_everything(config.seed + distributed.rank())  # the samples, reproducibly; each process its own
    generator = torch.Generator().manual_seed(config.seed)  # the prompts and minibatches, alike everywhere
    for model in (policy, ref_model, reward_model, value_model):
        if model is not None:
            disable_dropout(model)
    for frozen in (ref_model, reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    distributed.broadcast_parameters(policy, value_model)
    optimizer = make_optimizer(policy, value_model, config.lr)
    kl_ctl = kl_controller(config)
    batches = prompt_batches(prompts, config.batch_size, generator)
    if progress is not None:
        progress.reset(total=steps)
    history = []
    for step in range(steps):
        batch_prompts = next(batches)
        metrics, texts = ppo_step(policy, ref_model, value_model, optimizer, tokenizer, batch_prompts, config,
                                  kl_ctl, reward_model=reward_model, reward_fn=reward_fn,
                                  reward_stats=reward_stats, gold_fn=gold_fn, generator=generator)
        history.append({"step": step + 1, **metrics})
        if progress is not None:
            progress.update()
            progress.set_postfix(score=f"{metrics['score']:.2f}", kl=f"{metrics['kl']:.2f}", refresh=False)
        if callback is not None:
            callback(history[-1], batch_prompts, texts)
    return history


@torch.no_grad()
def score_statistics(policy, tokenizer, prompts: list[str], config: PPOConfig, *, reward_model=None,
                     reward_fn=None, batches: int = 4) -> tuple[float, float]:
    """``(mean, std)`` of the raw scores of ``batches`` batches of the policy's own samples.

    Measured on the SFT model before PPO, it is the ``reward_stats`` that makes the SFT model's
    responses score mean 0 and standard deviation 1, as Ziegler et al. 2019 normalise their reward
    model. (Stiennon et al. 2020 and InstructGPT instead shift it so that human demonstrations
    score 0 on average.)
    """
    device = next(policy.parameters()).device
    end_id, pad_id = special_ids(tokenizer)
    generator = torch.Generator().manual_seed(config.seed)
    source = prompt_batches(prompts, config.batch_size, generator)
    raw = []
    for _ in range(batches):
        batch_prompts = next(source)
        prompt_ids, prompt_mask = encode_prompts(tokenizer, batch_prompts, device)
        with autocast(device):
            responses, mask, _ = sample_responses(policy, prompt_ids, prompt_mask, config, end_id, pad_id)
            sequences, attention_mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1)
            last_index = prompt_ids.size(1) + mask.sum(1) - 1
            raw.append(score_responses(batch_prompts, decode(tokenizer, responses), sequences, attention_mask,
                                       last_index, reward_model, reward_fn))
    raw = torch.cat(raw)
    return raw.mean().item(), raw.std().item()
