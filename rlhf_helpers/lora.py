"""LoRA (lesson 04): fine-tune a frozen model by training two thin matrices per layer.

Low-Rank Adaptation (Hu et al. 2021, https://arxiv.org/abs/2106.09685) leaves a pretrained
weight ``W`` (``out x in``) frozen and learns an update of rank ``r``::

    W' = W + (alpha / r) * B @ A        A: (r, in),  B: (out, r),  r << min(in, out)

so a layer computes ``x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T``. ``A`` starts random
(kaiming-uniform, like ``nn.Linear``) and ``B`` starts at zero, so at step 0 the adapted model
*is* the base model, and only ``r * (in + out)`` numbers per layer are trained instead of
``in * out``. Dividing by ``r`` keeps the update's size roughly independent of ``r``, so a
learning rate tuned at one rank still works at another. After training, ``B @ A`` can be folded
into ``W`` (``merge_lora``): the merged model is an ordinary model, with no extra cost at
inference.

GPT-2 (``transformers.GPT2LMHeadModel``) stores its projections as ``Conv1D`` layers whose weight
is ``(in, out)``, the transpose of ``nn.Linear``'s, and computes ``x @ W + b``. ``LoRALinear``
wraps either kind; its ``A`` and ``B`` always use ``nn.Linear``'s layout, as peft's do, and only
the merge has to transpose.

Also here: saving an adapter alone (a few hundred kilobytes, as safetensors), the same adapter
through peft (``peft_lora_config``, ``wrap_with_peft``, ``copy_lora_into_peft``), where LoRA goes
in a model of any architecture (``lora_targets``: every projection of its decoder layers), and the
memory arithmetic behind QLoRA (``training_memory_gb``, ``memory_table``).

Left out: quantisation itself (QLoRA's 4-bit NF4 base weights need bitsandbytes and a CUDA GPU;
here the 4-bit figure is arithmetic only), LoRA on embeddings, trainable biases, several adapters
on one model, and variants (DoRA, rsLoRA's alpha / sqrt(r), LoRA+, PiSSA initialisation).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's attention and MLP projections


def _conv1d_class() -> type:
    """``transformers``' ``Conv1D``, imported on first use (transformers is slow to import)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` or GPT-2 ``Conv1D`` plus a trainable low-rank update.

    ``forward(x) = base(x) + dropout(x) @ A.T @ B.T * scale`` with ``scale = alpha / r``.
    ``A`` is ``(r, in_features)``, initialised as ``nn.Linear`` initialises its weight (peft does
    the same); ``B`` is ``(out_features, r)`` and starts at zero, so the layer starts out exactly
    equal to ``base``. Dropout (if any) acts on the LoRA path's input only.

    The ``base`` layer's parameters are frozen here and never change; ``merge`` returns a new
    plain layer with the update folded in.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, _conv1d_class())):
            raise TypeError(f"LoRALinear wraps nn.Linear or transformers' Conv1D, not {type(base).__name__}")
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base = base.requires_grad_(False)  # the pretrained weight stays as it is
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        weight = base.weight
        # A: (r, in), random like an nn.Linear weight; B: (out, r), zero, so B @ A = 0 at first
        self.A = nn.Parameter(torch.empty(r, self.in_features, dtype=weight.dtype, device=weight.device))
        self.B = nn.Parameter(torch.zeros(self.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def is_conv1d(self) -> bool:
        """True when the base layer stores its weight as ``(in, out)`` (GPT-2's ``Conv1D``)."""
        return not isinstance(self.base, nn.Linear)

    @property
    def in_features(self) -> int:
        return self.base.weight.shape[0] if self.is_conv1d else self.base.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.base.weight.shape[1] if self.is_conv1d else self.base.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the frozen path, whatever the base layer's layout
        frozen = self.base(x)
        # the low-rank path: down to r dimensions with A, back up to out_features with B
        update = (self.dropout(x) @ self.A.T) @ self.B.T
        return frozen + update * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B @ A``, shaped ``(out_features, in_features)`` like ``nn.Linear``."""
        return self.scale * (self.B @ self.A)

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """A copy of the base layer with ``W + scale * B @ A`` as its weight (transposed for Conv1D).

        It computes what this layer computes (dropout aside), with no extra matrices. The
        copy's parameters are frozen like the base's. The sum is taken in float32, then cast back.
        """
        merged = copy.deepcopy(self.base)
        delta = self.delta_weight().float()
        delta = delta.T if self.is_conv1d else delta  # Conv1D keeps (in, out)
        merged.weight.copy_((merged.weight.float() + delta).to(merged.weight.dtype))
        return merged

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}"


# --------------------------------------------------------------------------------------------
# A whole model
# --------------------------------------------------------------------------------------------


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def add_lora(model: nn.Module, target_names=DEFAULT_TARGETS, r: int = 8, alpha: float = 16,
             dropout: float = 0.0) -> nn.Module:
    """Freeze ``model`` and wrap each targeted layer in a ``LoRALinear``; return the same model.

    A layer is targeted when the last part of its name is in ``target_names`` (for GPT-2,
    ``"c_proj"`` matches both ``attn.c_proj`` and ``mlp.c_proj``) and it is an ``nn.Linear`` or a
    ``Conv1D``. Afterwards only the ``A`` and ``B`` matrices are trainable. Layers already
    wrapped are left alone.
    """
    layer_types = (nn.Linear, _conv1d_class())
    model.requires_grad_(False)  # every base parameter, embeddings and LayerNorms included
    targets = [name for name, module in model.named_modules()
               if name.rpartition(".")[2] in target_names and isinstance(module, layer_types)]
    if not targets:
        raise ValueError(f"no nn.Linear or Conv1D layer is named any of {tuple(target_names)}")
    for name in targets:
        _replace(model, name, LoRALinear(model.get_submodule(name), r=r, alpha=alpha, dropout=dropout))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model``, by its dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged plain layer, in place; return the model.

    The result has exactly the base model's modules and parameter count, and computes what the
    adapted model computed. It stays frozen (``model.requires_grad_(True)`` to train all of it).
    """
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters; tied weights are counted once."""
    params = list(model.parameters())  # parameters() lists a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapted_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every adapted layer, in model order."""
    return [(m.in_features, m.out_features) for m in lora_layers(model).values()]


# --------------------------------------------------------------------------------------------
# Saving an adapter alone
# --------------------------------------------------------------------------------------------


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``{"<layer>.A": A, "<layer>.B": B}`` for every ``LoRALinear``.

    This is all that fine-tuning changed, so it is all an adapter file needs: the base model
    is loaded separately and shared between adapters.
    """
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.A"] = layer.A.detach().cpu().contiguous()
        out[f"{name}.B"] = layer.B.detach().cpu().contiguous()
    return out


def _settings(model: nn.Module) -> dict[str, str]:
    """The rank and alpha of ``model``'s adapters, as safetensors metadata (strings only)."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("the model has no LoRA layers: call add_lora first")
    settings = {(layer.r, layer.alpha) for layer in layers}
    if len(settings) > 1:
        raise ValueError(f"the adapters differ in (r, alpha): {sorted(settings)}")
    r, alpha = settings.pop()
    return {"r": str(r), "alpha": repr(float(alpha))}


def save_adapter(model: nn.Module, path) -> Path:
    """Write ``lora_state_dict(model)`` to ``path`` as safetensors, with r and alpha as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(lora_state_dict(model), path, metadata=_settings(model))
    return path


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Copy a saved adapter into ``model``, which must already have matching LoRA layers.

    Every adapter matrix must be in the file with the right shape, and the file's r and alpha
    must match: a different alpha would silently rescale the update.
    """
    from safetensors import safe_open

    expected = _settings(model)
    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if {k: saved.get(k) for k in expected} != expected:
        raise ValueError(f"the adapter was saved with {saved}, the model has {expected}")
    targets = lora_state_dict(model)
    if set(tensors) != set(targets):
        raise ValueError(f"adapter keys differ: only in the file {sorted(set(tensors) - set(targets))}, "
                         f"only in the model {sorted(set(targets) - set(tensors))}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, tensor in tensors.items():
            name, _, which = key.rpartition(".")
            param = getattr(layers[name], which)
            if param.shape != tensor.shape:
                raise ValueError(f"{key}: the file has shape {tuple(tensor.shape)}, the model {tuple(param.shape)}")
            param.copy_(tensor)
    return model


# --------------------------------------------------------------------------------------------
# The same adapter through peft
# --------------------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated blocks of any transformers model: its largest ``nn.ModuleList`` (GPT-2's
    ``transformer.h``, Llama's and Qwen2's ``model.layers``)."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no stack of layers (nn.ModuleList) to adapt.")
    return max(stacks, key=lambda stack: sum(1 for _ in stack.modules()))


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """Where LoRA goes in any transformers model: every projection inside its decoder layers.

    Every ``nn.Linear`` or ``Conv1D`` inside ``decoder_layers(model)`` is an attention or MLP
    projection. Returned by the last part of their names, in model order, as peft matches them:
    ``("c_attn", "c_proj", "c_fc")`` for GPT-2 (``DEFAULT_TARGETS``), ``("q_proj", "k_proj",
    "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")`` for Llama and Qwen2. The embeddings,
    ``lm_head`` and a reward model's ``score`` sit outside the layers, so they are never targeted.
    """
    layer_types = (nn.Linear, _conv1d_class())
    names = [name.rpartition(".")[2] for name, m in decoder_layers(model).named_modules() if isinstance(m, layer_types)]
    if not names:
        raise ValueError(f"The decoder layers of {type(model).__name__} hold no nn.Linear or Conv1D layer.")
    return tuple(dict.fromkeys(names))


def stores_transposed(model: nn.Module, targets=DEFAULT_TARGETS) -> bool:
    """True when ``model``'s targeted layers are ``Conv1D`` (GPT-2), whose weights are ``(in, out)``."""
    conv1d = _conv1d_class()
    return any(isinstance(m, conv1d) for name, m in model.named_modules() if name.rpartition(".")[2] in targets)


def peft_lora_config(r: int = 8, alpha: float = 16, dropout: float = 0.0, target_modules=DEFAULT_TARGETS,
                     model: nn.Module | None = None):
    """A ``peft.LoraConfig`` with the same settings as ``add_lora``: for GPT-2, or for ``model``.

    ``fan_in_fan_out=True`` tells peft that the targeted weights are stored ``(in, out)``, as
    GPT-2's ``Conv1D`` stores them. (peft sets it itself when it meets a Conv1D, with a warning;
    saying so up front avoids the warning.) peft also matches ``target_modules`` by the end of a
    layer's name, so ``"c_proj"`` adapts both projections called that. Given a ``model`` (any
    architecture), its own projections are the targets (``lora_targets(model)``) and
    ``fan_in_fan_out`` says how they store their weights.
    """
    from peft import LoraConfig

    fan_in_fan_out = True
    if model is not None:
        target_modules = lora_targets(model)
        fan_in_fan_out = stores_transposed(model, target_modules)
    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(target_modules), fan_in_fan_out=fan_in_fan_out)


@contextlib.contextmanager
def quiet_peft():
    """Silence two warnings peft raises with transformers 5, both harmless here: peft reads
    ``is_gradient_checkpointing``, which transformers renamed ``is_activation_checkpointing``; and
    prompt tuning ignores position ids (it makes its own). Nothing else is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
        yield


def wrap_with_peft(model: nn.Module, config):
    """``peft.get_peft_model(model, config)``, quietly (see ``quiet_peft``). Like ``add_lora``,
    this changes ``model`` in place."""
    from peft import get_peft_model

    with quiet_peft():
        return get_peft_model(model, config)


@torch.no_grad()
def copy_lora_into_peft(lora_model: nn.Module, peft_model) -> int:
    """Copy every from-scratch ``A`` and ``B`` into the matching peft layer; return how many layers.

    peft names the same matrices ``lora_A[adapter].weight`` (an ``nn.Linear(in, r)``, weight
    ``(r, in)``) and ``lora_B[adapter].weight`` (weight ``(out, r)``): the same layouts as ours,
    so no transpose is needed. Both models must come from the same base model, with the same r
    and alpha.
    """
    adapter = peft_model.active_adapter
    inner = peft_model.base_model.model  # the original model, with peft's layers swapped in
    layers = lora_layers(lora_model)
    for name, layer in layers.items():
        target = inner.get_submodule(name)
        if not math.isclose(target.scaling[adapter], layer.scale):
            raise ValueError(f"{name}: peft's scale is {target.scaling[adapter]}, ours {layer.scale}")
        target.lora_A[adapter].weight.copy_(layer.A)
        target.lora_B[adapter].weight.copy_(layer.B)
    return len(layers)


# --------------------------------------------------------------------------------------------
# Memory arithmetic
# --------------------------------------------------------------------------------------------

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5}

# Every *trained* parameter costs 8 bytes before any optimiser state, in either of the two usual
# set-ups: pure fp32 (4-byte weight + 4-byte gradient), or mixed precision (2-byte bf16 weight
# + 2-byte bf16 gradient + 4-byte fp32 master copy that the optimiser updates).
TRAINED_PARAM_BYTES = 8.0
# Optimiser state per trained parameter, in fp32: Adam keeps two moments (m and v).
OPTIMIZER_STATE_BYTES = {"adam": 8.0, "sgd_momentum": 4.0, "sgd": 0.0}


def training_memory_gb(n_params: float, weight_bytes: float | str, trainable_fraction: float = 1.0,
                       optimizer: str = "adam") -> float:
    """Gigabytes (10**9 bytes) needed to hold a model being fine-tuned, activations excluded.

    Of ``n_params`` parameters, a ``trainable_fraction`` is trained and the rest frozen:

    - a frozen parameter is stored once, at ``weight_bytes`` (4 fp32, 2 bf16, 1 int8, 0.5 for
      4-bit; a name from ``BYTES_PER_PARAM`` works too), with no gradient and no optimiser state;
    - a trained parameter costs ``TRAINED_PARAM_BYTES`` (8: weight and gradient, plus the fp32
      master copy in mixed precision) plus its optimiser state (Adam: 8, two fp32 moments), so
      16 bytes with Adam whatever the precision: ``training_memory_gb(7e9, 4)`` is 112.

    For LoRA, ``trainable_fraction`` is the adapters' share of all parameters (about 0.005);
    counting them inside ``n_params`` rather than on top changes the answer by well under 1 %.

    Left out: activations (they grow with batch size and sequence length, and activation
    checkpointing trades them for compute), the quantisation constants of int8 and 4-bit
    formats (NF4 with double quantisation adds about 0.13 bits a parameter, ~1.6 %), temporary
    buffers, fragmentation and the CUDA context (about 0.5-1 GB on a GPU).
    """
    if isinstance(weight_bytes, str):
        weight_bytes = BYTES_PER_PARAM[weight_bytes]
    trained = n_params * trainable_fraction
    frozen = n_params - trained
    total = frozen * weight_bytes + trained * (TRAINED_PARAM_BYTES + OPTIMIZER_STATE_BYTES[optimizer])
    return total / 1e9


def memory_table(n_params: float = 7e9, lora_fraction: float = 0.005, optimizer: str = "adam") -> list[dict]:
    """One row per precision: the weights alone, full fine-tuning, and LoRA, in GB.

    Each row is ``{"precision", "bytes_per_param", "weights_gb", "full_finetune_gb", "lora_gb"}``.
    Full fine-tuning is ``None`` for int8 and 4-bit: a quantised weight cannot be trained
    directly (that is why QLoRA trains adapters on top of a frozen 4-bit model). For 7e9
    parameters (Llama-2 7B): full fine-tuning with Adam needs 112 GB, LoRA on a bf16 model about
    14.5 GB, and QLoRA (LoRA on a 4-bit model) about 4 GB before activations, so about 5 GB in
    practice. ``training_memory_gb`` states the assumptions.
    """
    rows = []
    for precision, size in BYTES_PER_PARAM.items():
        trainable_directly = size >= 2  # fp32 and bf16
        rows.append({
            "precision": precision,
            "bytes_per_param": size,
            "weights_gb": n_params * size / 1e9,
            "full_finetune_gb": training_memory_gb(n_params, size, 1.0, optimizer) if trainable_directly else None,
            "lora_gb": training_memory_gb(n_params, size, lora_fraction, optimizer),
        })
    return rows


def format_memory_table(rows: list[dict]) -> str:
    """``memory_table``'s rows as an aligned text table (``-`` where full fine-tuning is impossible)."""
    gb = lambda value: "-" if value is None else f"{value:.1f}"
    lines = [f"{'precision':<10} {'bytes/param':>11} {'weights GB':>10} {'full FT GB':>10} {'LoRA GB':>8}"]
    for row in rows:
        lines.append(f"{row['precision']:<10} {row['bytes_per_param']:>11g} {gb(row['weights_gb']):>10} "
                     f"{gb(row['full_finetune_gb']):>10} {gb(row['lora_gb']):>8}")
    return "\n".join(lines)


def llama_linear_shapes(n_layer: int = 32, d_model: int = 4096, d_ff: int = 11008) -> list[tuple[int, int]]:
    """``(in, out)`` of every Linear layer in a Llama block stack (defaults: Llama-2 7B).

    Per block: the q, k, v and o projections (``d_model -> d_model``; Llama-2 7B has no
    grouped-query attention), then the MLP's gate and up (``d_model -> d_ff``) and down
    (``d_ff -> d_model``). With r = 16 on all of them LoRA trains about 40 M parameters, 0.6 %
    of 6.74 B.
    """
    attention = [(d_model, d_model)] * 4
    mlp = [(d_model, d_ff), (d_model, d_ff), (d_ff, d_model)]
    return (attention + mlp) * n_layer


def lora_parameter_count(shapes, r: int) -> int:
    """Trainable LoRA parameters for layers of these ``(in, out)`` shapes: sum of ``r * (in + out)``."""
    return sum(r * (n_in + n_out) for n_in, n_out in shapes)


# --------------------------------------------------------------------------------------------
# Measured memory
# --------------------------------------------------------------------------------------------


def parameter_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes held by ``model``'s parameters (or by its trainable ones); tied weights count once."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by every tensor in ``optimizer.state``, after at least one step.

    For Adam(W) that is ``exp_avg`` and ``exp_avg_sq`` (one number each per trained parameter)
    plus a one-element ``step`` counter per parameter tensor: about 8 bytes per trained float32
    parameter. Parameters that were never trained (frozen, or no gradient yet) have no state.
    """
    return sum(t.numel() * t.element_size()
               for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))
