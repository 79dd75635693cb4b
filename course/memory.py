"""How much GPU memory each stage of the course needs, computed from parameter counts.

Training memory is mostly four things, and each is a count times a size in bytes:

1. **weights** of every model the stage keeps: the ones it trains and the frozen ones it only
   runs (PPO's reference and reward model, DPO's reference);
2. **gradients**: one number per *trained* weight;
3. **AdamW's state**: two moments (a running mean and a running mean of squares) per trained
   weight, kept in fp32;
4. **activations**: what the forward pass keeps for the backward pass. They grow with the batch,
   the context length, the depth and the width, not with the parameter count.

So a trained weight costs 4 (its fp32 value) + 4 (its gradient) + 8 (two fp32 moments) = 16 bytes,
whatever the compute precision (bf16 training keeps fp32 master weights), while a frozen weight
costs only itself: 4 bytes in fp32, 2 in bf16, about half a byte in 4-bit NF4 (QLoRA). LoRA
trains small adapters and freezes the model under them; its best trick is PPO's, DPO's and
GRPO's *reference*: the frozen model a policy must stay near is the LoRA policy itself with its
adapter switched off, so it costs nothing.

Lesson 04 does the first three for one model (``rlhf_helpers.lora.training_memory_gb``); this
module adds the copies each stage keeps and the activations, and counts parameters from shapes.
Everything here is arithmetic on published shapes: a planning estimate, not a measurement. It
leaves out the CUDA context (~0.5 GB), the allocator's fragmentation and temporary buffers, which
is why a card counts as big enough only with 10% to spare. ``python -m course memory`` prints the
table that README.md shows; ``--readme`` rewrites it there.

Standard library only: the sizes of the course's own profiles are passed in (``markdown_table``
takes ``rlhf_helpers.env.PROFILES``), so this module imports neither torch nor the course.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

GIB = 2**30  # a "24 GB" GPU holds 24 GiB; the table's GB are GiB
CARDS_GIB = (24, 80)  # an RTX 4090 / L4-class card, an A100 / H100
HEADROOM = 0.9  # a card fits a stage when the estimate is at most 90% of its memory

TRAINED_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW's two fp32 moments
# Activations kept per token, per layer, per unit of width: Korthikanti et al. (2022, "Reducing
# activation recomputation in large transformer models") count 34 bytes in 16-bit, i.e. 17 values,
# leaving out the attention-score matrix that fused attention (PyTorch's SDPA) never stores.
ACTIVATION_VALUES = 17
# The logits in fp32 and the gradient of the loss with respect to them: 2 x 4 bytes per token per
# vocabulary entry. For a small model with a large vocabulary this is the biggest activation.
LOGIT_BYTES = 8
# The longest comparison trl renders in lesson 05's RewardTrainer and lesson 07's DPOTrainer
# (``max_length=128`` in rlhf_helpers/reward.py and rlhf_helpers/beyond_ppo.py).
PAIR_MAX_LENGTH = 128


# --------------------------------------------------------------------------------------------
# 1. Counting parameters from a shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer, described just enough to count its parameters.

    Two families cover every model here: GPT-2 (learned position embeddings, LayerNorm with a
    bias, a bias on every linear layer, query/key/value as one fused matrix, a two-matrix MLP) and
    Llama (rotary positions, so no position table; RMSNorm, a weight only; separate q, k, v; a
    gated three-matrix MLP; grouped-query attention, where keys and values are narrower than
    queries). SmolLM and Qwen2.5 are Llama-family; Qwen2.5 adds biases to q, k and v.
    """

    name: str
    layers: int
    width: int  # the residual stream, d_model
    vocab: int
    ffn: int  # the MLP's hidden width
    kv_width: int  # keys' and values' width: ``width`` with multi-head attention, less with GQA
    positions: int = 0  # rows of a learned position table (GPT-2: its context); 0 for rotary
    fused_qkv: bool = False  # GPT-2's c_attn: one (width -> 3 width) matrix, one LoRA adapter
    gated_mlp: bool = False  # SwiGLU: gate and up (width -> ffn), down (ffn -> width)
    linear_biases: bool = False  # GPT-2: a bias on every linear layer
    qkv_biases: bool = False  # Qwen2: biases on q, k and v only
    norm_biases: bool = False  # LayerNorm has a weight and a bias; RMSNorm only a weight
    tied_embeddings: bool = True  # the output layer reuses the token embedding matrix


def gpt2(name: str, layers: int, width: int, vocab: int, context: int) -> Shape:
    """A GPT-2 shape: the course's own models (lesson 02 exports them as GPT-2) and OpenAI's."""
    return Shape(name, layers, width, vocab, ffn=4 * width, kv_width=width, positions=context, fused_qkv=True,
                 linear_biases=True, norm_biases=True)


def llama(name: str, layers: int, width: int, vocab: int, ffn: int, kv_width: int, *, tied: bool,
          qkv_biases: bool = False) -> Shape:
    """A Llama-family shape (Llama 2, SmolLM, Qwen2.5)."""
    return Shape(name, layers, width, vocab, ffn=ffn, kv_width=kv_width, gated_mlp=True, qkv_biases=qkv_biases,
                 tied_embeddings=tied)


def block_matrices(shape: Shape) -> list[tuple[int, int]]:
    """``(inputs, outputs)`` of every linear layer in one transformer block: attention, then MLP."""
    w, kv = shape.width, shape.kv_width
    attention = [(w, w + 2 * kv)] if shape.fused_qkv else [(w, w), (w, kv), (w, kv)]
    attention.append((w, w))  # the output projection
    mlp = [(w, shape.ffn), (w, shape.ffn), (shape.ffn, w)] if shape.gated_mlp else [(w, shape.ffn), (shape.ffn, w)]
    return attention + mlp


def block_parameters(shape: Shape) -> int:
    """One block: its matrices, their biases, and two norms (before attention, before the MLP)."""
    matrices = sum(i * o for i, o in block_matrices(shape))
    if shape.linear_biases:
        biases = sum(o for _, o in block_matrices(shape))
    elif shape.qkv_biases:
        biases = shape.width + 2 * shape.kv_width
    else:
        biases = 0
    norm = 2 * shape.width if shape.norm_biases else shape.width
    return matrices + biases + 2 * norm


def parameters(shape: Shape, head: str = "lm") -> int:
    """Every parameter of the model with a language-model ``head`` (``"lm"``) or a ``"scalar"`` one.

    A reward model or a value model is the language model with its output layer (vocab scores)
    swapped for one score per position: a ``width -> 1`` layer without bias. With tied
    embeddings the output layer costs nothing (it *is* the embedding matrix), so the scalar head
    adds ``width``; untied, it also removes the ``vocab x width`` output matrix.
    """
    embeddings = (shape.vocab + shape.positions) * shape.width
    final_norm = 2 * shape.width if shape.norm_biases else shape.width
    body = embeddings + shape.layers * block_parameters(shape) + final_norm
    if head == "scalar":
        return body + shape.width
    return body + (0 if shape.tied_embeddings else shape.vocab * shape.width)


def matrix_parameters(shape: Shape) -> int:
    """The blocks' matrices only: what 4-bit quantisation stores in 4 bits (the rest stays 16-bit)."""
    return shape.layers * sum(i * o for i, o in block_matrices(shape))


def lora_parameters(shape: Shape, rank: int) -> int:
    """A rank-``rank`` LoRA adapter on every linear layer of every block.

    An adapter on an ``(inputs -> outputs)`` matrix is ``A`` (``rank x inputs``) and ``B``
    (``outputs x rank``): ``rank x (inputs + outputs)`` parameters instead of ``inputs x outputs``.
    Every linear layer is what QLoRA adapts and what the course's ``sft_lora`` targets (GPT-2's
    ``c_attn``, ``c_proj`` and ``c_fc``, see rlhf_helpers/lora.py).
    """
    return shape.layers * rank * sum(i + o for i, o in block_matrices(shape))


# --------------------------------------------------------------------------------------------
# 2. Precision, batches, and the models each stage keeps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Bytes per number of the parts that do not depend on training (trained weights: ``TRAINED_BYTES``)."""

    name: str
    frozen_matrix_bytes: float  # a frozen model's block matrices
    frozen_other_bytes: float  # its embeddings, norms and biases
    activation_bytes: int


FP32 = Precision("fp32", 4, 4, 4)  # the course's weights (the gpu profile's bf16 autocast: activations only)
BF16 = Precision("bf16", 2, 2, 2)  # frozen copies loaded in bf16, bf16 autocast; trained weights stay fp32
# QLoRA's NormalFloat-4 with double quantisation: 4 bits per weight plus 0.127 bits of scales
# (Dettmers et al., 2023). bitsandbytes quantises only the linear layers: the rest stays bf16.
NF4 = Precision("4-bit NF4", (4 + 0.127) / 8, 2, 2)


@dataclass(frozen=True)
class Batch:
    """What one forward and backward pass holds: examples, and the tokens of each sequence."""

    examples: int
    context: int


@dataclass(frozen=True)
class Model:
    """One model a stage keeps in memory."""

    role: str
    head: str  # "lm" (scores every vocabulary entry) or "scalar" (a reward or a value)
    trained: bool
    reference: bool = False  # the policy's frozen starting point: free with a LoRA policy


@dataclass(frozen=True)
class Stage:
    """A stage of the pipeline: the models it keeps, and how many sequences one example is."""

    name: str
    models: tuple[Model, ...]
    sequences_per_example: int = 1  # a comparison is two sequences: chosen and rejected


_POLICY = Model("policy", "lm", trained=True)
_REFERENCE = Model("reference", "lm", trained=False, reference=True)
_REWARD = Model("reward model", "scalar", trained=False)

STAGES: dict[str, Stage] = {
    "base": Stage("base", (_POLICY,)),
    "sft": Stage("sft", (_POLICY,)),
    "sft_lora": Stage("sft_lora", (_POLICY,)),
    "reward": Stage("reward", (Model("reward model", "scalar", trained=True),), sequences_per_example=2),
    # PPO keeps four models: the policy and the value model train (one optimizer over both),
    # the reference and the reward model only score.
    "ppo": Stage("ppo", (_POLICY, Model("value model", "scalar", trained=True), _REFERENCE, _REWARD)),
    "dpo": Stage("dpo", (_POLICY, _REFERENCE), sequences_per_example=2),
    # GRPO with lesson 05's learned reward; with the verifiable rule, drop the reward model.
    "grpo": Stage("grpo", (_POLICY, _REFERENCE, _REWARD)),
}


# --------------------------------------------------------------------------------------------
# 3. The estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Bytes of one stage, by kind. ``total`` is what the GPU must hold at the peak of a step."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def frozen_bytes(shape: Shape, head: str, precision: Precision) -> float:
    """A frozen model's weights: its block matrices and everything else, each at its precision."""
    matrices = matrix_parameters(shape)
    return matrices * precision.frozen_matrix_bytes + (parameters(shape, head) - matrices) * precision.frozen_other_bytes


def activation_bytes(shape: Shape, batch: Batch, precision: Precision, *, logits: bool) -> float:
    """What one trained model keeps for its backward pass: every layer's activations, and the logits.

    ``examples x context x layers x width x ACTIVATION_VALUES`` numbers at the activation
    precision, plus ``examples x context x vocab x LOGIT_BYTES`` for a language-model head.
    """
    tokens = batch.examples * batch.context
    body = tokens * shape.layers * shape.width * ACTIVATION_VALUES * precision.activation_bytes
    return body + (tokens * shape.vocab * LOGIT_BYTES if logits else 0)


def estimate(shape: Shape, stage: Stage, batch: Batch, precision: Precision = FP32, *,
             lora_rank: int | None = None) -> Estimate:
    """Bytes for ``stage`` on a model of ``shape`` with ``batch`` per step.

    Full fine-tuning (``lora_rank=None``): every trained model costs ``TRAINED_BYTES`` per
    parameter and every frozen one its weights. With LoRA, a trained model becomes a frozen copy
    plus an adapter (and its scalar head, trained in full); the reference disappears, because it is
    the policy with the adapter switched off. Each trained model keeps activations for its backward
    pass (PPO: the policy's and the value model's), for ``sequences_per_example`` sequences per
    example; frozen models only run forward, without keeping anything.
    """
    weights = trained = activations = 0.0
    sequences = Batch(batch.examples * stage.sequences_per_example, batch.context)
    for model in stage.models:
        if lora_rank is not None and model.reference:
            continue  # the LoRA policy with its adapter off
        if model.trained:
            activations += activation_bytes(shape, sequences, precision, logits=model.head == "lm")
        if model.trained and lora_rank is None:
            trained += parameters(shape, model.head)
            continue
        weights += frozen_bytes(shape, model.head, precision)
        if model.trained:  # LoRA: the adapter, and a scalar head in full
            trained += lora_parameters(shape, lora_rank) + (shape.width if model.head == "scalar" else 0)
    return Estimate(weights=weights + 4 * trained, gradients=4 * trained, optimizer=8 * trained,
                    activations=activations)


# --------------------------------------------------------------------------------------------
# 4. The README's table: the course's profiles and the models a learner would try next
# --------------------------------------------------------------------------------------------

# Published shapes (each model's config.json on its model card).
GPT2_SMALL = gpt2("GPT-2 124M", layers=12, width=768, vocab=50257, context=1024)
GPT2_MEDIUM = gpt2("GPT-2 355M", layers=24, width=1024, vocab=50257, context=1024)
SMOLLM_135M = llama("SmolLM-135M", layers=30, width=576, vocab=49152, ffn=1536, kv_width=3 * 64, tied=True)
QWEN25_05B = llama("Qwen2.5-0.5B", layers=24, width=896, vocab=151936, ffn=4864, kv_width=2 * 64, tied=True,
                   qkv_biases=True)
LLAMA2_7B = llama("Llama-2-7B", layers=32, width=4096, vocab=32000, ffn=11008, kv_width=4096, tied=False)

# One micro-batch of a real model: raise the effective batch with gradient accumulation, which
# costs time, not memory.
REAL_BATCH = Batch(examples=4, context=512)
REAL_LORA_RANK = 16
COLUMNS = tuple(STAGES)


@dataclass(frozen=True)
class Row:
    """One line of the table: a model, how it is trained, and its batch at each stage."""

    label: str
    shape: Shape
    precision: Precision
    batches: Mapping[str, Batch]
    lora_rank: int  # the rank of the sft_lora column (and of every column when ``lora_only``)
    lora_only: bool = False  # every stage trains adapters; there is no full pretraining column


def course_shape(profile, vocab: int) -> Shape:
    """The course's GPT at ``profile`` (an ``rlhf_helpers.env.Profile``) with the course tokenizer's vocab."""
    g = profile.gpt
    return gpt2(f"course GPT, {profile.name} profile", g.n_layer, g.n_embd, vocab, g.block_size)


def course_batches(profile) -> dict[str, Batch]:
    """Each stage's batch at ``profile``, as the course's trainers take it.

    SFT pads to the model's context; reward and DPO comparisons are cut at ``PAIR_MAX_LENGTH``;
    PPO's update runs one minibatch through the policy and the value model; GRPO's step is every
    prompt's group of answers. Prompt plus answer is at most the model's context.
    """
    context = profile.gpt.block_size
    pairs = min(PAIR_MAX_LENGTH, context)
    beyond = profile.beyond
    return {
        "base": Batch(profile.gpt.batch_size, context),
        "sft": Batch(profile.sft.batch_size, context),
        "sft_lora": Batch(profile.peft.batch_size, context),
        "reward": Batch(profile.reward.batch_size, pairs),
        "ppo": Batch(profile.ppo.mini_batch_size, context),
        "dpo": Batch(beyond.dpo_batch_size, pairs),
        "grpo": Batch(beyond.grpo_prompts * beyond.grpo_generations, context),
    }


def rows(profiles: Mapping, vocab: int) -> list[Row]:
    """The course's profiles (fp32, their own batches), then real models at ``REAL_BATCH`` in bf16."""
    course = [Row(f"course GPT, `{name}` profile ({parameters(course_shape(p, vocab)) / 1e6:.1f} M)",
                  course_shape(p, vocab), FP32, course_batches(p), lora_rank=p.peft.r)
              for name, p in profiles.items()]
    real = {stage: REAL_BATCH for stage in COLUMNS}
    full = [Row(f"{s.name}, full fine-tuning", s, BF16, real, REAL_LORA_RANK)
            for s in (GPT2_SMALL, GPT2_MEDIUM, SMOLLM_135M, QWEN25_05B)]
    adapters = [Row(f"{LLAMA2_7B.name}, LoRA r={REAL_LORA_RANK} on bf16", LLAMA2_7B, BF16, real, REAL_LORA_RANK,
                    lora_only=True),
                Row(f"{LLAMA2_7B.name}, QLoRA r={REAL_LORA_RANK} on 4-bit", LLAMA2_7B, NF4, real, REAL_LORA_RANK,
                    lora_only=True)]
    return course + full + adapters


def row_estimates(row: Row) -> dict[str, Estimate | None]:
    """Each column's estimate for ``row``; ``None`` where the stage does not apply (LoRA pretraining)."""
    out: dict[str, Estimate | None] = {}
    for name in COLUMNS:
        lora = row.lora_only or name == "sft_lora"
        if row.lora_only and name == "base":
            out[name] = None  # pretraining trains every weight: no adapter to speak of
        else:
            out[name] = estimate(row.shape, STAGES[name], row.batches[name], row.precision,
                                 lora_rank=row.lora_rank if lora else None)
    return out


def cell(total: float | None) -> str:
    """``12.3`` GB (fits 24 GB), ``31 †`` (needs an 80 GB card), ``120 ✗`` (fits neither); MB below 1 GB."""
    if total is None:
        return "—"
    gib = total / GIB
    text = f"{total / 2**20:.0f} MB" if gib < 1 else f"{gib:.1f}" if gib < 10 else f"{gib:.0f}"
    small, large = CARDS_GIB
    return text if gib <= HEADROOM * small else f"{text} †" if gib <= HEADROOM * large else f"{text} ✗"


def markdown_table(profiles: Mapping, vocab: int) -> str:
    """README.md's memory table: one row per model and method, one column per stage."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows(profiles, vocab):
        lines.append(f"| {row.label} | " + " | ".join(cell(None if e is None else e.total) for e in row_estimates(row).values()) + " |")
    return "\n".join(lines)


TABLE_START = "<!-- memory-table: generated from course/memory.py by `python -m course memory --readme` -->"
TABLE_END = "<!-- /memory-table -->"


def readme_with_current_table(readme: str, table: str) -> str:
    """The README text with its memory-table block replaced by ``table``."""
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    return readme[:start] + "\n" + table + "\n" + readme[end:]


def write_readme_table(table: str, readme: Path = Path(__file__).resolve().parents[1] / "README.md") -> None:
    """Rewrite README.md's memory table (``python -m course memory --readme``)."""
    readme.write_text(readme_with_current_table(readme.read_text(), table))
