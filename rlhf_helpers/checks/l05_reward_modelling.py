"""Lesson 05's exercises: the Bradley-Terry probability, the pairwise loss, where to read the reward,
and one step of training."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check, with_stale_gradients


def reference_preference_probability(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: ``P(a ≻ b) = exp(r_a) / (exp(r_a) + exp(r_b)) = sigmoid(r_a - r_b)``."""
    return torch.sigmoid(reward_a - reward_b)


def reference_pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of the labels under Bradley-Terry, averaged over the pairs:
    ``-mean(log sigmoid(r_chosen - r_rejected))``. ``logsigmoid`` never takes the log of 0."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def reference_last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """For a right-padded batch (each row: ones, then zeros), the index of each row's last 1."""
    return attention_mask.sum(dim=1) - 1


def _rewards(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def check_preference_probability(preference_probability):
    """Exercise 05.1: the Bradley-Terry probability that ``a`` is preferred."""
    cases = [
        Case((_rewards(0, 5), _rewards(1, 5)), about="five pairs"),
        Case((torch.tensor([0.7, -1.2]), torch.tensor([0.7, -1.2])), about="equal rewards: a coin toss"),
        Case((torch.tensor([1.0, -3.0]) + 2.0, torch.tensor([0.0, -4.0]) + 2.0),
             about="adding the same constant to both rewards"),
        Case((torch.tensor([1000.0, -1000.0, 5.0]), torch.tensor([999.0, -1002.0, 1005.0])),
             about="huge rewards: exp overflows"),
        Case((_rewards(2, 2, 3), _rewards(3, 2, 3)), about="a 2-D batch"),
    ]
    return check("Exercise 05.1 (preference_probability)", preference_probability,
                 reference_preference_probability, cases,
                 hint=("Under Bradley-Terry, the probability that a beats b is exp(r_a) divided by "
                       "exp(r_a) + exp(r_b). Right on paper, but exp() overflows for large rewards: rewrite "
                       "it so that only the difference r_a - r_b appears.",
                       "Divide top and bottom by exp(r_a): 1 / (1 + exp(-(r_a - r_b))), the logistic "
                       "sigmoid of the difference.",
                       "return torch.sigmoid(reward_a - reward_b)"))


def check_pairwise_loss(pairwise_loss):
    """Exercise 05.2: the reward model's loss on a batch of labelled pairs."""
    cases = [
        Case((_rewards(4, 8), _rewards(5, 8)), about="eight pairs"),
        Case((torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-1.0, 0.5, 1.0])),
             about="right, undecided and wrong"),
        Case((torch.tensor([0.3]), torch.tensor([1.3])), about="one pair, ranked the wrong way"),
        Case((torch.tensor([40.0, -30.0, 0.0]), torch.tensor([-40.0, 70.0, 0.0])),
             about="confident pairs, one very wrong: sigmoid(-100) is 0 in float32"),
    ]
    return check("Exercise 05.2 (pairwise_loss)", pairwise_loss, reference_pairwise_loss, cases,
                 hint=("The loss is the negative log-likelihood of the labels under Bradley-Terry: for "
                       "each pair, minus the log of the probability that the chosen answer beats the "
                       "rejected one (05.1), averaged over the pairs into one number. Mind the order "
                       "(chosen against rejected), and a very wrong pair: its probability rounds to 0, "
                       "whose log is -inf.",
                       "Per pair: -log sigmoid(r_chosen - r_rejected). torch.nn.functional.logsigmoid "
                       "computes log(sigmoid(x)) without rounding to 0 first. Take minus its mean over the "
                       "pairs: a scalar tensor, not the sum.",
                       "return -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()"))


def _right_padded(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = width or max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def check_last_token_index(last_token_index):
    """Exercise 05.3: where a right-padded row's last real token is."""
    cases = [
        Case((_right_padded([5, 3, 1]),), about="three rows, padded to 5"),
        Case((_right_padded([4, 4]),), about="no padding at all"),
        Case((_right_padded([2, 7, 7, 3], width=9),), about="every row padded"),
        Case((_right_padded([1]),), about="one token"),
    ]
    return check("Exercise 05.3 (last_token_index)", last_token_index, reference_last_token_index, cases,
                 hint=("In a right-padded row the real tokens come first and the padding after them; "
                       "the mask has a 1 for each real token. Searching for the first 0 fails on a "
                       "row without padding.",
                       "The last real token's position is (number of real tokens) - 1, one index per row.",
                       "return attention_mask.sum(dim=1) - 1"))


# Exercise 05.4: one step of reward-model training, on tiny GPT-2 reward models, float64 for the
# reason given above lesson 03's step exercise (checks/l03_supervised_finetuning.py).

def _tiny_reward_model(seed: int):
    """A randomly initialised 2-layer GPT-2 with a scalar head (pad token 0), no dropout, float64."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=24, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                        num_labels=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2ForSequenceClassification(config).double()


def _pairs_batch(seed: int, chosen_lengths: list[int], rejected_lengths: list[int], vocab: int = 24) -> dict:
    """A batch as trl's collator makes it: the chosen rows, then the rejected rows in the same
    order, right-padded with the pad token 0."""
    generator = torch.Generator().manual_seed(seed)
    lengths = chosen_lengths + rejected_lengths
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        input_ids[row, :n] = torch.randint(1, vocab, (n,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


def _reward_state(seed: int, optimizer: str, chosen_lengths, rejected_lengths) -> tuple:
    from rlhf_helpers.checks.l03_supervised_finetuning import case_optimizer

    model = _tiny_reward_model(seed)
    batch = _pairs_batch(seed + 1, chosen_lengths, rejected_lengths)
    return model, case_optimizer(model, optimizer), batch, reference_pairwise_loss


def check_reward_step(reward_step):
    """Exercise 05.4: one optimisation step of the reward model on a collated batch of pairs."""
    __tracebackhide__ = True
    from rlhf_helpers.reward import reward_step as reference_reward_step

    cases = [Case(_reward_state(50, "adamw", [5, 3, 7], [2, 6, 4]), {"max_grad_norm": 0.05},
                  about="three pairs, AdamW with the Trainer's two weight-decay groups, a clip that binds, "
                        "stale gradients"),
             Case(_reward_state(51, "sgd", [4, 6], [6, 3]), {"max_grad_norm": 0.0},
                  about="two pairs, SGD with momentum, no clipping (max_grad_norm 0, as in trl)"),
             Case(_reward_state(52, "adamw", [3], [5]), {"max_grad_norm": 100.0}, about="one pair, a clip too loose to act")]
    mine = with_stale_gradients(reward_step)
    chosen = check("Exercise 05.4 (reward_step)", mine, with_stale_gradients(reference_reward_step), cases,
                   hint=("trl's collator puts every chosen answer first, then every rejected one in the same "
                         "order: the rewards (one per row) split into halves, not alternate rows. The loss is the "
                         "function you are given, chosen against rejected. Then fresh gradients (stale ones are "
                         "waiting), their norm clipped unless max_grad_norm is 0, one optimiser step. Give back "
                         "the loss from before the step, detached.",
                         "rewards from model(input_ids=..., attention_mask=...).logits[:, 0]; split them with "
                         "rewards.chunk(2) into chosen and rejected; loss_fn(chosen, rejected); "
                         "optimizer.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), "
                         "max_grad_norm) when max_grad_norm > 0; optimizer.step(); return loss.detach().",
                         "rewards = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits[:, 0]\n"
                         "  chosen_rewards, rejected_rewards = rewards.chunk(2)\n"
                         "  loss = loss_fn(chosen_rewards, rejected_rewards)\n  optimizer.zero_grad()\n  loss.backward()\n"
                         "  if max_grad_norm > 0:\n      torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n"
                         "  optimizer.step()\n  return loss.detach()"))
    return reward_step if chosen is mine else reference_reward_step
