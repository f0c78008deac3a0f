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

from pathlib import Path
from typing import Any

import torch

from backend.training.losses import (
    PatchDiscriminator,
    feature_mmd,
    hinge_d_loss,
    hinge_g_loss,
)
from backend.training.teacher import (
    SingleStepTeacher,
    TeacherOptions,
    load_teacher,
    save_teacher,
    teacher_loss,
)
from backend.training.trainer import StudentTrainer, TrainingError

DISTILL_DEFAULTS: dict[str, Any] = {
    "teacher": None,
    "mmd_weight": 1.0,
    "mmd_samples": 1024,
    "teacher_image_weight": 0.0,
    "gan_weight": 0.0,
    "gan_lr": 1e-4,
}


class TeacherTrainer(StudentTrainer):
    """LoRA on the UNet (optionally the VAE encoder) + the uncertainty estimator.

    ``settings.init`` is the local diffusers directory of the base model (SD-Turbo);
    ``settings.extra`` holds :class:`TeacherOptions` fields and the NLL/latent weights.
    """

    def _build_model(self) -> tuple[SingleStepTeacher, dict[str, Any]]:
        if not self.s.init:
            raise TrainingError("the teacher needs --base: a local SD-Turbo diffusers directory")
        names = TeacherOptions.__dataclass_fields__
        options = TeacherOptions(**{k: v for k, v in self.s.extra.items() if k in names})
        teacher = load_teacher(self.s.init, options, with_lora=True)
        return teacher, {"name": Path(self.s.init).name}

    def compute_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model.restore(inputs)
        with torch.no_grad():
            z_gt = self.model.encode(target).float()
        return teacher_loss(
            out, z_gt, target, self.s.extra.get("nll_weight", 1.0), self.s.extra.get("latent_weight", 1.0)
        )

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
        save_teacher(self.model, folder, self.s.init)
        return folder


class DistillTrainer(StudentTrainer):
    """Student (``settings.init``: usually the pruned teacher) learns from a frozen teacher."""

    def __init__(self, settings, log=print) -> None:
        settings.extra = {**DISTILL_DEFAULTS, **settings.extra}
        settings.method = "distillation"
        if not settings.extra["teacher"]:
            raise TrainingError(
                "distillation needs --teacher: a teacher directory (from 'teacher' or a base)"
            )
        super().__init__(settings, log)
        self.teacher = (
            load_teacher(settings.extra["teacher"], device=self.device).eval().requires_grad_(False)
        )
        self.discriminator = None
        if settings.extra["gan_weight"] > 0:
            self.discriminator = PatchDiscriminator().to(self.device)
            self.d_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=settings.extra["gan_lr"], betas=(0.5, 0.99)
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
        e = self.s.extra
        z_student, image = self.student_output(inputs, lr)
        t_features, t_image = self.teacher_features(inputs)
        generator = torch.Generator().manual_seed(self.s.seed + 7919 * self.step)
        parts: dict[str, torch.Tensor] = {
            "mmd": feature_mmd(z_student.float(), t_features.float(), e["mmd_samples"], generator)
        }
        weights = {"mmd": e["mmd_weight"]}
        image_parts, image_weights = self.image_losses(image, target)
        parts.update(image_parts)
        weights.update(image_weights)
        if e["teacher_image_weight"]:
            parts["teacher_l1"] = (image - t_image.float()).abs().mean()
            weights["teacher_l1"] = e["teacher_image_weight"]
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            parts["adv"], weights["adv"] = hinge_g_loss(self.discriminator(image)), e["gan_weight"]
            self._last_pair = (image.detach(), target)
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def train_step(self, micro_batches) -> dict[str, float]:
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
        meta["distillation"] = {k: v for k, v in self.s.extra.items() if k != "teacher"}
        meta["teacher"] = Path(self.s.extra["teacher"]).name
        return meta
