"""The paper's structured pruning: teacher UNet -> student, inheriting what survives.

Surgery (paper, section 2 of docs/slimdiffsr-model.md): depth pruning at ``depth``
(keep down levels ``< depth``, the deepest kept level loses its downsampler, the first
ResNet of level ``depth`` becomes the mid block, keep the last ``depth`` up levels),
self-attention -> QGAM, ResNet conv1/conv2 -> FSC/DSC, cross-attention (``attn2``,
``norm2``) and the time-embedding projections removed.

Inheritance rule: the student's parameter names mirror diffusers', so every student
tensor is looked up under its teacher name (mid block and up levels renumbered) and
copied when a teacher tensor of that name and shape exists: GroupNorms, LayerNorms,
``proj_in``/``proj_out``, the GEGLU feed-forwards, 1x1 shortcuts, down/up-sampler convs,
``conv_norm_out`` and the unused ``conv_in``/``conv_out``/``time_embedding``. Replaced
modules (QGAM, FSC, DSC) and the merge convolutions start from their own initialisation;
the tiny autoencoder comes from a local TAESD directory when given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backend.model import SlimDiffSRStudent, StudentConfig

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel


@dataclass
class PruningReport:
    teacher_unet_params: int
    student_params: int
    inherited_tensors: int
    inherited_params: int
    new_tensors: list[str] = field(default_factory=list)
    taesd_tensors: int = 0

    def summary(self) -> str:
        return (
            f"teacher UNet {self.teacher_unet_params / 1e6:.1f}M -> student {self.student_params / 1e6:.2f}M "
            f"parameters; inherited {self.inherited_tensors} tensors ({self.inherited_params / 1e6:.2f}M), "
            f"{len(self.new_tensors)} initialised anew, {self.taesd_tensors} from TAESD"
        )


def student_config_for(unet_config: dict[str, Any], depth: int = 2, **overrides: Any) -> StudentConfig:
    """The student whose pruned UNet matches a teacher UNet configuration at ``depth``."""
    widths = list(unet_config["block_out_channels"])
    if not 1 <= depth < len(widths):
        raise ValueError(f"depth must be in 1..{len(widths) - 1} for a {len(widths)}-level UNet")
    fields: dict[str, Any] = {
        "unet_channels": (*widths[:depth], widths[depth]),
        "layers_per_block": int(unet_config.get("layers_per_block", 2)),
        "norm_groups": int(unet_config.get("norm_num_groups", 32)),
        "resnet_eps": float(unet_config.get("norm_eps", 1e-5)),
        "latent_channels": int(unet_config.get("in_channels", 4)),
    }
    fields.update(overrides)
    return StudentConfig(**fields)


def teacher_name(student_key: str, depth: int, levels: int) -> str | None:
    """Where a student UNet tensor lives in the teacher UNet (None for non-UNet keys)."""
    if not student_key.startswith("unet."):
        return None
    key = student_key[len("unet.") :]
    key = re.sub(r"^mid_block\.mid_block\.", f"down_blocks.{depth}.resnets.0.", key)
    m = re.match(r"^up_blocks\.(\d+)\.(.*)$", key)
    if m:
        key = f"up_blocks.{levels - depth + int(m.group(1))}.{m.group(2)}"
    return key


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune_teacher(
    unet: UNet2DConditionModel,
    depth: int = 2,
    *,
    taesd: nn.Module | None = None,
    config: StudentConfig | None = None,
) -> tuple[SlimDiffSRStudent, PruningReport]:
    """Build the student for a diffusers ``unet`` and inherit its surviving weights."""
    levels = len(unet.config["block_out_channels"])
    config = config or student_config_for(dict(unet.config), depth)
    student = SlimDiffSRStudent(config)
    teacher_state = unet.state_dict()
    taesd_state = taesd.state_dict() if taesd is not None else {}
    new_state = student.state_dict()
    inherited, inherited_params, fresh, from_taesd = 0, 0, [], 0
    for key, value in new_state.items():
        source = teacher_name(key, depth, levels)
        if source is not None and source in teacher_state and teacher_state[source].shape == value.shape:
            new_state[key] = teacher_state[source].detach().clone()
            inherited += 1
            inherited_params += value.numel()
        elif key.startswith("vae.") and key[4:] in taesd_state and taesd_state[key[4:]].shape == value.shape:
            new_state[key] = taesd_state[key[4:]].detach().clone()
            from_taesd += 1
        else:
            fresh.append(key)
    student.load_state_dict(new_state)
    report = PruningReport(
        count_parameters(unet), count_parameters(student), inherited, inherited_params, fresh, from_taesd
    )
    return student, report


def paper_parameter_counts() -> tuple[int, int]:
    """(SD-Turbo UNet, paper student) parameter counts, built on the meta device (no memory)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    from backend.training.teacher import sd_turbo_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_turbo_unet_config())
        student = SlimDiffSRStudent(student_config_for(dict(unet.config), 2))
    return count_parameters(unet), count_parameters(student)


def load_taesd(folder: str | Path) -> nn.Module:
    """A local diffusers AutoencoderTiny (TAESD) directory; its layer names match the student's."""
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(Path(folder), local_files_only=True)


def taesd_config_for(config: StudentConfig) -> dict:
    """AutoencoderTiny arguments whose layers have the student's tiny-VAE shapes."""
    n = len(config.encoder_blocks)
    return {
        "encoder_block_out_channels": [config.vae_channels] * n,
        "decoder_block_out_channels": [config.vae_channels] * n,
        "num_encoder_blocks": list(config.encoder_blocks),
        "num_decoder_blocks": list(config.decoder_blocks),
        "latent_channels": config.latent_channels,
    }
