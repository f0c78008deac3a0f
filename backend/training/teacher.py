"""The paper's teacher: single-step SR on SD-Turbo with uncertainty-guided timesteps.

LR image (bicubic-upsampled, [-1, 1]) -> VAE encoder -> z_lr -> uncertainty estimator
(z_mean, log-variance) -> t from the variance by inversion of the noise schedule ->
one UNet step at t (LoRA-adapted, conditioned on the fixed prompt embedding) ->
x0 prediction ``z0 = (z_lr - sqrt(1 - a(t)) eps) / sqrt(a(t))`` with the *same* t ->
VAE decoder -> image.

The paper's parts: SD-Turbo architecture, LoRA, the uncertainty estimator predicting a
mean and a variance in latent space, the inversion rule
``alpha_bar* = clamp(1 / (1 + mean(sigma^2)), eps, 1 - eps)`` and the learned TimeMapping
alternative. Our choices where the paper is silent: the estimator's architecture (a
small residual conv net with a residual mean head), its Gaussian NLL loss, the UNet input
being z_lr (not z_mean), and fractional timesteps (linear interpolation of
alphas_cumprod; diffusers' sinusoidal embedding accepts real-valued t).

Everything is loaded from a local diffusers directory (``unet/``, ``vae/``,
``scheduler/``, and ``prompt_embeds.safetensors`` or ``text_encoder/`` + ``tokenizer/``):
nothing is downloaded at run time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.training.settings import TeacherOptions

if TYPE_CHECKING:
    # The defining modules: the package's top level names dummies for mypy when it cannot
    # tell whether torch is installed.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

PROMPT = "High-quality, 4K, satellite images."
TEACHER_FILE = "teacher.json"
HEADS_FILE = "teacher_heads.safetensors"
PROMPT_FILE = "prompt_embeds.safetensors"
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "conv1",
    "conv2",
    "conv_shortcut",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
)


def alpha_bar_at(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod at fractional timesteps (linear interpolation between integer steps)."""
    ac = alphas_cumprod.to(t.device, torch.float32)
    t = t.float().clamp(0, ac.numel() - 1)
    lo = t.floor().long().clamp(max=ac.numel() - 2)
    frac = t - lo
    return ac[lo] * (1 - frac) + ac[lo + 1] * frac


def timestep_from_variance(
    sigma2: torch.Tensor, alphas_cumprod: torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """The paper's rule: alpha* = clamp(1/(1+sigma2)); t where alphas_cumprod crosses alpha*.

    sigma2: [B] mean latent variance per image -> t: [B] fractional timesteps. Larger
    uncertainty -> smaller alpha* -> larger t (more generative strength). Differentiable in
    sigma2 through the interpolation weight.
    """
    ac = alphas_cumprod.to(sigma2.device, torch.float32)
    target = (1.0 / (1.0 + sigma2.float())).clamp(eps, 1 - eps)
    above = (ac[None, :] >= target[:, None]).sum(dim=1)  # alphas_cumprod decreases with t
    lo = (above - 1).clamp(0, ac.numel() - 2)
    a_lo, a_hi = ac[lo], ac[lo + 1]
    frac = ((a_lo - target) / (a_lo - a_hi).clamp(min=1e-12)).clamp(0, 1)
    return lo.float() + frac


class ResidualConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UncertaintyEstimator(nn.Module):
    """z_lr -> (z_mean, log-variance), both [B, latent, h, w].

    The mean head predicts a residual on z_lr (the restored latent is close to the LR
    latent); the log-variance is bounded to [-10, 6] so exp() cannot overflow early in
    training. Architecture ours; the paper gives only its outputs.
    """

    def __init__(self, latent_channels: int = 4, width: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualConvBlock(width) for _ in range(blocks)))
        self.mean_head = nn.Conv2d(width, latent_channels, 3, padding=1)
        self.logvar_head = nn.Conv2d(width, latent_channels, 3, padding=1)
        for p in self.mean_head.parameters():  # weight and bias: the mean starts at z_lr
            nn.init.zeros_(p)

    def forward(self, z_lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(self.stem(z_lr))
        return z_lr + self.mean_head(h), self.logvar_head(h).clamp(-10.0, 6.0)


def gaussian_nll(z_gt: torch.Tensor, z_mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Heteroscedastic Gaussian NLL: ||z_gt - z_mean||^2 exp(-s) + s, s = log-variance (mean)."""
    return ((z_gt - z_mean).pow(2) * torch.exp(-logvar) + logvar).mean()


class TimeMapping(nn.Module):
    """The release's learned alternative: conv, 6 residual blocks, mean/std pooling, MLP.

    t = sigmoid(MLP([mean, std])) * (upper - lower) + lower, defaults lower=10, upper=200.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        width: int = 64,
        blocks: int = 6,
        lower: float = 10.0,
        upper: float = 200.0,
    ) -> None:
        super().__init__()
        self.lower, self.upper = lower, upper
        self.stem = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualConvBlock(width) for _ in range(blocks)))
        self.mlp = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, 1), nn.Sigmoid())

    def forward(self, z_lr: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(z_lr)).flatten(2)
        pooled = torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1)
        return self.mlp(pooled)[:, 0] * (self.upper - self.lower) + self.lower


class SingleStepTeacher(nn.Module):
    """UNet + VAE + schedule + prompt embedding + uncertainty estimator (+ TimeMapping)."""

    alphas_cumprod: torch.Tensor
    prompt_embeds: torch.Tensor

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        alphas_cumprod: torch.Tensor,
        prompt_embeds: torch.Tensor,
        options: TeacherOptions,
    ) -> None:
        super().__init__()
        self.unet, self.vae, self.options = unet, vae, options
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)
        latent = unet.config["in_channels"]
        self.uncertainty = UncertaintyEstimator(latent, options.estimator_width, options.estimator_blocks)
        self.time_mapping = TimeMapping(latent) if options.timestep_mode == "learned" else None
        self.scaling = float(vae.config.get("scaling_factor", 0.18215))

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mode() * self.scaling

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling).sample

    def timesteps(self, z_lr: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.options.timestep_mode == "uncertainty":
            return timestep_from_variance(logvar.exp().mean(dim=(1, 2, 3)), self.alphas_cumprod)
        if self.time_mapping is not None:  # timestep_mode "learned"
            return self.time_mapping(z_lr)
        return torch.full((z_lr.shape[0],), self.options.fixed_timestep, device=z_lr.device)

    def restore(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SR pass; returns every intermediate the losses and the distillation need."""
        z_lr = self.encode(image)
        z_mean, logvar = self.uncertainty(z_lr)
        t = self.timesteps(z_lr, logvar)
        context = self.prompt_embeds.expand(z_lr.shape[0], -1, -1).to(z_lr.dtype)
        eps = self.unet(z_lr, t, encoder_hidden_states=context).sample
        a = alpha_bar_at(t, self.alphas_cumprod).view(-1, 1, 1, 1).to(z_lr.dtype)
        z0 = (z_lr - (1 - a).sqrt() * eps) / a.sqrt()
        return {"z_lr": z_lr, "z_mean": z_mean, "logvar": logvar, "t": t, "z0": z0, "image": self.decode(z0)}

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same interface as the student: (latent feature, image)."""
        out = self.restore(image)
        return out["z0"], out["image"]


# -- construction ------------------------------------------------------------------------
def sd_turbo_unet_config() -> dict[str, Any]:
    """The SD-Turbo (SD 2.1) UNet as the paper uses it (865.9M parameters)."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "downsample_padding": 1,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def tiny_unet_config() -> dict[str, Any]:
    """SD-Turbo's UNet (same blocks and options) with widths small enough for CPU tests."""
    return {
        **sd_turbo_unet_config(),
        "sample_size": 16,
        "layers_per_block": 1,
        "block_out_channels": [32, 64, 64, 64],
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": [2, 4, 4, 4],
    }


def tiny_vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [16, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    }


def write_tiny_base(folder: str | Path, seed: int = 0) -> Path:
    """A complete random-weight diffusers directory in SD-Turbo's layout (for tests/smoke).

    Same files a user's local SD-Turbo copy has (``unet/``, ``vae/``, ``scheduler/``), plus
    a random prompt embedding instead of a text encoder.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from safetensors.torch import save_file

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    unet.save_pretrained(folder / "unet")
    AutoencoderKL(**tiny_vae_config()).save_pretrained(folder / "vae")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).save_pretrained(folder / "scheduler")
    embeds = torch.randn(1, 8, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(seed))
    save_file({"prompt_embeds": embeds}, str(folder / PROMPT_FILE))
    return folder


def load_prompt_embeds(folder: Path, prompt: str = PROMPT) -> torch.Tensor:
    """The fixed prompt's text embedding: a saved tensor, else the local text encoder once."""
    from safetensors.torch import load_file

    if (folder / PROMPT_FILE).is_file():
        return load_file(str(folder / PROMPT_FILE))["prompt_embeds"]
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            return encoder(ids)[0]
    raise FileNotFoundError(
        f"{folder}: neither {PROMPT_FILE} nor text_encoder/ + tokenizer/; point to a local SD-Turbo copy"
    )


def add_lora(module: nn.Module, rank: int, targets: tuple[str, ...], name: str = "default") -> None:
    """Inject LoRA adapters (peft) into the named Linear/Conv2d layers; base weights frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
    present |= {".".join(n.rsplit(".", 2)[-2:]) for n, _ in module.named_modules()}
    chosen = [t for t in targets if t in present]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=chosen, init_lora_weights="gaussian")
    inject_adapter_in_model(config, module, adapter_name=name)


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA adapter into its base layer and remove the adapter modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())


def load_teacher(
    folder: str | Path,
    options: TeacherOptions | None = None,
    *,
    with_lora: bool = False,
    device: str | torch.device = "cpu",
) -> SingleStepTeacher:
    """A teacher from a local diffusers directory (base SD-Turbo or one written by ``save_teacher``).

    ``options`` default to the directory's ``teacher.json`` (a trained teacher) or to
    :class:`TeacherOptions`. ``with_lora`` adds fresh adapters for training.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    folder = Path(folder)
    if not (folder / "unet").is_dir():
        raise FileNotFoundError(
            f"{folder} has no unet/ folder; point to a local SD-Turbo diffusers directory"
        )
    if options is None:
        saved = folder / TEACHER_FILE
        options = TeacherOptions(**json.loads(saved.read_text())) if saved.is_file() else TeacherOptions()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    teacher = SingleStepTeacher(unet, vae, scheduler.alphas_cumprod, load_prompt_embeds(folder), options)
    heads = folder / HEADS_FILE
    if heads.is_file():
        from safetensors.torch import load_file

        teacher.load_state_dict(load_file(str(heads)), strict=False)
    teacher.requires_grad_(False)
    if with_lora:
        add_lora(teacher.unet, options.lora_rank, LORA_TARGETS)
        if options.vae_lora_rank:
            add_lora(teacher.vae.encoder, options.vae_lora_rank, ("conv1", "conv2", "conv_shortcut"))
        for n, p in teacher.named_parameters():
            if "lora_" in n or n.startswith(("uncertainty.", "time_mapping.")):
                p.requires_grad_(True)
    return teacher.to(device)


def save_teacher(teacher: SingleStepTeacher, folder: str | Path, source: str | Path) -> Path:
    """Merge LoRA and write a self-contained teacher directory (same layout as the base)."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae = teacher.unet, teacher.vae
    merge_lora(unet)
    merge_lora(vae)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    source = Path(source)
    if source.resolve() != folder.resolve():
        shutil.copytree(source / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    save_file({"prompt_embeds": teacher.prompt_embeds.cpu().contiguous()}, str(folder / PROMPT_FILE))
    heads = {
        k: v.detach().cpu().contiguous()
        for k, v in teacher.state_dict().items()
        if k.startswith(("uncertainty.", "time_mapping."))
    }
    save_file(heads, str(folder / HEADS_FILE))
    (folder / TEACHER_FILE).write_text(json.dumps(asdict(teacher.options), indent=2))
    return folder


def teacher_loss(
    out: dict[str, torch.Tensor],
    z_gt: torch.Tensor,
    hr: torch.Tensor,
    nll_weight: float = 1.0,
    latent_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Image L1 + latent MSE of the x0 prediction + the estimator's Gaussian NLL (ours)."""
    parts = {
        "l1": (out["image"].float() - hr).abs().mean(),
        "latent": F.mse_loss(out["z0"].float(), z_gt),
        "nll": gaussian_nll(z_gt, out["z_mean"].float(), out["logvar"].float()),
    }
    total = parts["l1"] + latent_weight * parts["latent"] + nll_weight * parts["nll"]
    stats = {k: float(v.detach()) for k, v in parts.items()}
    stats["t_mean"] = float(out["t"].float().mean().detach())
    return total, stats
