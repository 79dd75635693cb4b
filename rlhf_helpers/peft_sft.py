"""Parameter-efficient SFT (lesson 04): lesson 03's fine-tuning, training only an adapter.

The recipe is lesson 03's (``sft.train_sft``: the same demonstrations, trainer and steps) with a
peft configuration, so every difference in the results comes from *what* is trained:

- **LoRA** (Hu et al., 2021): a rank-``r`` update ``B @ A`` beside each attention and MLP matrix;
- **IA3** (Liu et al., 2022): one learned scale per channel of the keys, values and MLP;
- **prompt tuning** (Lester et al., 2021): a few learned "virtual token" embeddings in front of
  every input; the model itself is untouched.

Two artifacts: ``sft_lora`` (the LoRA adapter of the profile's rank, saved by peft as a few
hundred kilobytes of safetensors) and ``peft_comparison`` (every method and a rank sweep, each
trained and measured once, kept as a table so re-running the lesson is quick).

Left out: QLoRA's 4-bit base weights (bitsandbytes needs CUDA; lesson 04 explains and skips),
prefix tuning, and training several adapters at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from rlhf_helpers import artifacts, evaluation, lora, models, sft

PEFT_VERSION = 2  # bump when the recipe changes, so cached adapters and tables are rebuilt


# The chat template's special tokens (<|endoftext|>, <|pad|>, <|im_start|>, <|im_end|>). The base
# model never saw the last three in pretraining, so their embeddings (tied to the output layer) are
# still random: a frozen model cannot even *say* <|im_end|>. Full fine-tuning trains them; an
# adapter must train these four rows too, or its answers never end.
SPECIAL_TOKEN_IDS = (0, 1, 2, 3)


def lora_config(r: int, alpha: int, train_special_tokens: bool = True, model=None, tokenizer=None):
    """LoRA on GPT-2's attention and MLP projections, plus the special tokens' embedding rows.

    ``trainable_token_indices`` makes peft train just those rows of the (tied) embedding: 4 x 128
    numbers here. Llama 3's base model had the same trap: its chat tokens were untrained, and
    adapters that left them frozen produced endless answers. Given the ``model`` it will adapt and
    its ``tokenizer`` (any architecture, ``--model``), the projections are that model's own
    (``lora.lora_targets``) and the rows are its chat tokens (``special_token_rows``).
    """
    config = lora.peft_lora_config(r=r, alpha=alpha, model=model)
    if train_special_tokens:
        _let_trl_read_a_tied_head()
        config.trainable_token_indices = special_token_rows(model, tokenizer)
    return config


def special_token_rows(model=None, tokenizer=None) -> dict[str, list[int]]:
    """``{embedding layer's name: the chat's special token ids}``, for peft's ``trainable_token_indices``.

    The course's GPT-2 by default: ``{"wte": [0, 1, 2, 3]}``. Any other model: the last part of its
    input embedding's name (``embed_tokens`` for Llama and Qwen2) and ``tokenizers.chat_token_ids``.
    """
    if model is None:
        return {"wte": list(SPECIAL_TOKEN_IDS)}
    from rlhf_helpers.tokenizers import chat_token_ids

    embedding = model.get_input_embeddings()
    name = next(name for name, module in model.named_modules() if module is embedding)
    return {name.rpartition(".")[2]: chat_token_ids(tokenizer)}


def _let_trl_read_a_tied_head() -> None:
    """Work around a trl/peft mismatch: trl's fused LM head reads ``lm_head.bias``, and peft's
    ``TrainableTokensWrapper`` (around GPT-2's tied ``lm_head``) answers only ``weight``. Forward
    ``bias`` to the wrapped layer too. Harmless when trl or peft fix it; tests catch a break."""
    from peft.utils.other import TrainableTokensWrapper

    if getattr(TrainableTokensWrapper, "_course_forwards_bias", False):
        return
    has, get = TrainableTokensWrapper._hasattr_wrapped, TrainableTokensWrapper._getattr_wrapped

    def hasattr_wrapped(self, name, modules):
        return name == "bias" or has(self, name, modules)

    def getattr_wrapped(self, name, modules):
        return getattr(self.original_module, "bias", None) if name == "bias" else get(self, name, modules)

    TrainableTokensWrapper._hasattr_wrapped, TrainableTokensWrapper._getattr_wrapped = hasattr_wrapped, getattr_wrapped
    TrainableTokensWrapper._course_forwards_bias = True


def ia3_config(model=None):
    """IA3: learned scales on the attention projection's output and on the MLP's input to c_proj.

    Given a ``model`` (any architecture), ``ia3_targets`` finds the same two places in it.
    """
    from peft import IA3Config

    if model is None:
        return IA3Config(task_type="CAUSAL_LM", target_modules=["c_attn", "mlp.c_proj"],
                         feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True)
    targets, feedforward = ia3_targets(model)
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward,
                     fan_in_fan_out=lora.stores_transposed(model, [t.rpartition(".")[2] for t in targets]))


def ia3_targets(model) -> tuple[list[str], list[str]]:
    """IA3's places in one decoder layer of any model: ``(target_modules, feedforward_modules)``.

    The attention's input projections (every projection of the attention block but its last, the
    output one: GPT-2's fused ``attn.c_attn``, Llama's ``self_attn.q_proj``, ``k_proj`` and
    ``v_proj``) scale their outputs; the layer's last projection, the MLP's down projection
    (``mlp.c_proj``, ``mlp.down_proj``), is a feedforward module: IA3 scales its input. Named by
    their last two parts, which peft matches at the end of each layer's full name.
    """
    import torch.nn as nn

    from transformers.pytorch_utils import Conv1D

    layer = lora.decoder_layers(model)[0]
    projections = [name for name, m in layer.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    attention = [n for n in projections if "attn" in n.split(".")[0] or "attention" in n.split(".")[0]]
    if len(attention) < 2 or projections[-1] in attention:
        raise ValueError(f"Cannot find the attention and MLP projections of {type(model).__name__} for IA3.")
    short = lambda name: ".".join(name.split(".")[-2:])
    feedforward = [short(projections[-1])]
    return [short(n) for n in attention[:-1]] + feedforward, feedforward


def prompt_tuning_config(virtual_tokens: int):
    """Prompt tuning: ``virtual_tokens`` learned input embeddings, initialised at random."""
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens)


def methods(sizes, model=None, tokenizer=None) -> dict[str, object]:
    """The peft configurations of lesson 04's comparison, by display name, each trained for
    ``sizes.sweep_steps`` (the ``sft_lora`` adapter joins the table from its own, longer, run).
    For GPT-2, or for ``model`` and its ``tokenizer`` (any architecture)."""
    configs = {f"LoRA r={r}": lora_config(r, 2 * r, model=model, tokenizer=tokenizer)
               for r in sorted({sizes.r, *sizes.ranks})}
    configs[f"LoRA r={sizes.r}, special tokens frozen"] = lora_config(sizes.r, sizes.alpha, train_special_tokens=False,
                                                                     model=model)
    configs["IA3"] = ia3_config(model)
    configs[f"prompt tuning ({sizes.virtual_tokens} tokens)"] = prompt_tuning_config(sizes.virtual_tokens)
    return configs


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters of a model or a peft model (tied weights counted once)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return lora.count_parameters(model)


def measure(name: str, model, tokenizer, profile, steps: int, seconds: float, logs: list[dict]) -> dict:
    """One row of lesson 04's table: the adapter's size, its training speed, and its held-out
    instruction-following rate under the evaluation protocol, with the rate's 95 % interval."""
    trainable, total = trainable_parameters(model)
    prompts = evaluation.prompts(profile.eval_prompts)
    with lora.quiet_peft():
        responses = sft.generate_responses(model, tokenizer, prompts)  # the protocol's sampling
    rate = evaluation.figures(prompts, responses, [True] * len(prompts))["following"]
    return {"method": name, "steps": steps, "trainable": trainable, "total": total,
            "trainable_percent": 100 * trainable / total,
            "adam_state_mb": lora.OPTIMIZER_STATE_BYTES["adam"] * trainable / 1e6, "seconds": round(seconds, 1),
            "step_ms": round(1000 * seconds / steps, 1), "rate": rate.estimate, "rate_low": rate.low,
            "rate_high": rate.high, "final_loss": [row["loss"] for row in logs if "loss" in row][-1]}


def _config(stage: str, profile) -> dict:
    return {"stage": stage, "sft": sft.sft_config(profile), "peft": asdict(profile.peft),
            "evaluation": evaluation.protocol(profile), "version": PEFT_VERSION}


# --------------------------------------------------------------------------------------------
# The ``sft_lora`` artifact: one LoRA adapter.
# --------------------------------------------------------------------------------------------

def _build_sft_lora(folder, progress) -> None:
    from rlhf_helpers.env import get_profile

    profile = get_profile()
    config = lambda model, tokenizer: lora_config(profile.peft.r, profile.peft.alpha, model=model, tokenizer=tokenizer)
    model, tokenizer, logs, seconds = sft.train_sft(profile, progress, sizes=profile.peft, peft_config=config)
    model.save_pretrained(folder / "adapter")  # adapter_model.safetensors + adapter_config.json
    (folder / "log_history.json").write_text(json.dumps(logs, indent=1))
    (folder / "figures.json").write_text(json.dumps({"lora_train_seconds": round(seconds, 1)}))


def sft_lora_path():
    """The folder of the ``sft_lora`` artifact (trained in about a minute on a CPU, if missing)."""
    from rlhf_helpers.env import get_profile

    return artifacts.fetch("sft_lora", _config("sft_lora", get_profile()), _build_sft_lora,
                           made_by="lesson 04 (rlhf_helpers.peft_sft)", together=True)


def load_sft_lora(adapter_name: str = "default", trainable: bool = False):
    """The base model with the ``sft_lora`` adapter, as ``(PeftModel, tokenizer)`` in eval mode.

    peft loads an adapter frozen, for inference; ``trainable=True`` keeps it trainable (lesson 06
    trains it further with PPO, and counting its trainable parameters needs it too).
    """
    from peft import PeftModel

    base, tokenizer = models.load_start_model()
    with lora.quiet_peft():
        model = PeftModel.from_pretrained(base, str(sft_lora_path() / "adapter"), adapter_name=adapter_name,
                                          is_trainable=trainable)
    return model.eval(), tokenizer


def lora_log_history() -> list[dict]:
    """The Trainer's logged rows of the ``sft_lora`` run."""
    return json.loads((sft_lora_path() / "log_history.json").read_text())


# --------------------------------------------------------------------------------------------
# The ``peft_comparison`` artifact: every method, trained and measured.
# --------------------------------------------------------------------------------------------

def _build_comparison(folder, progress) -> None:
    from rlhf_helpers.env import get_profile

    profile = get_profile()
    model, tokenizer = load_sft_lora(trainable=True)
    seconds = json.loads((sft_lora_path() / "figures.json").read_text())["lora_train_seconds"]
    sizes = profile.peft
    rows = [measure(lesson_adapter_name(sizes), model, tokenizer, profile, sizes.max_steps, seconds,
                    lora_log_history())]
    sweep = replace(sizes, max_steps=sizes.sweep_steps)
    for name in methods(sizes):
        progress.set_description(name)
        config = lambda model, tokenizer, name=name: methods(sizes, model, tokenizer)[name]  # for the model loaded
        model, tokenizer, logs, seconds = sft.train_sft(profile, progress, sizes=sweep, peft_config=config)
        rows.append(measure(name, model, tokenizer, profile, sweep.max_steps, seconds, logs))
        model.save_pretrained(folder / "adapters" / _slug(name))  # kept: lesson 04 switches between them
    (folder / "comparison.json").write_text(json.dumps(rows, indent=1))


def lesson_adapter_name(sizes) -> str:
    """The table's name for the ``sft_lora`` adapter: "LoRA r=8, 1200 steps"."""
    return f"LoRA r={sizes.r}, {sizes.max_steps} steps"


def _slug(name: str) -> str:
    """"LoRA r=1" -> "lora_r_1": a folder name."""
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def peft_comparison_path():
    """The folder of the ``peft_comparison`` artifact (several minutes on a CPU, if missing)."""
    from rlhf_helpers.env import get_profile

    return artifacts.fetch("peft_comparison", _config("peft_comparison", get_profile()), _build_comparison,
                           made_by="lesson 04 (rlhf_helpers.peft_sft)", together=True)


def peft_comparison() -> list[dict]:
    """One row per method: trainable parameters, Adam state, step time, held-out rate, final loss."""
    return json.loads((peft_comparison_path() / "comparison.json").read_text())


def comparison_adapter(name: str):
    """The saved adapter folder of one method of the comparison (``"LoRA r=1"``, ``"IA3"``, ...)."""
    folder = peft_comparison_path() / "adapters" / _slug(name)
    if not folder.exists():
        known = [row["method"] for row in peft_comparison()[1:]]
        raise ValueError(f"No saved adapter for {name!r}; the comparison saved: {', '.join(known)}.")
    return folder
