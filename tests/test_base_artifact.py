"""The `base` artifact: the lesson-02 recipe, trained tiny, exported and reloaded."""

import json

import torch

from rlhf_helpers import env, gpt

TINY = env.Profile(name="tiny", description="for tests",
                   gpt=env.GPTSizes(n_layer=1, n_head=2, n_embd=16, block_size=64, batch_size=4, max_steps=6, lr=3e-3),
                   sft=env.SFTSizes(max_steps=4, batch_size=4, lr=1e-3),
                   peft=env.PEFTSizes(max_steps=3, sweep_steps=2, batch_size=4, lr=5e-3, r=2, alpha=4, ranks=(1, 2),
                                      virtual_tokens=2),
                   eval_prompts=6)


def test_base_artifact_trains_exports_and_reloads(monkeypatch, isolated_artifacts):
    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY)
    folder = gpt.base_model_path()
    assert folder.is_relative_to(isolated_artifacts / "base")
    history, figures = gpt.base_history_and_figures()
    assert [row["step"] for row in history][0] == 0 and history[-1]["step"] == 6
    assert figures["parameters"] > 0 and figures["val_nats_per_char"] > 0
    config = json.loads((folder / "model" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_positions"]) == (1, 16, 64)
    assert (folder / "model" / "model.safetensors").exists()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # no pickles

    model, tokenizer = gpt.load_base_model()
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.pad_token_id == tokenizer.pad_token_id
    ids = torch.tensor([tokenizer("ROMEO:\nBut soft")["input_ids"]])
    ours = gpt.from_hf_gpt2(model)
    with torch.no_grad():
        assert (ours(ids)[0] - model(ids).logits).abs().max() < 1e-4
    assert gpt.base_model_path() == folder  # cached: not trained again


def test_base_config_depends_on_sizes_and_tokenizer():
    cpu, gpu = gpt.base_config(env.PROFILES["cpu"]), gpt.base_config(env.PROFILES["gpu"])
    assert cpu != gpu and cpu["tokenizer"] == gpu["tokenizer"]
    assert cpu["gpt"]["n_embd"] == env.PROFILES["cpu"].gpt.n_embd


def test_an_untrained_gpt_fails_lesson_02s_bar():
    """The control of lesson 02's assertion: the cpu profile's GPT before training, judged like the
    trained one (same tokenizer, same validation windows), is far above the bar."""
    from rlhf_helpers.tokenizers import course_tokenizer

    sizes = env.PROFILES["cpu"].gpt
    tokenizer = course_tokenizer()
    (val_ids, val_chars) = gpt.encode_splits(tokenizer)["val"]
    torch.manual_seed(0)
    untrained = gpt.GPT(gpt.GPTConfig.from_sizes(sizes, vocab_size=len(tokenizer)))
    result = gpt.final_validation(untrained, val_ids, val_chars, sizes.batch_size, batches=5)
    assert result["nats_per_char"].low > gpt.BASE_NATS_PER_CHAR_BAR + 1.0  # about 2.9: ln(2048) / 2.65
