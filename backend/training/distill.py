"""Training the teacher (LoRA + uncertainty estimator) and distilling it into the student.

Both reuse :class:`~backend.training.trainer.StudentTrainer`'s loop (data stream, exact
resume, budget, logs, validation) and change the model and the loss.

Distillation objective (paper: MMD between student and teacher feature distributions plus
image losses; the weights are ours):
``L = w_mmd * MMD^2(z_denoised, phi(z0_teacher)) + w_l1 * |x_s - x_hr| (+ SSIM, FFT)
+ w_t * |x_s - x_teacher| + w_adv * hinge_G(D(x_s))`` where ``phi`` is the tiny decoder's
first (latent -> 64) layer, the layer the student skips, so both features live in the
space the student's decoder reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from backend.training.losses import (
    PatchDiscriminator,
    feature_mmd,
    hinge_d_loss,
    hinge_g_loss,
)
from backend.training.settings import Distillation, TeacherTraining, TrainSettings
from backend.training.teacher import SingleStepTeacher, load_teacher, save_teacher, teacher_loss
from backend.training.trainer import BaseTrainer, StudentTrainer, TrainingError, weighted_total


class TeacherTrainer(BaseTrainer[SingleStepTeacher]):
    """LoRA on the UNet (optionally the VAE encoder) + the uncertainty estimator.

    ``settings.init`` is the local diffusers directory of the base model (SD-Turbo);
    ``settings.teacher_training`` the teacher's options and loss weights (defaults if None).
    """

    @property
    def teacher_training(self) -> TeacherTraining:
        return self.s.teacher_training or TeacherTraining()

    def _build_model(self) -> tuple[SingleStepTeacher, dict[str, Any]]:
        if not self.s.init:
            raise TrainingError("the teacher needs --base: a local SD-Turbo diffusers directory")
        self.base = Path(self.s.init)  # its scheduler/ goes into the exported teacher
        teacher = load_teacher(self.base, self.teacher_training.options, with_lora=True)
        return teacher, {"name": self.base.name}

    def input_multiple(self) -> int:
        return self.model.downscale

    def compute_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model.restore(inputs)
        with torch.no_grad():
            z_gt = self.model.encode(target).float()
        weights = self.teacher_training
        return teacher_loss(out, z_gt, target, weights.nll_weight, weights.latent_weight)

    def model_state(self) -> dict[str, torch.Tensor]:
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.model.state_dict().items() if k in trainable}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.model_state()) - set(state)
        if missing:
            raise TrainingError(f"teacher checkpoint lacks {len(missing)} trained tensors")
        self.model.load_state_dict(state, strict=False)

    def export(self, complete: bool) -> Path:
        """A teacher directory (merged LoRA): the input of ``prune`` and ``distill``."""
        folder = self.out / "teacher"
        save_teacher(self.model, folder, self.base)
        return folder


class DistillTrainer(StudentTrainer):
    """Student (``settings.init``: usually the pruned teacher) learns from a frozen teacher."""

    def __init__(self, settings: TrainSettings, log: Callable[[str], None] = print) -> None:
        if settings.distillation is None or not settings.distillation.teacher:
            raise TrainingError(
                "distillation needs --teacher: a teacher directory (from 'teacher' or a base)"
            )
        self.distillation: Distillation = settings.distillation
        settings.method = "distillation"
        super().__init__(settings, log)
        self.teacher = (
            load_teacher(self.distillation.teacher, device=self.device).eval().requires_grad_(False)
        )
        self.discriminator: PatchDiscriminator | None = None
        if self.distillation.gan_weight > 0:
            self.discriminator = PatchDiscriminator().to(self.device)
            self.d_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=self.distillation.gan_lr, betas=(0.5, 0.99)
            )
        self._last_pair: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def teacher_features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.teacher.restore(inputs)
        features = self.model.vae.decoder.layers[0](out["z0"].to(self.model.merge_conv2.weight.dtype))
        return features, out["image"]

    def compute_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        e = self.distillation
        z_student, image = self.student_output(inputs, lr)
        t_features, t_image = self.teacher_features(inputs)
        generator = torch.Generator().manual_seed(self.s.seed + 7919 * self.step)
        parts: dict[str, torch.Tensor] = {
            "mmd": feature_mmd(z_student.float(), t_features.float(), e.mmd_samples, generator)
        }
        weights = {"mmd": e.mmd_weight}
        image_parts, image_weights = self.image_losses(image, target)
        parts.update(image_parts)
        weights.update(image_weights)
        if e.teacher_image_weight:
            parts["teacher_l1"] = (image - t_image.float()).abs().mean()
            weights["teacher_l1"] = e.teacher_image_weight
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            parts["adv"], weights["adv"] = hinge_g_loss(self.discriminator(image)), e.gan_weight
            self._last_pair = (image.detach(), target)
        return weighted_total(parts, weights)

    def train_step(self, micro_batches: Iterator[torch.Tensor]) -> dict[str, float]:
        stats = super().train_step(micro_batches)
        if self.discriminator is not None and self._last_pair is not None:
            fake, real = self._last_pair
            self.discriminator.requires_grad_(True)
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss = hinge_d_loss(self.discriminator(real), self.discriminator(fake))
            d_loss.backward()
            self.d_optimizer.step()
            stats["d_loss"] = float(d_loss.detach())
        return stats

    def extra_state(self) -> dict[str, Any]:
        if self.discriminator is None:
            return {}
        return {
            "discriminator": self.discriminator.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])

    def training_metadata(self, complete: bool) -> dict[str, Any]:
        meta = super().training_metadata(complete)
        meta["distillation"] = {k: v for k, v in asdict(self.distillation).items() if k != "teacher"}
        meta["teacher"] = Path(self.distillation.teacher).name
        return meta
