"""The training recipe as one validated value, so a bad setting fails before any work starts."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError

SCHEDULES = ("onecycle", "cosine")


@dataclass(frozen=True)
class Recipe:
    """Defaults are the dense recipe of BENCHMARKS.md (fine-tuning uses the same with lr=0.05)."""

    epochs: int = 20
    lr: float = 0.2  # peak learning rate
    batch_size: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # weight decay on BatchNorm and bias parameters too
    schedule: str = "onecycle"
    warmup: float = 0.15  # fraction of all steps spent warming up
    label_smoothing: float = 0.1
    kd_temperature: float = 4.0
    kd_weight: float = 0.9  # share of the distillation term when a teacher is given
    seed: int = 0
    max_steps_per_epoch: int | None = None  # quick runs: stop each epoch early
    num_workers: int = 0
    bf16: bool = True  # bfloat16 autocast on GPUs (ignored on the CPU)
    channels_last: bool = True  # NHWC memory layout on GPUs, faster convolutions with tensor cores

    def __post_init__(self) -> None:
        self._positive("epochs", self.epochs, integer=True)
        self._positive("lr", self.lr)
        self._positive("batch_size", self.batch_size, integer=True)
        self._positive("kd_temperature", self.kd_temperature)
        if self.max_steps_per_epoch is not None:
            self._positive("max_steps_per_epoch", self.max_steps_per_epoch, integer=True)
        for name in ("momentum", "warmup", "label_smoothing", "kd_weight"):
            value = getattr(self, name)
            if not 0 <= value < 1 and not (name == "kd_weight" and value == 1):
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")

    @staticmethod
    def _positive(name: str, value, integer: bool = False) -> None:
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)
