"""``--model``: the stages after lesson 02 on any causal LM, offline (``rlhf_helpers.models``).

Tiny Llama and Qwen2 models, randomly initialised from their configs and saved with the course
tokenizer, go through SFT, SFT with LoRA, the reward model, PPO, DPO and GRPO, a step or two
each, and the arena, through ``course.run.run`` as ``python -m course run <stage> --model <folder>`` runs them.
Nothing is downloaded: the hub is only ever refused here.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlhf_helpers import artifacts, lora, models, peft_sft, ppo, tokenizers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)

ARCHITECTURES = ("llama", "qwen2")
STAGES = ("sft", "sft_lora", "reward", "ppo", "dpo", "grpo", "arena")
STAGE_FOLDER = {"reward": "reward_model"}  # where a stage's artifact lives, when not under its own name
TINY_SIZES = ["sft.max_steps=2", "sft.batch_size=2", "peft.max_steps=2", "peft.batch_size=2", "peft.r=2",
              "peft.alpha=4", "reward.prompts=6", "reward.responses_per_prompt=3", "reward.max_steps=2",
              "reward.batch_size=2", "ppo.steps=1", "ppo.batch_size=2", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1",
              "ppo.max_new_tokens=8", "ppo.eval_every=1", "ppo.checkpoint_prompts=2", "beyond.dpo_steps=2",
              "beyond.dpo_batch_size=2", "beyond.grpo_steps=1", "beyond.grpo_prompts=2", "beyond.grpo_generations=2",
              "beyond.max_new_tokens=8", "eval_prompts=4"]
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------------------------
# Tiny models of each architecture, with the course tokenizer
# --------------------------------------------------------------------------------------------


def tiny_config(architecture: str, tokenizer):
    """Two layers 32 wide, four heads sharing two key/value heads: a Llama or a Qwen2 in miniature."""
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    return config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def tiny_model(architecture: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(architecture, tokenizer)).eval()


def ends_its_answers(model, end_id: int):
    """Make a random model close an answer about one token in eight.

    A random model says ``<|im_end|>`` about once in 2,048 tokens, and lesson 05 keeps only the
    answers that ended: it would have nothing to compare. One embedding dimension is set large for
    every token, so it dominates the normalised hidden state, and the end token's output row reads it.
    """
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 10.0
        model.get_output_embeddings().weight[:, 0] = 0.0
        model.get_output_embeddings().weight[end_id, 0] = 1.0
    return model


def save_tiny_model(architecture: str, tokenizer, folder):
    """A tiny model that ends its answers, saved into ``folder`` with ``tokenizer``; returns ``folder``."""
    model = tiny_model(architecture, tokenizer)
    ends_its_answers(model, tokenizers.end_of_answer_id(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def unset(mp: pytest.MonkeyPatch, *names: str) -> None:
    """Unset environment variables so that ``mp`` removes them again at the end, whatever sets them in
    between (``course.run.run`` sets ``$RLHF_MODEL`` and ``$RLHF_SIZES``): ``delenv`` alone records
    nothing for a variable that is not set, and would let a value set later leak into other tests."""
    for name in names:
        mp.setenv(name, "")
        mp.delenv(name)


@pytest.fixture(scope="module")
def course_tokenizer(module_artifacts):
    return tokenizers.course_tokenizer()  # built once in this module's artifacts folder (a few seconds)


@pytest.fixture(scope="module")
def model_folders(course_tokenizer, tmp_path_factory):
    """``{architecture: folder}``: each tiny model saved with ``save_pretrained`` (safetensors) and
    the course tokenizer, as a learner's own model would be."""
    return {architecture: save_tiny_model(architecture, course_tokenizer, tmp_path_factory.mktemp(f"tiny-{architecture}"))
            for architecture in ARCHITECTURES}


@pytest.fixture(scope="module")
def pipelines(model_folders, module_artifacts):
    """``{architecture: {stage: artifact folder}}``: every stage run from each tiny model, in one
    artifacts folder, as ``python -m course run <stage> --model <folder> --set ...`` runs it."""
    from course.run import run

    built = {}
    with pytest.MonkeyPatch.context() as mp:
        unset(mp, models.MODEL_VAR, "RLHF_SIZES", "RLHF_LABELS")
        mp.setenv("RLHF_PROFILE", "cpu")
        mp.setenv("RLHF_ARTIFACTS", str(module_artifacts))
        for architecture, folder in model_folders.items():
            built[architecture] = {stage: run(stage, sizes=TINY_SIZES, model=str(folder)) for stage in STAGES}
    return built


# --------------------------------------------------------------------------------------------
# The whole pipeline, on each architecture
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_stage_trains_and_saves_the_chosen_architecture(pipelines, model_folders, architecture):
    from transformers import AutoModelForSequenceClassification

    from rlhf_helpers import gpt

    folders = pipelines[architecture]
    for stage, folder in folders.items():
        manifest = artifacts.verify(folder)
        assert folder.parent.name == STAGE_FOLDER.get(stage, stage)
        assert json.dumps(manifest["config"]).count(str(model_folders[architecture])) >= 1, stage  # keyed by the model
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "safetensors only"
    for stage in ("sft", "ppo", "dpo", "grpo"):
        model, tokenizer = gpt.load_saved_model(folders[stage] / "model")
        assert model.config.model_type == architecture and type(model).__name__.endswith("ForCausalLM")
        assert tokenizer.chat_template == tokenizers.CHAT_TEMPLATE  # the tokenizer's own template, kept
    reward_model = AutoModelForSequenceClassification.from_pretrained(str(folders["reward"] / "model"))
    assert reward_model.config.model_type == architecture and reward_model.num_labels == 1
    assert type(reward_model).__name__.endswith("ForSequenceClassification")
    adapter = json.loads((folders["sft_lora"] / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert adapter["trainable_token_indices"] == {"embed_tokens": [0, 1, 2, 3]} and not adapter["fan_in_fan_out"]
    history = json.loads((folders["ppo"] / "history.json").read_text())
    assert len(history) == 1 and all(history[0][key] == history[0][key] for key in ("score", "kl", "policy_loss",
                                                                                  "value_loss"))  # no NaN
    arena = json.loads((folders["arena"] / "arena.json").read_text())
    assert set(arena["table"]) == {"base", "sft", "ppo", "dpo", "grpo", "grpo_rule"} and len(arena["prompts"]) == 4


def test_two_models_and_the_default_never_share_an_artifact(pipelines, model_folders, monkeypatch):
    from rlhf_helpers import sft

    for stage in STAGES:
        assert pipelines["llama"][stage] != pipelines["qwen2"][stage]
    monkeypatch.setenv("RLHF_SIZES", ",".join(TINY_SIZES))
    monkeypatch.delenv(models.MODEL_VAR, raising=False)
    default = artifacts.path_for("sft", sft.sft_config())
    assert default.name not in {pipelines[a]["sft"].name for a in ARCHITECTURES}


# --------------------------------------------------------------------------------------------
# Without --model, nothing changes
# --------------------------------------------------------------------------------------------


def stage_configs() -> dict[str, dict]:
    """Every artifact config that depends on the starting model, for the current environment."""
    from rlhf_helpers import arena, beyond_ppo, reward, rlhf, sft
    from rlhf_helpers.env import get_profile

    return {"sft": sft.sft_config(), "sft_lora": peft_sft._config("sft_lora", get_profile()),
            "comparisons": reward.comparisons_config(), "reward_model": reward.reward_config(),
            "ppo": rlhf.ppo_artifact_config(), "ppo_overoptimisation": rlhf.overoptimisation_config(),
            "dpo_grpo": beyond_ppo.beyond_config(), "arena": arena.arena_config()}


def keys_anywhere(config) -> set[str]:
    if not isinstance(config, dict):
        return set()
    return set(config) | {k for value in config.values() for k in keys_anywhere(value)}


def test_without_a_model_the_configs_and_so_the_artifact_keys_are_as_before(monkeypatch, model_folders):
    """The default artifacts (and the notebooks' stored outputs) must keep their keys: the model
    enters a config only when one is chosen, in place of the base GPT's config."""
    monkeypatch.delenv(models.MODEL_VAR, raising=False)
    monkeypatch.setenv("RLHF_PROFILE", "cpu")
    from rlhf_helpers import sft

    assert set(sft.sft_config()) == {"base", "sft", "seed", "tasks", "version"}  # the keys it always had
    default = stage_configs()
    assert all("model" not in keys_anywhere(config) for config in default.values())
    monkeypatch.setenv(models.MODEL_VAR, str(model_folders["llama"]))
    chosen = stage_configs()
    assert set(sft.sft_config()) == {"model", "sft", "seed", "tasks", "version"}
    for name, config in chosen.items():
        assert "model" in keys_anywhere(config) and "base" not in keys_anywhere(config), name
        assert artifacts.config_key(config) != artifacts.config_key(default[name]), name


def test_the_model_identity_follows_the_files(tmp_path, model_folders):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model_folders["llama"], copy)
    original, copied = models.model_identity(str(model_folders["llama"])), models.model_identity(str(copy))
    assert original["sha256"] == copied["sha256"] and original["folder"] != copied["folder"]
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"rms_norm_eps": 1e-06',
                                                                                 '"rms_norm_eps": 1e-05'))
    assert models.model_identity(str(copy))["sha256"] != original["sha256"]


# --------------------------------------------------------------------------------------------
# The command line, and the hub
# --------------------------------------------------------------------------------------------


def test_run_takes_a_model_folder_and_every_stage_sees_it(monkeypatch, model_folders, tmp_path):
    """``python -m course run sft --model <folder>`` parses, and ``$RLHF_MODEL`` carries the folder."""
    import course.run
    from course.__main__ import main

    seen = {}

    def fake_sft():
        seen["model"] = models.chosen_model()
        return tmp_path

    unset(monkeypatch, models.MODEL_VAR, "RLHF_SIZES")
    monkeypatch.setattr(course.run, "_stages", lambda: {"sft": ("SFT", fake_sft)})
    monkeypatch.chdir(model_folders["llama"].parent)
    assert main(["run", "sft", "--model", model_folders["llama"].name, "--set", "sft.max_steps=2"]) == 0
    assert seen["model"] == str(model_folders["llama"].resolve())  # a relative folder, made absolute


def test_a_hub_id_is_refused_offline_with_what_to_do(monkeypatch, capsys, isolated_artifacts):
    from course.__main__ import main

    unset(monkeypatch, "RLHF_ALLOW_HUB", models.MODEL_VAR)
    assert main(["run", "sft", "--model", HUB_ID]) == 2
    error = capsys.readouterr().err
    assert f"--model {HUB_ID}: no such folder here" in error and "RLHF_ALLOW_HUB=1" in error
    assert not isolated_artifacts.exists(), "refused before anything was built"
    assert main(["run", "base", "--model", HUB_ID]) == 2 and "stages after them" in capsys.readouterr().err
    monkeypatch.setenv("RLHF_ALLOW_HUB", "1")  # allowed: named by id and revision, nothing fetched yet
    assert models.model_identity(HUB_ID) == {"hub_id": HUB_ID, "revision": "main"}
    assert models.model_identity(HUB_ID + "@v1.0") == {"hub_id": HUB_ID, "revision": "v1.0"}


# --------------------------------------------------------------------------------------------
# The architecture-agnostic helpers
# --------------------------------------------------------------------------------------------


def tiny_gpt2(tokenizer):
    from rlhf_helpers.gpt import GPT, GPTConfig, to_hf_gpt2

    torch.manual_seed(0)
    return to_hf_gpt2(GPT(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=1, n_head=2, n_embd=16)),
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def test_lora_and_ia3_find_their_places_in_each_architecture(course_tokenizer):
    from peft import get_peft_model

    gpt2 = tiny_gpt2(course_tokenizer)
    assert lora.lora_targets(gpt2) == lora.DEFAULT_TARGETS
    for architecture in ARCHITECTURES:
        model = tiny_model(architecture, course_tokenizer)
        assert lora.lora_targets(model) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj")
        assert peft_sft.ia3_targets(model) == (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "mlp.down_proj"], ["mlp.down_proj"])
    # for the course's GPT-2, what is found in the model is what lesson 04 names
    found, named = peft_sft.lora_config(8, 16, model=gpt2, tokenizer=course_tokenizer), peft_sft.lora_config(8, 16)
    for field in ("target_modules", "fan_in_fan_out", "trainable_token_indices", "r", "lora_alpha"):
        assert getattr(found, field) == getattr(named, field), field
    def adapted(config):  # the layers IA3 wraps
        wrapped = get_peft_model(tiny_gpt2(course_tokenizer), config)
        return sorted(name for name, m in wrapped.named_modules() if type(m).__module__.startswith("peft.tuners.ia3"))

    assert adapted(peft_sft.ia3_config(gpt2)) == adapted(peft_sft.ia3_config())


def test_context_length_reads_either_name_and_is_capped(course_tokenizer):
    assert models.context_length(tiny_gpt2(course_tokenizer)) == 64
    model = tiny_model("llama", course_tokenizer)
    assert models.context_length(model) == 256
    model.config.max_position_embeddings = 32768
    assert models.context_length(model.config) == models.MAX_CONTEXT


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_left_padding_value_model_and_reward_read_any_backbone(course_tokenizer, architecture):
    """Left-padded rows give the logits of unpadded ones (``position_ids``), and the value model and the
    reward model's score work on the backbone under ``base_model``, whatever its name."""
    from transformers import AutoModelForSequenceClassification

    policy = tiny_model(architecture, course_tokenizer)
    pad = course_tokenizer.pad_token_id
    sequences = torch.tensor([[pad, pad, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = (sequences != pad).long()
    padded = ppo.response_logits(policy, sequences, mask, response_len=2)[0]
    with torch.no_grad():
        alone = ppo.response_logits(policy, sequences[:1, 2:], mask[:1, 2:], response_len=2)[0]
    assert torch.allclose(padded, alone, atol=1e-5)

    values = ppo.value_model_from_causal_lm(policy)(sequences, mask)
    assert values.shape == sequences.shape and torch.all(values == 0)
    torch.manual_seed(1)
    config = tiny_config(architecture, course_tokenizer)
    config.num_labels = 1
    reward_model = AutoModelForSequenceClassification.from_config(config).eval()
    value_model = ppo.value_model_from_reward_model(reward_model)
    last = torch.tensor([5, 5])
    scores = ppo.reward_model_scores(reward_model, sequences, mask, last)
    with torch.no_grad():
        assert torch.allclose(scores, value_model(sequences, mask)[:, -1])
        assert torch.allclose(scores, reward_model(input_ids=sequences, attention_mask=mask).logits[:, 0], atol=1e-5)


def test_a_tokenizer_without_chat_template_or_pad_gets_the_courses(course_tokenizer):
    """ChatML and its two tokens are added, padding borrows the end-of-text token, and the new
    embedding rows are the same on every load (a seeded stream)."""
    from tokenizers import Tokenizer, models as token_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def plain_tokenizer():
        backend = Tokenizer(token_models.WordLevel({"</s>": 0, **{f"w{i}": i for i in range(1, 16)}}, unk_token="</s>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")

    rows = []
    for _ in range(2):
        tokenizer = plain_tokenizer()
        torch.manual_seed(0)
        model = tiny_model("llama", tokenizer)
        assert tokenizer.pad_token is None and not tokenizer.chat_template
        assert models.prepare_for_chat(model, tokenizer) == 2
        assert tokenizer.pad_token_id == model.config.pad_token_id == 0
        assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 18
        assert tokenizers.end_of_answer_id(tokenizer) == tokenizer.convert_tokens_to_ids(tokenizers.IM_END)
        assert ppo.special_ids(tokenizer) == (17, 0)
        rows.append(model.get_input_embeddings().weight[16:].clone())
    assert torch.equal(rows[0], rows[1])
    assert models.prepare_for_chat(model, tokenizer) == 0, "a second time changes nothing"


def test_the_end_of_an_answer_is_read_off_the_chat_template(course_tokenizer, model_folders):
    from transformers import AutoTokenizer

    assert tokenizers.end_of_answer_id(course_tokenizer) == course_tokenizer.convert_tokens_to_ids("<|im_end|>") == 3
    assert tokenizers.chat_token_ids(course_tokenizer) == [0, 1, 2, 3] == list(peft_sft.SPECIAL_TOKEN_IDS)
    llama3 = AutoTokenizer.from_pretrained(str(model_folders["llama"]))  # a copy, given Llama 3's template
    llama3.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    llama3.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}")
    assert tokenizers.end_of_answer_id(llama3) == llama3.convert_tokens_to_ids("<|eot_id|>")
