"""The lesson-02 GPT: a GPT-2 in one file, its training loop, and its export to Hugging Face.

This is Karpathy's nanoGPT ``model.py`` (https://github.com/karpathy/nanoGPT, MIT licence), as
built in his lecture "Let's build GPT: from scratch, in code, spelled out", cut down to what the
course needs and kept to the GPT-2 architecture exactly:

- learned token and position embeddings, added together;
- ``n_layer`` pre-LayerNorm blocks: ``x = x + attn(ln_1(x))`` then ``x = x + mlp(ln_2(x))``;
- causal multi-head self-attention with 1/sqrt(head size) scaling;
- an MLP 4x wider than the model, with GPT-2's tanh-approximate GELU (``gelu_new`` in
  ``transformers``);
- a final LayerNorm, and a language-model head that shares its weight with the token
  embedding (tied embeddings);
- GPT-2's initialisation: normal(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).

Because it *is* a GPT-2, ``to_hf_gpt2`` copies it into ``transformers.GPT2LMHeadModel`` with
identical logits, and every later lesson (SFT, LoRA, reward model, PPO, DPO) works on that
standard model. ``from_hf_gpt2`` goes back.

Beyond one CPU process, ``train`` runs data-parallel under ``accelerate launch`` (see
``rlhf_helpers.distributed``) and its forward passes run in bf16 where the profile asks for it on
CUDA (``env.autocast``).

What is left out (nanoGPT has some of it): flash attention by default, ``torch.compile``, gradient
accumulation, a key/value cache for fast generation, loading OpenAI's GPT-2 checkpoints from the
hub, and the model-FLOPs-utilisation estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
import torch.nn as nn
from torch.nn import functional as F

if TYPE_CHECKING:  # transformers is imported only when a model is exported (it is slow to import)
    from transformers import GPT2LMHeadModel

    from rlhf_helpers.env import GPTSizes


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The shape of a GPT. ``GPTConfig.from_sizes(get_profile().gpt, vocab_size)`` for the course's."""

    vocab_size: int
    block_size: int  # the longest context the model can see, in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # 0.0 for short pretraining runs; 0.1-0.2 helps against overfitting
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    sdpa: bool = False  # compute attention with F.scaled_dot_product_attention (same maths, fused)

    @classmethod
    def from_sizes(cls, sizes: GPTSizes, vocab_size: int, **overrides) -> GPTConfig:
        """A config from a profile's ``GPTSizes`` (which also holds batch size and steps)."""
        shape = dict(block_size=sizes.block_size, n_layer=sizes.n_layer, n_head=sizes.n_head,
                     n_embd=sizes.n_embd)
        return cls(vocab_size=vocab_size, **{**shape, **overrides})


class CausalSelfAttention(nn.Module):
    """Every position looks at itself and the positions before it, in ``n_head`` heads at once.

    Each position emits a query ("what am I looking for?"), a key ("what do I contain?") and a
    value ("what I pass on if chosen"). The weight position t gives position s is
    softmax over s <= t of q_t . k_s / sqrt(head size); the output is the weighted sum of values.
    Dividing by sqrt(head size) keeps the dot products' variance near 1 at initialisation, so the
    softmax starts diffuse instead of nearly one-hot.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.sdpa = config.sdpa
        # one Linear computes queries, keys and values for all heads (GPT-2's c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # the heads' outputs, concatenated, are mixed back into the residual stream
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # lower-triangular mask: True where position t (row) may look at position s (column)
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        # queries, keys, values for all heads, then split the channels into heads: (B, nh, T, hs)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.sdpa:
            # the same computation in one fused kernel (much faster on a GPU)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            # affinities between every pair of positions, scaled by 1/sqrt(head size)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            # the future is hidden: -inf becomes a weight of exactly 0 after the softmax
            att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            # each position gets a weighted average of the values it attends to
            y = att @ v  # (B, nh, T, hs)
        # put the heads side by side again, then mix them
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The per-position computation after attention: widen 4x, GELU, project back.

    GPT-2 uses the tanh approximation of GELU (``approximate="tanh"``), which ``transformers``
    calls ``gelu_new``; the exact GELU would differ in the fourth decimal and break the export's
    identical logits.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer block: communicate (attention), then compute (MLP).

    Pre-LayerNorm, as in GPT-2: each sub-layer sees a normalised copy of the residual stream
    and *adds* its output back, so gradients flow straight through the ``x +`` path.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """A GPT-2 language model. ``model(idx, targets)`` returns ``(logits, loss)``.

    The parameter names follow GPT-2's (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
    ...), so the export to Hugging Face is a renaming plus a transpose.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the same matrix reads tokens in and scores them out (one tensor, two uses)
        self.transformer.wte.weight = self.lm_head.weight
        # GPT-2 initialisation: every weight normal(0, 0.02), biases 0 ...
        self.apply(self._init_weights)
        # ... and the projections that write into the residual stream scaled down, so that the
        # stream's variance does not grow with depth (2 such writes per block)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; the tied token embedding counts once.

        ``non_embedding=True`` leaves out the position embeddings (and the token embedding, which
        is also the output layer), the count scaling laws use.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``(B, T, vocab_size)`` for token ids ``idx`` ``(B, T)``; the loss if ``targets``.

        ``targets`` holds the next token at each position; positions set to -100 are ignored (the
        convention of PyTorch and Hugging Face, used later to mask prompts).
        """
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"Sequence of length {T} is longer than the model's block_size "
                             f"{self.config.block_size}; crop it to the last {self.config.block_size} tokens.")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        # what each token is plus where it is: (B, T, C) + (T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # a score for every possible next token
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend ``idx`` ``(B, T)`` by sampling up to ``max_new_tokens`` tokens, one at a time.

        ``temperature`` divides the logits (below 1: safer, above 1: wilder; 0 means always the
        most likely token); ``top_k`` samples only among the k most likely tokens. With
        ``eos_token_id`` a row that produced it is padded with it, and generation stops once every
        row has. A ``generator`` (on the model's device) makes the samples repeatable. Call
        ``model.eval()`` first, or dropout will perturb the samples. Left out: a
        key/value cache (each step recomputes the whole context, fine for short texts).
        """
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            # the model sees at most block_size tokens: keep the most recent ones
            context = idx[:, -self.config.block_size:]
            logits, _ = self(context)
            logits = logits[:, -1, :]  # only the last position predicts the next token
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    # everything below the k-th largest logit gets probability 0
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            if eos_token_id is not None:
                # rows that already ended keep emitting end-of-text
                next_id = next_id.masked_fill(finished.unsqueeze(1), eos_token_id)
                finished |= next_id.squeeze(1) == eos_token_id
            idx = torch.cat((idx, next_id), dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        return idx


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def get_batch(data: torch.Tensor, block_size: int, batch_size: int,
              generator: torch.Generator | None = None, device: torch.device | str | None = None):
    """``batch_size`` random windows of a 1-D tensor of token ids: inputs and next-token targets.

    ``y`` is ``x`` shifted by one, so one window holds ``block_size`` training examples: predict
    token t+1 from tokens 0..t, for every t.
    """
    if len(data) <= block_size:
        raise ValueError(f"Need more than block_size={block_size} tokens, got {len(data)}.")
    # random start positions (from the generator, so a seeded run repeats)
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix.tolist()]).long()
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix.tolist()]).long()
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model: GPT, splits: Mapping[str, torch.Tensor], eval_iters: int = 20,
                  batch_size: int = 32, block_size: int | None = None, seed: int = 0) -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split, in eval mode (no dropout).

    One batch's loss is noisy; averaging many is not. Each call uses the same windows (a fixed
    ``seed``), so two calls differ only because the model changed.
    """
    block_size = block_size or model.config.block_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        generator = torch.Generator().manual_seed(seed)
        losses = [model(*get_batch(data, block_size, batch_size, generator, device))[1].item()
                  for _ in range(eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train(was_training)
    return out


def cosine_lr(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> float:
    """Learning rate at ``step``: linear warmup to ``lr``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def configure_optimizers(model: nn.Module, lr: float, weight_decay: float = 0.1,
                         betas: tuple[float, float] = (0.9, 0.99),
                         muon_lr: float | None = None) -> list[torch.optim.Optimizer]:
    """The optimisers of a GPT: AdamW alone, or Muon for the blocks' matrices and AdamW for the rest.

    AdamW decays the matrices (weights, embeddings) and not the biases or LayerNorms.

    With ``muon_lr``, the 2-D weights inside the transformer blocks (attention and MLP) go to
    **Muon** (Keller Jordan, 2024) instead: SGD with Nesterov momentum whose update matrix is
    *orthogonalised* by five Newton–Schulz iterations before it is applied. Orthogonalising sets
    every singular value of the update to about 1, so the rare directions of a matrix move as
    much as the common ones, where Adam's per-number scaling lets a few directions dominate. At
    equal time on a CPU it is the largest single gain we measured for the base model (see the
    instructor guide). The embeddings, the output head (the same matrix, tied), biases and
    LayerNorms stay with AdamW, as in the Muon recipe: Newton–Schulz is for hidden matrices.
    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's step to the size of an AdamW step (Moonshot's
    convention), so its learning rate reads like AdamW's. ``torch.optim.Muon`` needs torch 2.9.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = [p for name, p in model.named_parameters()
              if muon_lr is not None and p.requires_grad and ".h." in f".{name}" and p.dim() == 2]
    rest = [p for p in params if all(p is not q for q in hidden)]
    adamw = torch.optim.AdamW([
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ], lr=lr, betas=betas)
    if not hidden:
        return [adamw]
    return [torch.optim.Muon(hidden, lr=muon_lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"), adamw]


def set_learning_rates(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Every parameter group at ``factor`` times its own peak learning rate (kept as ``peak_lr``)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
            group["lr"] = group["peak_lr"] * factor


def update(model: nn.Module, optimizers: list[torch.optim.Optimizer], loss: torch.Tensor,
           grad_clip: float = 1.0) -> torch.Tensor:
    """The second half of every training step of the course, once the batch's ``loss`` is computed;
    return the loss, detached.

    Clear the old gradients, backward (the new ones), clip their global norm to ``grad_clip``
    (0: no clipping) so that one bad batch cannot throw the model far, then let every optimiser
    update its parameters. Clearing comes before ``backward``: PyTorch *adds* new gradients to
    whatever ``.grad`` holds. Only the loss differs between the GPT's step (``train_step``), SFT's
    (``sft.sft_step``) and the reward model's (``reward.reward_step``).

    One line matters only beyond one process: under a launch each process's gradients are averaged
    with the others' before clipping (``distributed.average_gradients``), so that every copy of the
    model takes the step of the whole batch. Alone it does nothing.
    """
    from rlhf_helpers import distributed

    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(model.parameters())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def train_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor,
               grad_clip: float = 1.0) -> torch.Tensor:
    """One optimisation step on the batch ``(x, y)``; return its loss (before the update, detached).

    The loss of the batch, then ``update``: clear the old gradients, backward, clip their norm to
    ``grad_clip`` (0: no clipping), and let every optimiser take its step. The forward pass runs in
    bf16 where the profile asks for it on CUDA (``env.autocast``); on a CPU it is plain float32.
    """
    from rlhf_helpers import env

    with env.autocast(x.device):
        _, loss = model(x, y)
    return update(model, optimizers, loss, grad_clip)


def train(model: GPT, train_data: torch.Tensor, val_data: torch.Tensor | None, steps: int,
          batch_size: int, lr: float = 1e-3, *, warmup_steps: int | None = None,
          min_lr: float | None = None, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99),
          grad_clip: float = 1.0, log_every: int = 100, eval_iters: int = 10, seed: int = 1337,
          muon_lr: float | None = None, step_fn: Callable | None = None, progress=None) -> list[dict]:
    """Train ``model`` for ``steps`` steps on random windows; return the logged history.

    The optimisers are ``configure_optimizers``'s: AdamW, or with ``muon_lr`` Muon for the blocks'
    matrices and AdamW for the rest; both follow the same schedule, each from its own peak.
    Each step: set the learning rate (warmup, then cosine decay to ``min_lr``), sample a batch,
    compute the loss, backpropagate, clip the gradient norm to ``grad_clip``, update. At step 0, every
    ``log_every`` steps and at the end, both splits are evaluated with ``estimate_loss`` and a
    row ``{step, train_loss, val_loss, lr, tokens_per_s, elapsed_s}`` is appended to the history
    (``tokens_per_s`` counts training time only; ``val_loss`` is None without ``val_data``).

    ``step_fn`` takes one step (default ``train_step``; lesson 02 passes the
    learner's own). ``progress`` is a tqdm bar to drive (e.g. the artifact cache's); without one a
    ``tqdm.auto`` bar is made, and ``False`` shows none. The model is left in eval mode.

    Under ``accelerate launch`` (several processes) it trains data-parallel: every process draws
    the same global batch of ``batch_size`` windows (the same seeded generator) and trains on its
    slice (``distributed.shard``; ``batch_size`` must split evenly), ``train_step`` averages the
    gradients, and the model's copies, started from rank 0's weights, stay identical. The step
    is then the single-process step on the whole batch, up to rounding: N processes train the
    same model as one, each doing 1/N of the work. A ``step_fn`` of one's own must average the
    gradients too (or the copies drift apart). ``tokens_per_s`` counts every process's tokens.
    Left out: gradient accumulation, checkpoints, early stopping.
    """
    from rlhf_helpers import distributed
    from rlhf_helpers.artifacts import ProgressBar

    device = next(model.parameters()).device
    distributed.per_process(batch_size, "A batch")  # refuse an uneven split before any work
    distributed.start(device)
    distributed.broadcast_parameters(model)
    block_size = model.config.block_size
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps
    min_lr = lr / 10 if min_lr is None else min_lr
    optimizers = configure_optimizers(model, lr, weight_decay, betas, muon_lr)
    generator = torch.Generator().manual_seed(seed)  # the batches, reproducibly
    splits = {"train": train_data} if val_data is None else {"train": train_data, "val": val_data}
    step_fn = train_step if step_fn is None else step_fn
    own_bar = progress is None or progress is False
    bar = ProgressBar(total=steps, desc="training", unit="step", disable=progress is False) if own_bar else progress
    if not own_bar:
        bar.reset(total=steps)

    history: list[dict] = []
    start, train_seconds, tokens = time.perf_counter(), 0.0, 0

    def log(step: int, current_lr: float) -> None:
        losses = estimate_loss(model, splits, eval_iters, batch_size, block_size)
        history.append({
            "step": step, "train_loss": losses["train"], "val_loss": losses.get("val"),
            "lr": current_lr, "tokens_per_s": tokens / train_seconds if train_seconds else None,
            "elapsed_s": time.perf_counter() - start,
        })

    model.train()
    log(0, cosine_lr(0, lr, warmup_steps, steps, min_lr))
    try:
        for step in range(steps):
            tick = time.perf_counter()
            # 1. the learning rate for this step
            current_lr = cosine_lr(step, lr, warmup_steps, steps, min_lr)
            set_learning_rates(optimizers, current_lr / lr)
            # 2. a batch, then one step: loss, gradients, clipping, update
            x, y = get_batch(train_data, block_size, batch_size, generator, device)
            x, y = distributed.shard(x), distributed.shard(y)  # this process's rows (alone: all of them)
            batch_loss = step_fn(model, optimizers, x, y, grad_clip).item()  # .item() waits for the GPU: honest timing
            train_seconds += time.perf_counter() - tick
            tokens += x.numel() * distributed.world_size()
            bar.update()
            bar.set_postfix(loss=f"{batch_loss:.3f}", tok_s=f"{tokens / train_seconds:,.0f}", refresh=False)
            # 3. now and then, measure both splits properly
            if (step + 1) % log_every == 0 or step + 1 == steps:
                log(step + 1, current_lr)
    finally:
        if own_bar:
            bar.close()
    model.eval()
    return history


def nats_per_char(loss_per_token: float, tokens: int, characters: int) -> float:
    """Turn a per-token loss into nats per character: ``loss_per_token * tokens / characters``.

    A cross-entropy loss is the average number of nats (log base e) the model needs to encode a
    token. Tokens are not the same size under different tokenizers: a character-level model
    predicts one character per token, a 2 k byte-level BPE about 2.5 characters per token, so
    their per-token losses are not comparable. The *total* nats spent on a text,
    ``loss_per_token * tokens``, is; dividing it by the text's length in characters gives a
    per-character figure any tokenizer can be judged by (divide by ln 2 for bits per character).

    For context only: on Karpathy's tiny Shakespeare (1 M characters; not our corpus) nanoGPT's
    character-level model reaches a validation loss of about 1.47 nats/char on a GPU, and about
    1.88 with its small CPU recipe.
    """
    return loss_per_token * tokens / characters


# --------------------------------------------------------------------------------------------
# Export to Hugging Face GPT-2 and back
# --------------------------------------------------------------------------------------------

# Linear layers whose weight GPT-2's Conv1D stores transposed: (in, out) instead of (out, in)
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _hf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face GPT-2 names, in its layout (zeros for absent biases)."""
    out = {}
    for name, module in model.named_modules():
        if name == "lm_head" or not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            continue  # lm_head *is* wte (tied), and Hugging Face ties the two on its side too
        out[f"{name}.weight"] = module.weight.detach()
        if not isinstance(module, nn.Embedding):
            # with bias=False: GPT-2 always has biases, and a zero bias is no bias
            bias = module.bias if module.bias is not None else module.weight.new_zeros(module.weight.size(0))
            out[f"{name}.bias"] = bias.detach()
    return {name: t.t() if name.endswith(_TRANSPOSED) else t for name, t in out.items()}


def hf_config(config: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None,
              pad_token_id: int | None = None):
    """The ``transformers.GPT2Config`` describing the same network as ``config``."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_ctx=config.block_size,
        n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head, n_inner=None,
        activation_function="gelu_new", resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )


def to_hf_gpt2(model: GPT, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
               pad_token_id: int | None = None) -> GPT2LMHeadModel:
    """Copy ``model`` into a ``transformers.GPT2LMHeadModel`` that computes the same logits.

    The two are the same network; only the storage differs. GPT-2 keeps q, k and v packed in one
    ``c_attn`` (so do we), and stores its Linear layers as ``Conv1D`` with the weight transposed,
    ``(in, out)``, so those four matrices per block are transposed. The result is in eval mode,
    on ``model``'s device; ``save_pretrained(folder)`` writes it as safetensors.
    """
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_config(model.config, bos_token_id, eos_token_id, pad_token_id))
    targets = dict(hf.named_parameters())  # the tied lm_head.weight is listed once, as wte
    ours = _hf_tensors(model)
    if set(ours) != set(targets):
        raise RuntimeError(f"GPT-2 layout mismatch: only ours {sorted(set(ours) - set(targets))}, "
                           f"only theirs {sorted(set(targets) - set(ours))}")
    with torch.no_grad():
        for name, tensor in ours.items():
            targets[name].copy_(tensor)
    return hf.to(next(model.parameters()).device).eval()


def from_hf_gpt2(hf_model: GPT2LMHeadModel, **overrides) -> GPT:
    """Our ``GPT`` with the weights of a Hugging Face ``GPT2LMHeadModel`` (the inverse of the export).

    Works for any GPT-2 checkpoint with tied embeddings and the standard activation and
    LayerNorm epsilon; ``overrides`` (e.g. ``sdpa=True``) set fields of the new ``GPTConfig``.
    """
    c = hf_model.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or (c.n_inner or 4 * c.n_embd) != 4 * c.n_embd:
        raise ValueError(f"Not a standard GPT-2 MLP (activation {c.activation_function!r}, n_inner {c.n_inner}).")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12 or not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        raise ValueError("This GPT-2 variant changes LayerNorm epsilon or attention scaling; GPT cannot copy it.")
    config = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                       n_head=c.n_head, n_embd=c.n_embd, dropout=c.resid_pdrop, **overrides)
    model = GPT(config)
    theirs = hf_model.state_dict()
    targets = dict(model.named_parameters())  # the tied lm_head.weight is listed once, as wte
    with torch.no_grad():
        for name, param in targets.items():
            tensor = theirs[name]
            param.copy_(tensor.t() if name.endswith(_TRANSPOSED) else tensor)
    return model.to(hf_model.device).eval()


# --------------------------------------------------------------------------------------------
# Looking inside
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor, layer: int) -> torch.Tensor:
    """The attention weights ``(n_head, T, T)`` of block ``layer`` for one sequence ``idx`` ``(T,)``.

    Row t of a head's map is the softmax distribution position t spreads over positions <= t.
    The forward pass is run up to that block, then its queries and keys are recomputed exactly as
    ``CausalSelfAttention`` does.
    """
    model.eval()
    idx = idx.view(1, -1)
    T = idx.size(1)
    pos = torch.arange(T, device=idx.device)
    x = model.transformer.wte(idx) + model.transformer.wpe(pos)
    for block in model.transformer.h[:layer]:
        x = block(x)
    attn = model.transformer.h[layer].attn
    q, k, _ = attn.c_attn(model.transformer.h[layer].ln_1(x)).split(attn.n_embd, dim=2)
    q = q.view(1, T, attn.n_head, -1).transpose(1, 2)
    k = k.view(1, T, attn.n_head, -1).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(~attn.mask[:, :, :T, :T], float("-inf"))
    return F.softmax(att, dim=-1)[0]


# --------------------------------------------------------------------------------------------
# The base model: the `base` artifact every later lesson starts from
# --------------------------------------------------------------------------------------------

# Lesson 02's bar for the cpu profile's base model, in validation nats per character: the cpu recipe
# reaches about 1.46, an untrained model of the same shape about 2.9, the old AdamW recipe 1.66.
BASE_NATS_PER_CHAR_BAR = 1.55
BASE_VERSION = 2  # bump when the recipe below changes, so cached base models are rebuilt
BASE_SEED = 1337


def base_config(profile=None) -> dict:
    """What the ``base`` artifact depends on: the profile's GPT sizes, the tokenizer, the seed, and
    the profile's ``autocast`` when it has one (every later stage's config holds this one, so a
    bf16 pipeline never loads an fp32 one's artifacts; the ``cpu`` profile's keys are unchanged)."""
    from dataclasses import asdict

    from rlhf_helpers.env import get_profile
    from rlhf_helpers.tokenizers import course_tokenizer_config

    profile = profile or get_profile()
    config = {"gpt": asdict(profile.gpt), "tokenizer": course_tokenizer_config(),
              "seed": BASE_SEED, "version": BASE_VERSION}
    if profile.autocast is not None:
        config["autocast"] = profile.autocast
    return config


def encode_splits(tokenizer) -> dict[str, tuple[torch.Tensor, int]]:
    """The corpus split into train and validation, each as ``(token ids, number of characters)``."""
    from rlhf_helpers.data import load_corpus, train_val_split

    out = {}
    for name, text in zip(("train", "val"), train_val_split(load_corpus(), val_fraction=0.1)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out[name] = (torch.tensor(ids, dtype=torch.int16 if len(tokenizer) < 32768 else torch.int32), len(text))
    return out


def final_validation(model: GPT, val_ids: torch.Tensor, val_chars: int, batch_size: int, batches: int = 50) -> dict:
    """The validation loss per token, and per character with a 95 % bootstrap interval over the
    ``batches`` evaluation batches (fixed windows, so two models are judged on the same text)."""
    from rlhf_helpers import stats

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        losses = [model(*get_batch(val_ids, model.config.block_size, batch_size, generator, device))[1].item()
                  for _ in range(batches)]
    per_char = [nats_per_char(loss, len(val_ids), val_chars) for loss in losses]
    return {"loss_per_token": sum(losses) / len(losses), "nats_per_char": stats.bootstrap_mean(per_char)}


def train_base_model(profile, tokenizer, progress=None) -> tuple[GPT, list[dict], dict]:
    """The lesson-02 recipe: a GPT of the profile's size trained on the corpus.

    Returns the model (eval mode), the logged history and the key figures: validation loss
    per token and per character, training tokens per second, seconds and parameter count.
    """
    from rlhf_helpers.env import get_device, seed_everything

    seed_everything(BASE_SEED)
    sizes = profile.gpt
    splits = encode_splits(tokenizer)
    device = get_device()
    model = GPT(GPTConfig.from_sizes(sizes, vocab_size=len(tokenizer), sdpa=device.type == "cuda")).to(device)
    (train_ids, _), (val_ids, val_chars) = splits["train"], splits["val"]
    start = time.perf_counter()
    history = train(model, train_ids, val_ids, sizes.max_steps, sizes.batch_size, lr=sizes.lr,
                    muon_lr=sizes.muon_lr, log_every=max(1, sizes.max_steps // 12), seed=BASE_SEED,
                    progress=progress)
    seconds = time.perf_counter() - start
    val = final_validation(model, val_ids, val_chars, sizes.batch_size)
    figures = {
        "val_loss_per_token": round(val["loss_per_token"], 4),
        "val_nats_per_char": round(val["nats_per_char"].estimate, 4),
        "val_nats_per_char_low": round(val["nats_per_char"].low, 4),
        "val_nats_per_char_high": round(val["nats_per_char"].high, 4),
        "train_tokens_per_s": round(history[-1]["tokens_per_s"]),
        "train_seconds": round(seconds, 1),
        "parameters": model.num_params(),
    }
    return model, history, figures


def _build_base(folder, progress) -> None:
    """The ``base`` artifact: the trained GPT exported as GPT-2, its tokenizer, history, figures."""
    import json

    from rlhf_helpers.env import get_profile
    from rlhf_helpers.tokenizers import course_tokenizer

    tokenizer = course_tokenizer()
    model, history, figures = train_base_model(get_profile(), tokenizer, progress)
    hf = to_hf_gpt2(model.cpu(), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    hf.save_pretrained(folder / "model")  # safetensors
    tokenizer.save_pretrained(folder / "model")
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    (folder / "figures.json").write_text(json.dumps(figures, indent=1))


def base_model_path():
    """The folder of the ``base`` artifact (trained, about 2.5 minutes on a CPU, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("base", base_config(), _build_base, made_by="lesson 02 (rlhf_helpers.gpt)",
                           together=True)  # under a launch, every process trains it (``train``)


def load_saved_model(folder):
    """A model saved with its tokenizer by ``save_pretrained`` (any stage's ``model/`` folder).

    Returns ``(model, tokenizer)``, in eval mode, on the course device: a ``GPT2LMHeadModel`` for the
    course's own models, whatever architecture a ``--model`` run trained otherwise (transformers'
    ``AutoModelForCausalLM`` reads it from the folder's ``config.json``, ``models.load_causal_lm``).
    The weights come from safetensors, never from a pickle.
    """
    from rlhf_helpers import models

    return models.load_causal_lm(folder)


def load_base_model():
    """The base model as ``(GPT2LMHeadModel, tokenizer)``, in eval mode, on the course device."""
    return load_saved_model(base_model_path() / "model")


def base_history_and_figures() -> tuple[list[dict], dict]:
    """The training history and key figures saved with the ``base`` artifact."""
    import json

    folder = base_model_path()
    return json.loads((folder / "history.json").read_text()), json.loads((folder / "figures.json").read_text())
