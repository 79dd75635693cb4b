"""The ordered list of lessons: the single source of lesson order, titles and time estimates.

Everything else (the README's course map, lesson 00's map, ``course list``, ``build``, ``bench``,
the tests) reads this list. A lesson is *available* once its solution notebook exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = ROOT / "lessons"
SOLUTIONS_DIR = ROOT / "solutions"


@dataclass(frozen=True)
class Lesson:
    number: int
    slug: str
    title: str
    objectives: tuple[str, ...]
    minutes_cpu: int  # a learner's time on a laptop CPU, reading and running
    minutes_gpu: int

    @property
    def id(self) -> str:
        return f"{self.number:02d}"

    @property
    def filename(self) -> str:
        return f"{self.id}_{self.slug}.ipynb"

    @property
    def lesson_path(self) -> Path:
        return LESSONS_DIR / self.filename

    @property
    def solution_path(self) -> Path:
        return SOLUTIONS_DIR / self.filename

    @property
    def available(self) -> bool:
        return self.solution_path.exists()


LESSONS: tuple[Lesson, ...] = (
    Lesson(0, "start_here", "Start here",
           ("check that your environment works offline",
            "learn how exercises, checks, profiles and artifacts work",
            "write a numerically stable softmax"), 15, 15),
    Lesson(1, "tokenization", "Tokenization: BPE, tiktoken and sentencepiece",
           ("build byte-pair encoding from scratch",
            "reproduce tiktoken's cl100k ids with your own encoder",
            "compare tiktoken and sentencepiece on the same texts",
            "train the course tokenizer"), 45, 40),
    Lesson(2, "gpt_from_scratch", "A GPT from scratch",
           ("build self-attention and a transformer block by hand",
            "write the training step, and train a GPT on Shakespeare with it; read its loss in nats per character",
            "export it as a Hugging Face GPT-2 with identical logits"), 60, 45),
    Lesson(3, "supervised_finetuning", "Supervised fine-tuning",
           ("render conversations with a chat template",
            "mask the prompt out of the loss and write one training step that equals trl's",
            "fine-tune on demonstrations with trl's SFTTrainer and measure instruction following"), 45, 35),
    Lesson(4, "lora_and_peft", "LoRA and parameter-efficient fine-tuning",
           ("write a LoRA layer from scratch",
            "fine-tune with peft and compare it with full fine-tuning",
            "do the memory arithmetic behind QLoRA"), 45, 40),
    Lesson(5, "reward_modelling", "Reward modelling from comparisons",
           ("derive the Bradley-Terry loss and write one training step that equals trl's",
            "train a reward model and measure it against a gold ordering",
            "label comparisons yourself and train on your own feedback"), 50, 40),
    Lesson(6, "rlhf_with_ppo", "RLHF with PPO",
           ("write PPO for language models from scratch: its maths, then the step and the loop that train the model",
            "keep the policy near its reference with a KL penalty",
            "watch reward over-optimisation happen"), 60, 45),
    Lesson(7, "beyond_ppo", "Beyond PPO: DPO, GRPO and an arena",
           ("derive and train DPO", "train GRPO with a learned and a verifiable reward",
            "rank every model in an Elo arena and chat with your model"), 60, 45),
)


def available_lessons() -> list[Lesson]:
    """The lessons whose notebooks exist, in course order."""
    return [lesson for lesson in LESSONS if lesson.available]


def find(key: str) -> Lesson:
    """A lesson by number (``"3"``, ``"03"``) or slug; a clear error otherwise."""
    for lesson in LESSONS:
        if key.lstrip("0") == str(lesson.number).lstrip("0") or key in (lesson.slug, lesson.filename):
            return lesson
    valid = ", ".join(f"{l.id} ({l.slug})" for l in LESSONS)
    raise SystemExit(f"No lesson {key!r}. Lessons: {valid}")


def course_map_markdown() -> str:
    """The course map as a Markdown table (for the README and lesson 00)."""
    rows = ["| # | lesson | you will | minutes (CPU / GPU) | status |", "|---|---|---|---|---|"]
    for l in LESSONS:
        status = "ready" if l.available else "coming soon"
        rows.append(f"| {l.id} | {l.title} | {'; '.join(l.objectives)} | {l.minutes_cpu} / {l.minutes_gpu} | {status} |")
    return "\n".join(rows)
