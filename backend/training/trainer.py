"""A resumable training loop for the student, run in chunks on whatever hardware there is.

The supervised objective (HR crops, synthetic LR, image losses on the student's output)
is the loop's default (:class:`StudentTrainer`); distillation and fine-tuning reuse it and
change only the loss (:meth:`BaseTrainer.compute_loss`) and where the weights start; the
teacher's trainer shares the loop (:class:`BaseTrainer`) with another model.

Reproducibility and exact resume: the HR crops of step ``s`` are items
``[s*B*A, (s+1)*B*A)`` of a dataset whose item ``i`` is a pure function of ``(seed, i)``,
and the LR synthesis of step ``s`` draws from a generator seeded with ``(seed, s)``. A
checkpoint therefore needs only the model, optimizer, LR scheduler, step counter and torch
RNG states; training N steps at once or in several chunks gives the same weights.

Files written to the output folder:
``checkpoint.pt`` (latest state, replaced atomically), ``train_log.csv``, ``val_log.csv``,
``settings.json``, ``<name>.safetensors`` (exported at every stop, with metadata saying
whether the planned steps are complete) and optionally ``tensorboard/``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import operator
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch.utils.data import DataLoader

from backend.inference import describe_device, resolve_device
from backend.metrics import psnr, rgb_to_y, ssim_index
from backend.model import SlimDiffSRStudent, StudentConfig
from backend.model.lr_consistency import enforce_lr_consistency
from backend.signals import StopRequest
from backend.training.data import FixedCrops, RasterCropDataset, find_rasters, stable_split
from backend.training.degradations import make_degrader, network_input
from backend.training.losses import fft_loss, ssim_loss
from backend.training.settings import TrainingError, TrainSettings
from backend.weights import load_weights, save_safetensors

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


__all__ = ["BaseTrainer", "StudentTrainer", "TrainSettings", "TrainingError", "lr_factor", "weighted_total"]

M = TypeVar("M", bound=torch.nn.Module)


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio`` (our defaults)."""
    if settings.warmup and step < settings.warmup:
        return (step + 1) / settings.warmup
    if settings.schedule == "constant":
        return 1.0
    span = max(1, settings.steps - settings.warmup)
    progress = min(1.0, (step - settings.warmup) / span)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def hardware_summary(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{describe_device(device)}; {cpu}; torch {torch.__version__}"


def weighted_total(
    parts: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """(sum of the weighted loss terms, each term's unweighted value for the log)."""
    total = functools.reduce(operator.add, (weights[k] * v for k, v in parts.items()))
    return total, {k: float(v.detach()) for k, v in parts.items()}


class BaseTrainer(Generic[M]):
    """Builds data, model and optimizer from settings; ``run()`` trains until done or stopped.

    Subclasses say which model (:meth:`_build_model`), its input multiple and how it is
    exported; the student's trainers and the teacher's share everything else.
    """

    model: M

    def __init__(self, settings: TrainSettings, log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.log = log
        self.out = Path(settings.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(settings.device)
        torch.manual_seed(settings.seed)
        self.model, self.init_metadata = self._build_model()
        settings.validate(self.input_multiple())
        self.model.to(self.device).train().requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.99)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda st: lr_factor(st, settings))
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.precision == "fp16")
        self.degrade = make_degrader(settings.degradation, settings.scale, settings.clean_share)
        self.train_files, self.val_files = self._split_files()
        self.dataset = RasterCropDataset(
            self.train_files,
            settings.crop,
            seed=settings.seed,
            max_invalid=settings.max_invalid,
            sampling=settings.sampling,
            colour_augment=settings.colour_augment,
            zoom_out=settings.zoom_out,
        )
        self.val_set = (
            FixedCrops(
                self.val_files, settings.crop, settings.val_crops_per_file, max_invalid=settings.max_invalid
            )
            if self.val_files
            else None
        )
        self.step = 0
        self.train_seconds = 0.0
        self.last_val: dict[str, float] = {}
        self._tb: SummaryWriter | None = None
        self.stopped_by = ""

    # -- construction ------------------------------------------------------------------
    def _build_model(self) -> tuple[M, dict[str, Any]]:
        """The model to train and the metadata of the weights it starts from."""
        raise NotImplementedError

    def input_multiple(self) -> int:
        """What the crop size must be a multiple of (the network's downscaling)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _split_files(self) -> tuple[list[Path], list[Path]]:
        files = find_rasters(self.s.data)
        if not files:
            raise TrainingError(f"no raster files found under {', '.join(self.s.data)}")
        if self.s.val_data:
            return files, find_rasters(self.s.val_data)
        split_seed = self.s.seed if self.s.split_seed is None else self.s.split_seed
        return stable_split(files, self.s.val_fraction, split_seed)

    # -- one step ----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.s.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.s.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def batches(self, start_step: int) -> Iterator[torch.Tensor]:
        """HR micro-batches from ``start_step`` on, in the fixed order of the data stream."""
        b = self.s.batch_size

        def index_batches() -> Iterator[list[int]]:
            micro = start_step * self.s.grad_accum
            while True:
                yield list(range(micro * b, (micro + 1) * b))
                micro += 1

        loader = DataLoader(self.dataset, batch_sampler=index_batches(), num_workers=self.s.workers)
        yield from loader

    def make_pair(
        self, hr: torch.Tensor, step: int, micro: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HR [0,1] -> (network input, target, LR), all in [-1, 1]; the LR drawn with a per-step seed."""
        generator = torch.Generator().manual_seed(self.s.seed * 1_000_003 + step * 64 + micro)
        lr = self.degrade(hr, generator)
        return network_input(lr, self.s.scale), hr * 2 - 1, lr * 2 - 1

    def student_output(self, inputs: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's ``(z_denoised, image)``, the image in float32 and back-projected to
        ``lr`` when the run asks (every trainer's losses see the image inference delivers)."""
        z, image = self.model(inputs)
        image = image.float()
        if self.s.lr_consistency:
            image = enforce_lr_consistency(image, lr, self.s.scale)
        return z, image

    def image_losses(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """(losses, weights) of the output image against HR in [-1, 1], for every trainer:
        L1 always (logged even at weight 0), squared error, SSIM and spectral L1 when weighted."""
        parts: dict[str, torch.Tensor] = {"l1": (image - target).abs().mean()}
        weights = {"l1": self.s.l1_weight}
        if self.s.mse_weight:
            parts["mse"], weights["mse"] = (image - target).square().mean(), self.s.mse_weight
        if self.s.ssim_weight:
            parts["ssim"], weights["ssim"] = ssim_loss(image, target), self.s.ssim_weight
        if self.s.fft_weight:
            parts["fft"], weights["fft"] = fft_loss(image, target), self.s.fft_weight
        return parts, weights

    def compute_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Image losses on the student's output in [-1, 1] space."""
        _, image = self.student_output(inputs, lr)
        return weighted_total(*self.image_losses(image, target))

    def train_step(self, micro_batches: Iterator[torch.Tensor]) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(self.s.grad_accum):
            hr = next(micro_batches).to(self.device, non_blocking=True)
            inputs, target, lr = self.make_pair(hr, self.step, micro)
            with self.autocast():
                loss, parts = self.compute_loss(inputs, target, lr)
            self.scaler.scale(loss / self.s.grad_accum).backward()
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v / self.s.grad_accum
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.trainable_parameters(), self.s.grad_clip if self.s.grad_clip > 0 else float("inf")
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        totals["grad_norm"] = float(norm)
        return totals

    # -- validation --------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM of the raw output (no colour match) and of bicubic, on fixed crops."""
        if self.val_set is None:
            return {}
        self.model.eval()
        rows: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "psnr_y": [], "bicubic_psnr": []}
        generator_seed = 777
        loader = DataLoader(self.val_set, batch_size=self.s.batch_size)
        for n, hr in enumerate(loader):
            hr = hr.to(self.device)
            lr = self.degrade(hr, torch.Generator().manual_seed(generator_seed + n))
            up = network_input(lr, self.s.scale)
            with self.autocast():
                _, image = self.student_output(up, lr * 2 - 1)
            sr = (image / 2 + 0.5).clamp(0, 1)
            rows["psnr"].append(psnr(sr, hr))
            rows["ssim"].append(ssim_index(sr, hr))
            rows["psnr_y"].append(psnr(rgb_to_y(sr), rgb_to_y(hr), border=self.s.scale))
            rows["bicubic_psnr"].append(psnr((up / 2 + 0.5).clamp(0, 1), hr))
        self.model.train()
        return {k: float(torch.cat(v).mean()) for k, v in rows.items()}

    # -- persistence -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def save_checkpoint(self) -> Path:
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "settings": json.dumps(dataclasses.asdict(self.s)),
            "model": self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "last_val": json.dumps(self.last_val),
            **self.extra_state(),
        }
        tmp = self.checkpoint_path.with_suffix(".pt.part")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)
        return self.checkpoint_path

    def model_state(self) -> dict[str, torch.Tensor]:
        """What of the model a checkpoint holds (the teacher keeps only its trained parts)."""
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        """Subclasses add their own trainable state (e.g. a discriminator)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def resume(self) -> bool:
        """Continue from ``checkpoint.pt`` when present; refuse if the run's recipe changed."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
        # Settings that may change between chunks: the budget, the device, workers, cadence,
        # where the run lives and what its export is called.
        free = {
            "name",
            "max_minutes",
            "device",
            "workers",
            "checkpoint_every",
            "val_every",
            "log_every",
            "steps",
            "tensorboard",
            "out",
            "init",
        }
        mine = json.loads(json.dumps(dataclasses.asdict(self.s)))

        def same(key: str) -> bool:
            if key not in mine:  # a setting removed since: only its empty value resumes
                return not saved[key]
            if key in ("data", "val_data"):  # one folder, however it was spelled
                return [str(Path(p).resolve()) for p in saved[key] or []] == [
                    str(Path(p).resolve()) for p in mine.get(key) or []
                ]
            return saved[key] == mine[key]

        changed = [k for k in saved if k not in free and not same(k)]
        # A setting added since the checkpoint was written resumes only at its default.
        defaults = {f.name: f.default for f in dataclasses.fields(self.s)}
        changed += [k for k in mine if k not in saved and k not in free and mine[k] != defaults.get(k)]
        if changed:
            raise TrainingError(
                f"{self.checkpoint_path} was written with different settings ({', '.join(sorted(changed))}); "
                "use the same settings to resume, or --restart to start over"
            )
        self.load_model_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.last_val = json.loads(state["last_val"])
        self.load_extra_state(state)
        self._truncate_logs(self.step)
        return True

    def forget_earlier_run(self) -> None:
        """Remove the checkpoint and logs of an earlier run in this folder (``--restart``)."""
        self.checkpoint_path.unlink(missing_ok=True)
        for name in ("train_log.csv", "val_log.csv"):
            (self.out / name).unlink(missing_ok=True)

    def _truncate_logs(self, step: int) -> None:
        """Drop log rows written after the checkpoint by a chunk that was killed hard."""
        for name in ("train_log.csv", "val_log.csv"):
            path = self.out / name
            if not path.is_file():
                continue
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
            with path.open("w", newline="") as f:
                csv.writer(f).writerows(kept)

    def append_csv(self, name: str, row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(f"{Path(name).stem}/{k}", v, row["step"])

    def training_metadata(self, complete: bool) -> dict[str, Any]:
        return {
            "method": self.s.method,
            "steps": self.step,
            "steps_planned": self.s.steps,
            "complete": complete,
            "data": self.s.data,
            "train_files": len(self.dataset.sources),
            "val_files": [Path(p).name for p in self.val_files],
            "degradation": self.degrade.describe(),
            "lr_consistency": self.s.lr_consistency,
            "crop": self.s.crop,
            "sampling": self.s.sampling,
            "colour_augment": self.s.colour_augment,
            "zoom_out": self.s.zoom_out,
            "batch_size": self.s.batch_size * self.s.grad_accum,
            "lr": self.s.lr,
            "schedule": self.s.schedule,
            "losses": {
                "l1": self.s.l1_weight,
                "mse": self.s.mse_weight,
                "ssim": self.s.ssim_weight,
                "fft": self.s.fft_weight,
            },
            "precision": self.s.precision,
            "seed": self.s.seed,
            "hardware": hardware_summary(self.device),
            "train_seconds": round(self.train_seconds, 1),
            "validation": self.last_val,
            "started_from": self.init_metadata.get("name") or self.s.init or "random initialisation",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def export(self, complete: bool) -> Path:
        """Write the trained model where the user picks it up; returns its path."""
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------
    def run(self, restart: bool = False) -> Path:
        """Train to ``settings.steps`` or until the budget/a signal; always checkpoint and export."""
        if restart:
            self.forget_earlier_run()
        elif self.resume():
            self.log(f"resumed from step {self.step} ({self.checkpoint_path})")
        (self.out / "settings.json").write_text(json.dumps(dataclasses.asdict(self.s), indent=2))
        if self.s.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self.log("tensorboard is not installed; logging to CSV only")
        self.log(
            f"training {self.s.method} x{self.s.scale} on {len(self.dataset.sources)} files "
            f"({len(self.val_files)} held out), {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M "
            f"parameters, {hardware_summary(self.device)}"
        )
        deadline = time.monotonic() + self.s.max_minutes * 60 if self.s.max_minutes else None
        reason = "done"
        with StopRequest() as stop:
            stream = self.batches(self.step)
            while self.step < self.s.steps:
                t0 = time.perf_counter()
                parts = self.train_step(stream)
                self.step += 1
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                if not math.isfinite(parts["loss"]):
                    raise TrainingError(f"loss became {parts['loss']} at step {self.step}; lower --lr")
                if self.step % self.s.log_every == 0 or self.step == 1:
                    row = {
                        "step": self.step,
                        **{k: round(v, 6) for k, v in parts.items()},
                        "lr": self.scheduler.get_last_lr()[0],
                        "sec_per_step": round(dt, 4),
                        "elapsed_s": round(self.train_seconds, 1),
                    }
                    self.append_csv("train_log.csv", row)
                    self.log(
                        " ".join(
                            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        )
                    )
                if self.s.val_every and self.step % self.s.val_every == 0:
                    self.last_val = self.validate()
                    if self.last_val:
                        self.append_csv("val_log.csv", {"step": self.step, **self.last_val})
                        self.log(
                            f"validation step {self.step}: "
                            + ", ".join(f"{k} {v:.3f}" for k, v in self.last_val.items())
                        )
                if self.s.checkpoint_every and self.step % self.s.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop.signal is not None:
                    reason = f"signal {stop.signal}"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    reason = "time budget"
                    break
        complete = self.step >= self.s.steps
        if complete and self.s.val_every and self.step % self.s.val_every:
            self.last_val = self.validate()
            if self.last_val:
                self.append_csv("val_log.csv", {"step": self.step, **self.last_val})
        self.save_checkpoint()
        path = self.export(complete)
        if self._tb is not None:
            self._tb.close()
        state = "finished" if complete else f"paused ({reason}); run the same command again to continue"
        self.log(f"{state} at step {self.step}/{self.s.steps}; weights: {path}")
        self.stopped_by = reason
        return path


class StudentTrainer(BaseTrainer[SlimDiffSRStudent]):
    """Trains a :class:`SlimDiffSRStudent`: a new one (``student``) or ``init`` weights."""

    def _build_model(self) -> tuple[SlimDiffSRStudent, dict[str, Any]]:
        if self.s.init:
            loaded = load_weights(
                self.s.init, scale=None if Path(self.s.init).suffix == ".safetensors" else self.s.scale
            )
            if loaded.scale != self.s.scale:
                self.log(
                    f"note: {Path(self.s.init).name} was trained for x{loaded.scale}; training for "
                    f"x{self.s.scale} (x4 and x8 share the architecture)"
                )
            model, metadata = loaded.model, dict(loaded.metadata)
        else:
            config = StudentConfig.from_dict(self.s.student) if self.s.student else StudentConfig()
            model, metadata = SlimDiffSRStudent(config), {}
        self.s.student = model.config.to_dict()  # recorded: a resumed run keeps its architecture
        return model, metadata

    def input_multiple(self) -> int:
        return self.model.config.downscale

    def export(self, complete: bool) -> Path:
        path = self.out / f"{self.s.export_name}.safetensors"
        return save_safetensors(
            self.model,
            path,
            self.s.scale,
            name=self.s.export_name,
            training=self.training_metadata(complete),
            lr_consistency=self.s.lr_consistency,
        )
