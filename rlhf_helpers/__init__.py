"""Helpers for the *RLHF from scratch* course.

Each module holds one concept, and a lesson imports only what earlier lessons taught:

- ``env``        device, seed, profiles, the offline guard
- ``data``       the Shakespeare corpus and its split
- ``tokenizers`` real tiktoken encodings with no network, and the course tokenizer
- ``bpe``        byte-pair encoding from scratch (lesson 01's reference code)
- ``gpt``        the lesson-02 GPT, its training loop, its GPT-2 export, the ``base`` artifact
- ``instructions`` the demonstration tasks and the check of whether a response follows one
- ``models``     any causal LM as post-training's starting point (``--model``): loading, context, chat
- ``sft``        supervised fine-tuning with trl and the ``sft`` artifact (lesson 03)
- ``lora``       LoRA from scratch, its peft twin, and the memory arithmetic of QLoRA (lesson 04)
- ``peft_sft``   lesson 03's recipe with peft adapters: the ``sft_lora`` and comparison artifacts
- ``labeler``    the hidden gold utility and the simulated Bradley-Terry labeler (lesson 05)
- ``preferences`` comparison pairs, their split, and the learner's own labels file
- ``reward``     the reward model trained with trl and the ``reward_model`` artifact (lesson 05)
- ``ppo``        PPO for language models, written out (lesson 06)
- ``rlhf``       lesson 06's pipeline: the ``ppo`` artifact and the over-optimisation runs
- ``beyond_ppo`` DPO and GRPO with trl (lesson 07); ``arena`` judges every model side by side
- ``room``       a workshop's pooled labels and arena votes: merge, agreement, human Elo
- ``stats``      intervals for every measurement: the prompt-level (paired) bootstrap
- ``artifacts``  the cache of trained stages (get it, or build it with the reference code)
- ``exercises``  the check behind every exercise; ``checks`` holds each lesson's checks
- ``figures``    the key figures a lesson reports to ``python -m course bench``
- ``widgets``    notebook widgets (token visualiser, generation playground, labelling)

Importing the package switches the Hugging Face libraries offline (see ``env.go_offline``) and
turns off their progress bars (``env.quiet_library_progress_bars``).
"""

from rlhf_helpers.env import go_offline, quiet_library_progress_bars

go_offline()
quiet_library_progress_bars()

__version__ = "0.1.0"
