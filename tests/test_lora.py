"""LoRA from scratch: the layer, a whole GPT-2, adapters on disk, peft, and the memory arithmetic."""

import copy
import warnings

import pytest
import torch
from torch import nn

from rlhf_helpers import lora

R, ALPHA = 4, 8.0


def conv1d(n_in, n_out):
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(n_out, n_in)  # Conv1D(nf=out, nx=in), weight (in, out)
    nn.init.normal_(layer.bias)
    return layer


def base_layer(kind, n_in=8, n_out=6):
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out) if kind == "linear" else conv1d(n_in, n_out)


def perturb_B(layer, seed=1):
    with torch.no_grad():
        layer.B.copy_(torch.randn(layer.B.shape, generator=torch.Generator().manual_seed(seed)))
    return layer


def tiny_gpt2(n_layer=2, n_embd=16, vocab_size=32, n_positions=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, vocab_size=vocab_size,
                        n_positions=n_positions, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tokens(seed=0, batch=2, length=10, vocab=32):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_one_step(model, ids, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    return optimizer


# --- the layer ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_layer_shapes_freezing_and_exact_start(kind):
    base = base_layer(kind)
    x = torch.randn(3, 5, 8)
    expected = base(x)
    layer = lora.LoRALinear(base, r=R, alpha=ALPHA)
    assert (layer.in_features, layer.out_features) == (8, 6)
    assert layer.A.shape == (R, 8) and layer.B.shape == (6, R) and layer.scale == ALPHA / R
    assert layer.is_conv1d == (kind == "conv1d")
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.A.requires_grad and layer.B.requires_grad and (layer.B == 0).all() and (layer.A != 0).any()
    bound = 1 / 8 ** 0.5  # kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in)), nn.Linear's default
    assert layer.A.abs().max() <= bound
    assert torch.equal(layer(x), expected)  # B = 0: exactly the base layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_layer_matches_the_formula_and_its_merge(kind):
    layer = perturb_B(lora.LoRALinear(base_layer(kind), r=R, alpha=ALPHA))
    x = torch.randn(2, 7, 8)
    W, b = layer.base.weight, layer.base.bias
    frozen = x @ W + b if kind == "conv1d" else x @ W.T + b  # Conv1D stores W as (in, out)
    manual = frozen + (ALPHA / R) * (x @ layer.A.T @ layer.B.T)
    assert torch.allclose(layer(x), manual, atol=1e-6)
    assert torch.allclose(layer.delta_weight(), (ALPHA / R) * layer.B @ layer.A)
    assert layer.delta_weight().shape == (6, 8)
    merged = layer.merge()
    assert type(merged) is type(layer.base) and merged.weight.shape == W.shape
    assert torch.allclose(merged(x), layer(x), atol=1e-6)
    assert torch.equal(layer.base.weight, W) and not torch.equal(merged.weight, W)  # the base is untouched


def test_dropout_acts_on_the_lora_path_in_training_only():
    layer = perturb_B(lora.LoRALinear(base_layer("linear"), r=R, alpha=ALPHA, dropout=0.5))
    x = torch.randn(4, 8)
    layer.eval()
    assert torch.allclose(layer(x), layer.merge()(x), atol=1e-6)
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), layer.merge()(x), atol=1e-3)


def test_layer_rejects_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="Conv2d"):
        lora.LoRALinear(nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="rank"):
        lora.LoRALinear(nn.Linear(4, 4), r=0)


# --- a whole GPT-2 --------------------------------------------------------------------------

def test_add_lora_on_gpt2_starts_as_the_base_and_trains_only_the_adapters():
    model = tiny_gpt2()
    ids = tokens()
    before = logits(model, ids)
    base_params = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, total_before = lora.count_parameters(model)

    assert lora.add_lora(model, r=R, alpha=ALPHA) is model
    layers = lora.lora_layers(model)
    assert sorted({name.rpartition(".")[2] for name in layers}) == ["c_attn", "c_fc", "c_proj"]
    assert len(layers) == 2 * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per block
    assert lora.adapted_shapes(model)[:4] == [(16, 48), (16, 16), (16, 64), (64, 16)]
    assert torch.equal(logits(model, ids), before)  # B = 0 everywhere

    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable_names and all(n.endswith((".A", ".B")) for n in trainable_names)
    trainable, total = lora.count_parameters(model)
    assert trainable == sum(R * (i + o) for i, o in lora.adapted_shapes(model)) == 2 * R * (64 + 32 + 80 + 80)
    assert total == total_before + trainable

    optimizer = train_one_step(model, ids)
    after = dict(model.named_parameters())
    for name, old in base_params.items():  # state names gained ".base" inside adapted layers
        new = after[name] if name in after else after[name.replace(".weight", ".base.weight").replace(".bias", ".base.bias")]
        assert torch.equal(new, old), f"{name} changed"
    for layer in layers.values():
        assert (layer.B != 0).any()
        # the first step cannot move A: its gradient is scale * B.T @ (...), and B was 0
        assert torch.equal(layer.A.grad, torch.zeros_like(layer.A))
    assert not torch.equal(logits(model, ids), before)

    # Adam keeps two float32 moments per trained parameter, plus a step counter per tensor
    state = lora.optimizer_state_bytes(optimizer)
    assert 8 * trainable <= state <= 8 * trainable + 8 * len(trainable_names)


def test_merge_lora_gives_a_plain_gpt2_with_the_same_logits():
    from transformers.pytorch_utils import Conv1D

    model = lora.add_lora(tiny_gpt2(), r=R, alpha=ALPHA)
    for seed, layer in enumerate(lora.lora_layers(model).values()):
        perturb_B(layer, seed)
    ids = tokens(1)
    adapted = logits(model, ids)
    merged = lora.merge_lora(copy.deepcopy(model))
    assert not lora.lora_layers(merged)
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    assert lora.count_parameters(merged)[1] == lora.count_parameters(tiny_gpt2())[1]
    assert torch.allclose(logits(merged, ids), adapted, atol=1e-5)
    assert set(merged.state_dict()) == set(tiny_gpt2().state_dict())  # save_pretrained-ready


def test_add_lora_needs_a_target():
    with pytest.raises(ValueError, match="no nn.Linear or Conv1D"):
        lora.add_lora(tiny_gpt2(), target_names=("q_proj",))


# --- adapters on disk -----------------------------------------------------------------------

def test_adapter_round_trip_through_safetensors(tmp_path):
    base = tiny_gpt2()
    trained = lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA)
    train_one_step(trained, tokens(2))
    train_one_step(trained, tokens(3))  # the second step moves A too
    path = lora.save_adapter(trained, tmp_path / "adapter.safetensors")
    state = lora.lora_state_dict(trained)
    assert len(state) == 2 * len(lora.lora_layers(trained))
    assert all(key.endswith((".A", ".B")) for key in state)

    torch.manual_seed(123)  # a different random A, overwritten by the load
    fresh = lora.load_adapter(lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA), path)
    ids = tokens(4)
    assert torch.equal(logits(fresh, ids), logits(trained, ids))

    with pytest.raises(ValueError, match="alpha"):
        lora.load_adapter(lora.add_lora(copy.deepcopy(base), r=R, alpha=2 * ALPHA), path)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora.load_adapter(copy.deepcopy(base), path)


def test_an_adapter_is_a_small_fraction_of_the_model(tmp_path):
    model = lora.add_lora(tiny_gpt2(n_layer=4, n_embd=128, vocab_size=2048, n_positions=128), r=4, alpha=8)
    path = lora.save_adapter(model, tmp_path / "adapter.safetensors")
    model_bytes = lora.parameter_bytes(model) - lora.parameter_bytes(model, trainable_only=True)
    assert path.stat().st_size < model_bytes / 20
    assert lora.parameter_bytes(model, trainable_only=True) == 4 * lora.count_parameters(model)[0]


# --- peft -----------------------------------------------------------------------------------

def test_peft_computes_the_same_logits_from_the_same_matrices():
    base = tiny_gpt2()
    ours = lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA)
    for seed, layer in enumerate(lora.lora_layers(ours).values()):
        perturb_B(layer, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config is complete: peft has nothing to warn about
        theirs = lora.wrap_with_peft(copy.deepcopy(base), lora.peft_lora_config(R, ALPHA))
    assert lora.count_parameters(theirs) == lora.count_parameters(ours)
    assert lora.copy_lora_into_peft(ours, theirs) == len(lora.lora_layers(ours))
    ids = tokens(5)
    expected = logits(ours, ids)
    assert torch.allclose(logits(theirs.eval(), ids), expected, atol=1e-6)
    # and peft's merge agrees with ours
    merged = theirs.merge_and_unload()
    assert torch.allclose(logits(merged, ids), logits(lora.merge_lora(ours), ids), atol=1e-5)


def test_peft_config_targets_gpt2_conv1d():
    config = lora.peft_lora_config(8, 16, dropout=0.05)
    assert config.fan_in_fan_out and config.r == 8 and config.lora_alpha == 16 and config.lora_dropout == 0.05
    assert set(config.target_modules) == {"c_attn", "c_proj", "c_fc"}
    assert config.task_type == "CAUSAL_LM"


def test_copy_into_peft_refuses_a_different_scale():
    base = tiny_gpt2()
    ours = lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA)
    theirs = lora.wrap_with_peft(copy.deepcopy(base), lora.peft_lora_config(R, 2 * ALPHA))
    with pytest.raises(ValueError, match="scale"):
        lora.copy_lora_into_peft(ours, theirs)


# --- memory ---------------------------------------------------------------------------------

def test_memory_table_for_a_7b_model():
    rows = {row["precision"]: row for row in lora.memory_table(7e9)}
    assert list(rows) == ["fp32", "bf16", "int8", "nf4"]
    assert [rows[p]["weights_gb"] for p in rows] == pytest.approx([28.0, 14.0, 7.0, 3.5])
    assert rows["fp32"]["full_finetune_gb"] == pytest.approx(112.0)  # 4 + 4 + 8 bytes a parameter
    assert rows["bf16"]["full_finetune_gb"] == pytest.approx(112.0)  # 2 + 2 + 4 (master) + 8
    assert rows["int8"]["full_finetune_gb"] is None and rows["nf4"]["full_finetune_gb"] is None
    # QLoRA: 4-bit frozen weights plus 16 bytes for each of the 0.5 % adapter parameters
    assert rows["nf4"]["lora_gb"] == pytest.approx(6.965e9 * 0.5 / 1e9 + 35e6 * 16 / 1e9)
    assert 3.5 < rows["nf4"]["lora_gb"] < 5 < rows["bf16"]["lora_gb"] < 15
    text = lora.format_memory_table(lora.memory_table())
    assert "112.0" in text and "nf4" in text and "-" in text


def test_training_memory_arithmetic():
    assert lora.training_memory_gb(7e9, 4) == pytest.approx(112.0)
    assert lora.training_memory_gb(7e9, "bf16") == pytest.approx(112.0)
    assert lora.training_memory_gb(7e9, 4, optimizer="sgd") == pytest.approx(56.0)
    assert lora.training_memory_gb(1e9, 2, trainable_fraction=0.0) == pytest.approx(2.0)  # inference
    # r = 16 on every Linear of Llama-2 7B trains about 0.6 % of its 6.74 B parameters
    count = lora.lora_parameter_count(lora.llama_linear_shapes(), 16)
    assert count == 32 * 16 * (4 * 8192 + 2 * (4096 + 11008) + (11008 + 4096))
    assert 0.005 < count / 6.74e9 < 0.007
