"""``slimdiffsr teacher``: train the single-step teacher (LoRA + uncertainty estimator)."""

from __future__ import annotations

import argparse

from backend.training.train_command import add_common_arguments, run_trainer, settings_from_args

HELP = "train the uncertainty-guided single-step teacher (LoRA on a local SD-Turbo copy)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="HR rasters or folders")
    p.add_argument(
        "--base",
        required=True,
        help="local SD-Turbo diffusers directory (unet/, vae/, scheduler/, "
        "prompt_embeds.safetensors or text_encoder/+tokenizer/); nothing is downloaded",
    )
    p.add_argument("--timestep-mode", choices=("uncertainty", "learned", "fixed"), default="uncertainty")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--vae-lora-rank", type=int, default=0, help="LoRA rank on the VAE encoder (0: frozen)")
    p.add_argument("--nll-weight", type=float, default=1.0)
    p.add_argument("--latent-weight", type=float, default=1.0)
    p.add_argument(
        "--write-tiny-base",
        action="store_true",
        help="first write a random tiny SD-shaped base into --base (tests, smoke runs)",
    )
    add_common_arguments(p, default_steps=10000, default_lr=1e-4)
    p.set_defaults(degradation="realesrgan", crop=256, batch_size=2)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.training.distill import TeacherTrainer

    if args.write_tiny_base and not (Path(args.base) / "unet").is_dir():
        from backend.training.teacher import write_tiny_base

        write_tiny_base(args.base, seed=args.seed)
    args.init = args.base
    settings = settings_from_args(args, "teacher", "teacher")
    settings.extra = {
        "timestep_mode": args.timestep_mode,
        "lora_rank": args.lora_rank,
        "vae_lora_rank": args.vae_lora_rank,
        "nll_weight": args.nll_weight,
        "latent_weight": args.latent_weight,
    }
    return run_trainer(TeacherTrainer, settings, args)
