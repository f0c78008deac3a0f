"""What a training run depends on, one field per option (default, help, choices).

The command-line options of ``train``, ``teacher``, ``distill``, ``finetune`` and
``prune`` are generated from these fields (:mod:`backend.training.cli_fields`); a run's
settings are saved with every checkpoint (a resumed run must keep its recipe) and in the
exported weights' metadata. This module imports neither torch nor rasterio, so building
the command line stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.training.cli_fields import choices_of, cli

SAMPLINGS = ("area", "sqrt-area")
DEGRADATIONS = ("bicubic", "sensor", "sensor-clean", "sensor-soft", "sensor-aliased", "realesrgan")
# The exported weights' name when --name is not given, by training method.
EXPORT_NAMES = {
    "supervised": "slimdiffsr_x{scale}",
    "teacher": "teacher",
    "distillation": "slimdiffsr_distilled_x{scale}",
    "finetune": "slimdiffsr_finetuned_x{scale}",
}


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


def parse_student(value: str) -> dict[str, Any]:
    """A preset name, a JSON file, or a JSON string -> StudentConfig fields (validated)."""
    from backend.model import PRESETS, StudentConfig

    if value in PRESETS:
        data = PRESETS[value].to_dict()
    elif not value.lstrip().startswith("{") and Path(value).is_file():
        data = json.loads(Path(value).read_text())
    else:
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(
                f"--student {value!r} is neither a preset ({', '.join(PRESETS)}), a file nor JSON"
            ) from None
    return StudentConfig.from_dict(data).to_dict()


@dataclass
class TeacherOptions:
    """How the teacher picks t and what gets LoRA (saved as ``teacher.json``)."""

    timestep_mode: str = field(
        default="uncertainty",
        metadata=cli(
            "t from the estimated variance (the paper), a learned TimeMapping, or fixed_timestep",
            choices=("uncertainty", "learned", "fixed"),
        ),
    )
    fixed_timestep: float = 999.0  # SD-Turbo's single-step timestep, for 'fixed'
    lora_rank: int = field(default=4, metadata=cli("LoRA rank on the UNet"))
    vae_lora_rank: int = field(default=0, metadata=cli("LoRA rank on the VAE encoder (0: frozen)"))
    estimator_width: int = 64
    estimator_blocks: int = 4


@dataclass
class TeacherTraining:
    """The teacher's model options and loss weights (``slimdiffsr teacher``)."""

    options: TeacherOptions = field(default_factory=TeacherOptions, metadata=cli())
    nll_weight: float = field(default=1.0, metadata=cli("weight of the estimator's Gaussian NLL"))
    latent_weight: float = field(default=1.0, metadata=cli("weight of the x0 prediction's latent MSE"))


@dataclass
class Distillation:
    """What the student learns from the teacher (``slimdiffsr distill``)."""

    teacher: str = field(metadata=cli("teacher directory written by 'teacher' (or a base)"))
    mmd_weight: float = field(default=1.0, metadata=cli("MMD weight", flag="--mmd"))
    mmd_samples: int = field(default=1024, metadata=cli("feature vectors sampled per side"))
    teacher_image_weight: float = field(
        default=0.0, metadata=cli("weight of L1 to the teacher's image", flag="--teacher-image")
    )
    gan_weight: float = field(default=0.0, metadata=cli("adversarial (hinge) weight", flag="--gan"))
    gan_lr: float = 1e-4


def parse_json_object(value: str) -> dict[str, Any]:
    """A JSON object from the command line (lists become tuples, as dataclass fields hold them)."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{value!r} is not a JSON object")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


@dataclass
class Pruning:
    """Teacher UNet -> student (``slimdiffsr prune``)."""

    teacher: str | None = field(
        default=None, metadata=cli("teacher or base diffusers directory (its unet/ is pruned)")
    )
    out: str | None = field(default=None, metadata=cli("student .safetensors to write"))
    depth: int = field(default=2, metadata=cli("levels kept by depth pruning (the paper keeps 2)"))
    taesd: str | None = field(
        default=None, metadata=cli("local AutoencoderTiny directory for the tiny VAE slices")
    )
    student: dict[str, Any] | None = field(
        default=None,
        metadata=cli(
            "StudentConfig fields overriding the derived ones (JSON), e.g. a thinner tiny VAE for tests",
            parse=parse_json_object,
        ),
    )
    scale: int = field(default=4, metadata=cli("upscaling factor recorded in the weights", choices=(2, 4, 8)))
    paper_counts: bool = field(
        default=False,
        metadata=cli("only print the paper configuration's parameter counts (meta device, no memory)"),
    )


@dataclass(kw_only=True)
class TrainSettings:
    """Everything a run depends on; saved with checkpoints and in the exported metadata."""

    data: list[str] = field(metadata=cli("HR rasters or folders (GeoTIFF/PNG/JPEG)"))
    student: dict[str, Any] | None = field(
        default=None,
        metadata=cli(
            "StudentConfig as a preset (paper, compact), a JSON file or a JSON string "
            "(default: the paper's student)",
            parse=parse_student,
        ),
    )
    init: str | None = field(
        default=None, metadata=cli("start from these weights (.safetensors or release .pkl)")
    )
    # -- data
    val_data: list[str] = field(
        default_factory=list,
        metadata=cli("held-out rasters/folders (default: a hash-chosen fraction of --data)", group="data"),
    )
    val_fraction: float = field(default=0.1, metadata=cli("share of files held out", group="data"))
    split_seed: int | None = field(
        default=None,
        metadata=cli(
            "seed of the held-out choice (default: --seed); a continued run keeps its parent's "
            "held-out files while drawing new crops with another --seed",
            group="data",
        ),
    )
    scale: int = field(default=4, metadata=cli("upscaling factor", choices=(2, 4, 8), group="data"))
    crop: int = field(
        default=128, metadata=cli("HR crop size in pixels; the paper trains on 256", group="data")
    )
    degradation: str = field(
        default="bicubic",
        metadata=cli(
            "LR synthesis: the benchmark, sensor-like (all regimes, or the clean, soft or aliased "
            "regime alone), or the paper's Real-ESRGAN pipeline",
            choices=DEGRADATIONS,
            group="data",
        ),
    )
    clean_share: float | None = field(
        default=None,
        metadata=cli(
            "share of crops reduced cleanly (antialiased bicubic alone) within a sensor-like"
            " synthesis; default: its own (0 for one regime, 0.25 for sensor). An expert that sees"
            " some clean LR costs less where it is chosen for sharp imagery",
            group="data",
        ),
    )
    lr_consistency: bool = field(
        default=False,
        metadata=cli(
            "back-project the output to the LR input inside the loss (and record it in the weights)",
            group="data",
        ),
    )
    max_invalid: float = field(default=0.01, metadata=cli("largest nodata share of a crop", group="data"))
    sampling: str = field(
        default="area",
        metadata=cli(
            "draw files by area (each pixel equally likely) or by its square root (small scenes weigh more)",
            choices=SAMPLINGS,
            group="data",
        ),
    )
    colour_augment: float = field(
        default=0.0,
        metadata=cli(
            "probability that an HR crop's bands are reordered, greyed, given a gamma and a lower"
            " contrast (robustness to other sensors' colours)",
            group="data",
        ),
    )
    zoom_out: float = field(
        default=1.0,
        metadata=cli(
            "half the HR crops are read from a window up to this many times larger and reduced to"
            " the crop (a coarser GSD; 1 = off)",
            group="data",
        ),
    )
    workers: int = field(default=0, metadata=cli("data loader processes", group="data"))
    # -- optimisation
    steps: int = field(default=20000, metadata=cli("optimizer steps of the whole run", group="optimisation"))
    batch_size: int = field(default=4, metadata=cli("crops per micro-batch", group="optimisation"))
    grad_accum: int = field(default=1, metadata=cli("micro-batches per optimizer step", group="optimisation"))
    lr: float = field(default=2e-4, metadata=cli("peak learning rate", group="optimisation"))
    weight_decay: float = field(default=1e-4, metadata=cli("AdamW weight decay", group="optimisation"))
    schedule: str = field(
        default="cosine",
        metadata=cli("decay after the warm-up", choices=("cosine", "constant"), group="optimisation"),
    )
    warmup: int = field(default=100, metadata=cli("linear warm-up steps", group="optimisation"))
    min_lr_ratio: float = 0.05  # where the cosine decay ends, as a share of --lr
    grad_clip: float = field(default=1.0, metadata=cli("max gradient norm (0: off)", group="optimisation"))
    precision: str = field(
        default="fp32",
        metadata=cli(
            "autocast dtype (bf16 on CPU or GPU, fp16 on CUDA with loss scaling)",
            choices=("fp32", "bf16", "fp16"),
            group="optimisation",
        ),
    )
    l1_weight: float = field(default=1.0, metadata=cli("L1 weight", flag="--l1", group="optimisation"))
    mse_weight: float = field(
        default=0.0,
        metadata=cli(
            "squared error, what PSNR measures (e.g. --l1 0 --mse 1 to fine-tune an L1 model for PSNR)",
            flag="--mse",
            group="optimisation",
        ),
    )
    ssim_weight: float = field(default=0.0, metadata=cli("SSIM weight", flag="--ssim", group="optimisation"))
    fft_weight: float = field(
        default=0.0, metadata=cli("spectral L1 weight", flag="--fft", group="optimisation")
    )
    seed: int = field(
        default=0, metadata=cli("seed of the crops, the LR synthesis and the init", group="optimisation")
    )
    # -- run
    out: str = field(metadata=cli("run folder (checkpoint, logs, exported weights)", group="run"))
    name: str | None = field(
        default=None,
        metadata=cli("name of the exported .safetensors (default from the method and scale)", group="run"),
    )
    device: str = field(
        default="auto", metadata=cli("auto (cuda:0 when usable, else cpu), cpu, cuda or cuda:N", group="run")
    )
    max_minutes: float | None = field(
        default=None,
        metadata=cli("stop (checkpoint + export) after this long; run again to continue", group="run"),
    )
    checkpoint_every: int = field(
        default=200, metadata=cli("steps between checkpoints (0: only at the end)", group="run")
    )
    val_every: int = field(default=200, metadata=cli("steps between validations (0: none)", group="run"))
    val_crops_per_file: int = field(
        default=2, metadata=cli("fixed validation crops per held-out file", group="run")
    )
    log_every: int = field(default=10, metadata=cli("steps between log rows", group="run"))
    tensorboard: bool = field(default=False, metadata=cli("also log to OUT/tensorboard", group="run"))
    # -- set by the command, not the user
    method: str = "supervised"  # a key of EXPORT_NAMES
    teacher_training: TeacherTraining | None = None  # method "teacher"
    distillation: Distillation | None = None  # method "distillation"

    @property
    def export_name(self) -> str:
        """The exported weights' file stem: --name, else one derived from method and scale."""
        return self.name or EXPORT_NAMES[self.method].format(scale=self.scale)

    def validate(self, multiple: int) -> None:
        if self.method not in EXPORT_NAMES:
            raise TrainingError(f"method must be one of {', '.join(EXPORT_NAMES)}, not {self.method!r}")
        for f in dataclasses.fields(self):
            allowed = choices_of(f)
            if allowed is not None and getattr(self, f.name) not in allowed:
                names = ", ".join(str(c) for c in allowed)
                raise TrainingError(f"{f.name} must be one of {names}, not {getattr(self, f.name)!r}")
        if self.crop % self.scale or self.crop % multiple:
            raise TrainingError(
                f"crop {self.crop} must be a multiple of the scale {self.scale} and of the network's "
                f"input multiple {multiple}"
            )
        if self.batch_size < 1 or self.grad_accum < 1 or self.steps < 1:
            raise TrainingError("batch size, gradient accumulation and steps must be positive")
        if not 0.0 <= self.colour_augment <= 1.0:
            raise TrainingError(f"colour_augment must be a probability in [0, 1], not {self.colour_augment}")
        if self.clean_share is not None:
            if not self.degradation.startswith("sensor"):
                raise TrainingError(
                    f"clean_share applies to the sensor-like syntheses only, not to '{self.degradation}'"
                )
            if not 0.0 <= self.clean_share <= 1.0:
                raise TrainingError(f"clean_share must be a probability in [0, 1], not {self.clean_share}")
        if self.zoom_out < 1.0:
            raise TrainingError(f"zoom_out must be at least 1, not {self.zoom_out}")
