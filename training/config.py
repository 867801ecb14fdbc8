"""The one configuration object of a GRPO + LoRA training job.

A job arrives as JSON (``POST /admin/training-jobs``), so ``GRPOJobConfig.from_params`` turns a
plain dict into a validated config; the paths a worker decides (where the base model lives, where
the adapter goes) are passed separately and cannot be overridden from the request.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, get_args, get_origin, get_type_hints

AGENTS = ("answer", "manager")
REWARDS = ("em", "f1")

# Upper bounds of the numeric parameters: far above anything useful, low enough that no request
# can ask a worker for a run that never ends or an allocation that cannot succeed.
AT_MOST: dict[str, float] = {
    "lora_alpha": 4096,
    "max_steps": 100_000,
    "num_generations": 64,
    "per_device_train_batch_size": 256,
    "gradient_accumulation_steps": 1024,
    "max_prompt_length": 32_768,
    "max_completion_length": 4096,
    "beta": 10.0,
    "temperature": 10.0,
    "max_train_rows": 1_000_000,
    "seed": 2**32 - 1,
}


@dataclass(frozen=True)
class GRPOJobConfig:
    """Hyper-parameters of one GRPO run for the Answer Agent or the Memory Manager.

    The defaults are sized for the bundled SmolLM2-135M on a CPU: short completions, small groups,
    a LoRA rank that a 135M model can move with a few dozen steps.
    """

    agent: str = field(
        metadata={"help": "Which agent to train: 'answer' (Answer Agent) or 'manager'."}
    )
    output_dir: Path = field(
        metadata={"help": "Directory the trained LoRA adapter is written to (save_pretrained)."}
    )
    base_model_dir: Path = field(
        metadata={"help": "Local Hugging Face model directory of the base causal LM."}
    )
    reward: str = field(
        default="f1",
        metadata={
            "help": "Outcome reward: 'em' (exact match, as in the paper) or 'f1' (token F1, a "
            "denser signal that small models learn from faster)."
        },
    )
    format_weight: float = field(
        default=0.2,
        metadata={
            "help": "Weight in [0, 1] of the format reward (valid JSON under the agent's schema, "
            "known memory ids); the outcome reward gets 1 - format_weight."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (1..256)."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha/r."}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."}
    )
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "Names of the linear modules that get LoRA weights."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate."})
    max_steps: int = field(default=40, metadata={"help": "Optimizer steps to run."})
    num_generations: int = field(
        default=4,
        metadata={"help": "Completions sampled per prompt (the GRPO group); at least 2."},
    )
    per_device_train_batch_size: int = field(
        default=1,
        metadata={
            "help": "Completions per forward/backward micro-batch. Together with "
            "gradient_accumulation_steps it must hold whole groups of num_generations. On a "
            "CPU, 1 is the fastest and holds a quarter of the activations of 4 (Answer Agent "
            "steps on 2-core: 58 s and 5 GB at 1, 62-73 s and 15 GB at 4; 4 on prompts of 60 "
            "memories ran out of 24 GB)."
        },
    )
    gradient_accumulation_steps: int = field(
        default=8,
        metadata={
            "help": "Micro-batches per optimizer step. One step then scores "
            "per_device_train_batch_size * gradient_accumulation_steps / num_generations prompts."
        },
    )
    max_prompt_length: int = field(
        default=4096,
        metadata={
            "help": "Rows whose chat prompt is longer than this many tokens are skipped (an "
            "Answer Agent prompt with 60 memories is about 2,100 SmolLM2 tokens)."
        },
    )
    max_completion_length: int = field(
        default=48, metadata={"help": "Maximum generated tokens per completion."}
    )
    beta: float = field(
        default=0.02,
        metadata={
            "help": "KL coefficient against the base model (adapters disabled); 0 turns the KL "
            "term off and saves one forward pass per step."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature, > 0."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init, sampling and shuffling."})
    max_train_rows: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows; None uses all."}
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Generate with vLLM colocated on the GPU (requires CUDA and the vllm "
            "package); off means transformers generate, which also works on a CPU."
        },
    )
    constrained: bool = field(
        default=True,
        metadata={
            "help": "Sample completions under the agent's JSON grammar, as serving decodes, so "
            "every sample parses and rewards differ by content (transformers generate only; "
            "set false with use_vllm)."
        },
    )

    def __post_init__(self) -> None:
        # Values arrive from JSON: strings for paths, lists for tuples, ints for floats. Normalise
        # them first so the range checks below compare numbers, never a str with an int.
        for name, hint in get_type_hints(type(self)).items():
            object.__setattr__(self, name, _coerce(name, hint, getattr(self, name)))
        for check in (
            self._check_choices,
            self._check_lora,
            self._check_optimisation,
            self._check_upper_bounds,
        ):
            check()

    def _check_upper_bounds(self) -> None:
        for name, most in AT_MOST.items():
            value = getattr(self, name)
            if value is not None and value > most:
                raise ValueError(f"{name} must be at most {most:g}, got {value}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        if len(self.target_modules) > 64:
            raise ValueError(
                f"target_modules names at most 64 modules, got {len(self.target_modules)}."
            )

    def _check_choices(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"agent must be one of {AGENTS}, got {self.agent!r}.")
        if self.reward not in REWARDS:
            raise ValueError(
                f"reward must be 'em' (exact match) or 'f1' (token F1), got {self.reward!r}."
            )
        if self.constrained and self.use_vllm:
            raise ValueError(
                "constrained sampling runs on transformers generate; set constrained to false "
                "to generate with vLLM."
            )
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(
                f"format_weight must be in [0, 1] (0 = outcome reward only), "
                f"got {self.format_weight}."
            )

    def _check_lora(self) -> None:
        if not 1 <= self.lora_r <= 256:
            raise ValueError(f"lora_r must be between 1 and 256 (try 8 or 16), got {self.lora_r}.")
        if self.lora_alpha <= 0:
            raise ValueError(
                f"lora_alpha must be > 0 (commonly 2 * lora_r), got {self.lora_alpha}."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if not self.target_modules or not all(self.target_modules):
            raise ValueError(
                "target_modules must name at least one module, e.g. ['q_proj', 'v_proj']."
            )

    def _check_optimisation(self) -> None:
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(
                f"learning_rate must be in (0, 1) (LoRA GRPO uses ~1e-5..5e-4), "
                f"got {self.learning_rate}."
            )
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2: GRPO's advantage compares completions of the same "
                f"prompt, got {self.num_generations}."
            )
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps ({batch}) must be a "
                f"multiple of num_generations ({self.num_generations}), because every step scores "
                f"whole groups of completions; e.g. set per_device_train_batch_size to "
                f"{self.num_generations}."
            )
        if self.max_prompt_length < 32:
            raise ValueError(f"max_prompt_length must be >= 32, got {self.max_prompt_length}.")
        if self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length must be >= 1, got {self.max_completion_length}."
            )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (0 disables the KL term), got {self.beta}.")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0: GRPO needs sampled, varied completions, "
                f"got {self.temperature}."
            )
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ValueError(
                f"max_train_rows must be >= 1, or None to use every row, got {self.max_train_rows}."
            )

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts scored per optimizer step on one process."""
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        return batch // self.num_generations

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **fixed: Any) -> "GRPOJobConfig":
        """A config from user-supplied ``params`` plus ``fixed`` values the caller controls.

        Unknown keys are rejected with the list of valid ones, and ``params`` may not set a key
        that ``fixed`` sets (for instance ``output_dir``, which the worker chooses)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"Unknown training parameter(s) {unknown}; valid ones are {sorted(names)}."
            )
        clashing = sorted(set(params) & set(fixed))
        if clashing:
            raise ValueError(f"{clashing} are set by the service and cannot be given as params.")
        return cls(**{**params, **fixed})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for API docs and error messages."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_EXPECTED[Path] = "a non-empty path"


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` names, or a ValueError saying what was expected."""
    if get_origin(hint) is UnionType:
        if value is None and NoneType in get_args(hint):
            return None
        (hint,) = [arg for arg in get_args(hint) if arg is not NoneType]
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is Path:
        ok = isinstance(value, str | Path) and str(value) != ""
        value = Path(value) if ok else value
    else:  # tuple[str, ...]
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        expected = _EXPECTED.get(hint, "a list of strings")
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return value
