"""The lesson-02 GPT: architecture, generation, training, and the GPT-2 export (all fast, on CPU)."""

import io
import math

import pytest
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from rlhf_helpers.env import get_profile
from rlhf_helpers.gpt import (
    GPT, GPTConfig, CausalSelfAttention, configure_optimizers, cosine_lr, estimate_loss, final_validation,
    from_hf_gpt2, get_batch, nats_per_char, to_hf_gpt2, train,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


TINY = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def expected_params(V, T, L, C, bias=True) -> int:
    """Hand count: embeddings, then per block 12 C^2 weights (attn 4 C^2, MLP 8 C^2) plus
    LayerNorm and bias vectors, then the final LayerNorm. The tied head adds nothing."""
    per_block = 12 * C * C + (2 * C + 3 * C + C + 2 * C + 4 * C + C if bias else 2 * C)
    return V * C + T * C + L * per_block + (2 * C if bias else C)


def test_config_from_profile_sizes():
    sizes = get_profile("cpu").gpt
    config = GPTConfig.from_sizes(sizes, vocab_size=2048, dropout=0.1)
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (
        sizes.n_layer, sizes.n_head, sizes.n_embd, sizes.block_size)
    assert config.vocab_size == 2048 and config.dropout == 0.1 and config.bias


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_matches_hand_formula(bias):
    model = tiny(bias=bias)
    assert model.num_params() == expected_params(61, 16, 2, 16, bias)
    assert model.num_params(non_embedding=True) == expected_params(61, 16, 2, 16, bias) - (61 + 16) * 16
    cpu = GPT(GPTConfig.from_sizes(get_profile("cpu").gpt, vocab_size=2048))
    assert cpu.num_params() == expected_params(2048, 128, 4, 128) == 1_071_872


def test_tied_embeddings_share_storage():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.wte.weight[3, 0] = 42.0
    assert model.lm_head.weight[3, 0] == 42.0


def test_init_follows_gpt2():
    model = tiny(n_embd=64, n_layer=4, vocab_size=512)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = 0.02 / math.sqrt(2 * 4)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert model.transformer.h[0].attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_shapes_and_loss_at_init_is_uniform_guess():
    model = tiny(vocab_size=512).eval()
    idx = torch.randint(0, 512, (4, 16))
    logits, loss = model(idx)
    assert logits.shape == (4, 16, 512) and loss is None
    _, loss = model(idx, torch.randint(0, 512, (4, 16)))
    assert loss.ndim == 0 and abs(loss.item() - math.log(512)) < 0.1  # small logits: ~uniform


def test_ignored_targets_do_not_count():
    model = tiny().eval()
    idx, targets = torch.randint(0, 61, (2, 8)), torch.randint(0, 61, (2, 8))
    masked = targets.clone()
    masked[:, :4] = -100
    logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 61), targets[:, 4:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("sdpa", [False, True])
def test_causal_mask_hides_the_future(sdpa):
    model = tiny(sdpa=sdpa).eval()
    idx = torch.randint(0, 61, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 61  # change one token at position 10
    before, after = model(idx)[0], model(changed)[0]
    assert torch.allclose(before[:, :10], after[:, :10], atol=1e-6)  # the past is untouched
    assert not torch.allclose(before[:, 10:], after[:, 10:], atol=1e-4)  # the rest changed


@torch.no_grad()
def test_fused_attention_gives_the_same_model():
    explicit = tiny(dropout=0.1).eval()
    fused = tiny(dropout=0.1, sdpa=True).eval()  # same seed, same weights
    idx = torch.randint(0, 61, (2, 16))
    assert torch.allclose(explicit(idx)[0], fused(idx)[0], atol=1e-5)


@torch.no_grad()
def test_attention_matches_a_hand_computation():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=10, block_size=5, n_layer=1, n_head=2, n_embd=6)
    attn = CausalSelfAttention(config).eval()
    for p in attn.parameters():
        p.normal_()  # large, varied weights: a wrong scale would show
    x = torch.randn(5, 6)  # one sequence of 5 positions
    q_all, k_all, v_all = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(6, dim=1)
    heads = []
    for h in range(2):  # head h owns channels 3h..3h+2 of q, k and v
        q, k, v = (m[:, 3 * h:3 * h + 3] for m in (q_all, k_all, v_all))
        out = torch.zeros(5, 3)
        for t in range(5):
            scores = torch.stack([q[t] @ k[s] / math.sqrt(3) for s in range(t + 1)])  # s <= t only
            weights = torch.softmax(scores, dim=0)
            out[t] = sum(weights[s] * v[s] for s in range(t + 1))
        heads.append(out)
    expected = torch.cat(heads, dim=1) @ attn.c_proj.weight.T + attn.c_proj.bias
    assert torch.allclose(attn(x[None])[0], expected, atol=1e-4)
    attn.sdpa = True  # the fused path computes the same thing
    assert torch.allclose(attn(x[None])[0], expected, atol=1e-4)


def test_mlp_uses_gpt2_tanh_gelu():
    from transformers.activations import ACT2FN

    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(tiny().transformer.h[0].mlp.gelu(x), ACT2FN["gelu_new"](x), atol=1e-6)


def test_dropout_off_in_eval_mode():
    model = tiny(dropout=0.5)
    idx = torch.randint(0, 61, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_generate_respects_length_top_k_and_eos():
    model = tiny().eval()
    prompt = torch.randint(0, 61, (3, 4))
    out = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))  # beyond block_size
    assert out.shape == (3, 24) and torch.equal(out[:, :4], prompt)
    # top_k: every sampled token is among the k most likely at its step
    out = model.generate(prompt, 10, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(1))
    logits = model(out[:, :-1])[0][:, 3:]  # the predictions for positions 4..13
    allowed = logits.topk(3, dim=-1).indices
    assert (allowed == out[:, 4:].unsqueeze(-1)).any(-1).all()
    # top_k=1 and temperature 0 are both greedy
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(model.generate(prompt, 10, top_k=1), greedy)
    # eos: stop at the first end-of-text; a finished row is padded with it
    eos = greedy[0, 6].item()
    stopped = model.generate(prompt[:1], 10, temperature=0, eos_token_id=eos)
    first = 4 + (greedy[0, 4:] == eos).nonzero()[0].item()
    assert torch.equal(stopped[0], greedy[0, :first + 1])
    both = model.generate(prompt[:2], 10, temperature=0, eos_token_id=eos)
    assert both.shape[1] <= 14
    row = both[0, 4:]
    assert (row[(row == eos).nonzero()[0].item():] == eos).all()


def test_get_batch_targets_are_inputs_shifted():
    data = torch.arange(100)
    x, y = get_batch(data, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    again, _ = get_batch(data, 8, 5, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    with pytest.raises(ValueError):
        get_batch(torch.arange(8), 8, 2)


def test_cosine_schedule():
    kw = dict(lr=1e-3, warmup_steps=10, max_steps=110, min_lr=1e-4)
    assert cosine_lr(0, **kw) == pytest.approx(1e-4) and cosine_lr(9, **kw) == pytest.approx(1e-3)
    assert cosine_lr(60, **kw) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert cosine_lr(110, **kw) == pytest.approx(1e-4) and cosine_lr(500, **kw) == pytest.approx(1e-4)


def test_tiny_model_overfits_a_repeated_sequence():
    pattern = torch.tensor([5, 1, 4, 1, 5, 9, 2, 6, 8, 3, 7, 0, 11])
    data = pattern.repeat(60)
    model = tiny(vocab_size=12, block_size=12, n_layer=1, n_embd=32)
    bar = tqdm(file=io.StringIO())  # a real bar, written nowhere
    history = train(model, data, data[:200], steps=50, batch_size=8, lr=2e-2, log_every=25,
                    eval_iters=2, progress=bar)
    assert bar.n == bar.total == 50  # the bar passed in was driven
    assert [row["step"] for row in history] == [0, 25, 50]
    assert history[0]["train_loss"] == pytest.approx(math.log(12), abs=0.2)
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < 0.1 * history[0]["val_loss"]
    assert history[0]["tokens_per_s"] is None and history[-1]["tokens_per_s"] > 0
    assert not model.training


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_adamw_alone_decays_matrices_only():
    model = tiny()
    (adamw,) = configure_optimizers(model, lr=1e-3)
    decayed, plain = adamw.param_groups
    assert _names(model, decayed["params"]) == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny()
    muon, adamw = configure_optimizers(model, lr=1e-3, muon_lr=5e-3)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = _names(model, muon.param_groups[0]["params"])
    assert hidden == {f"transformer.h.{i}.{m}.weight" for i in range(TINY["n_layer"])
                      for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    rest = set().union(*(_names(model, g["params"]) for g in adamw.param_groups))
    assert "transformer.wte.weight" in rest and "transformer.wpe.weight" in rest  # embeddings (and the tied head)
    assert not hidden & rest and hidden | rest == {n for n, _ in model.named_parameters()}
    assert muon.param_groups[0]["lr"] == 5e-3 and adamw.param_groups[0]["lr"] == 1e-3


def test_both_optimisers_follow_the_schedule_from_their_own_peaks():
    """After training, each optimiser ends at min_lr / lr of its own peak (here a tenth)."""
    data = torch.randint(0, 61, (400,))
    model = tiny()
    seen = []
    original = torch.optim.Muon.step

    def spy(self, *args, **kwargs):  # record the learning rate Muon steps with
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Muon, "step", spy)
        history = train(model, data, None, steps=20, batch_size=2, lr=1e-3, muon_lr=4e-3, warmup_steps=5,
                        log_every=100, eval_iters=1)
    assert seen[0] == pytest.approx(4e-3 / 5) and max(seen) == pytest.approx(4e-3)
    assert seen[-1] == pytest.approx(4e-3 * cosine_lr(19, 1e-3, 5, 20, 1e-4) / 1e-3)
    assert history[-1]["lr"] == pytest.approx(cosine_lr(19, 1e-3, 5, 20, 1e-4))


def test_muon_learns_a_repeated_sequence_faster_than_chance():
    """The Muon path trains (the overfitting test above, with Muon on the matrices)."""
    pattern = torch.tensor([5, 1, 4, 1, 5, 9, 2, 6, 8, 3, 7, 0, 11])
    data = pattern.repeat(60)
    model = tiny(vocab_size=12, block_size=12, n_layer=1, n_embd=32)
    history = train(model, data, None, steps=50, batch_size=8, lr=2e-2, muon_lr=2e-2, log_every=50, eval_iters=2)
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]


def test_gpu_profile_shapes_take_a_muon_step():
    """A dry run of the gpu profile's model on the CPU: every shape works with both optimisers."""
    sizes = get_profile("gpu").gpt
    assert sizes.muon_lr is not None
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_sizes(sizes, vocab_size=2048))
    data = torch.randint(0, 2048, (2 * sizes.block_size,))
    history = train(model, data, None, steps=1, batch_size=1, lr=sizes.lr, muon_lr=sizes.muon_lr,
                    log_every=1, eval_iters=1)
    assert math.isfinite(history[-1]["train_loss"])


def test_final_validation_interval_brackets_the_mean():
    model = tiny()
    data = torch.randint(0, 61, (500,))
    result = final_validation(model, data, val_chars=1000, batch_size=2, batches=10)
    per_char = result["nats_per_char"]
    assert per_char.estimate == pytest.approx(result["loss_per_token"] * 500 / 1000)
    assert per_char.low < per_char.estimate < per_char.high


def test_estimate_loss_is_repeatable_and_restores_mode():
    model = tiny(dropout=0.2)
    data = torch.randint(0, 61, (500,))
    model.train()
    first = estimate_loss(model, {"train": data}, eval_iters=3, batch_size=4)
    assert model.training
    assert estimate_loss(model, {"train": data}, eval_iters=3, batch_size=4) == first


def test_nats_per_char():
    # a char-level model: one token per character, nothing changes
    assert nats_per_char(1.5, 1000, 1000) == 1.5
    # a BPE with 4 characters per token: 4.0 nats/token is 1.0 nat/char
    assert nats_per_char(4.0, 250, 1000) == pytest.approx(1.0)


@pytest.mark.parametrize("bias", [True, False])
def test_export_to_hf_gpt2_gives_identical_logits(bias, tmp_path):
    from transformers import GPT2LMHeadModel

    model = tiny(dropout=0.1, bias=bias)
    if not bias:  # exercise LayerNorm weights too: a non-trivial scale
        with torch.no_grad():
            model.transformer.ln_f.weight.uniform_(0.5, 1.5)
    model.eval()
    hf = to_hf_gpt2(model, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    c = hf.config
    assert (c.n_positions, c.n_embd, c.n_layer, c.n_head, c.vocab_size) == (16, 16, 2, 2, 61)
    assert c.activation_function == "gelu_new" and c.resid_pdrop == c.attn_pdrop == c.embd_pdrop == 0.1
    assert (c.eos_token_id, c.pad_token_id) == (0, 1) and c.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert not hf.training

    idx = torch.randint(0, 61, (3, 16))
    ours = model(idx)[0]
    with torch.no_grad():
        assert (hf(idx).logits - ours).abs().max() < 1e-4
        # saved as safetensors and loaded back from the folder (no network): still identical
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
        reloaded = GPT2LMHeadModel.from_pretrained(tmp_path)
        assert (reloaded(idx).logits - ours).abs().max() < 1e-4

    # Hugging Face's generate runs on it, and greedy decoding agrees with ours
    prompt = idx[:1, :4]
    theirs = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(prompt),
                               eos_token_id=None)
    assert theirs.shape == (1, 12)
    assert torch.equal(theirs, model.generate(prompt, 8, temperature=0))


def test_from_hf_gpt2_round_trip():
    model = tiny().eval()
    back = from_hf_gpt2(to_hf_gpt2(model))
    assert back.config == model.config
    assert back.lm_head.weight is back.transformer.wte.weight
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not back.training
