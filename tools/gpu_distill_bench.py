"""Distillation throughput at the paper's student size: steps/s and peak memory.

Runs N distillation steps (frozen single-step teacher forward + student forward/backward
with the MMD and L1 losses, AdamW) on synthetic smooth HR batches, so it needs neither
training data nor rasterio. The teacher is a local SD-Turbo directory (``--teacher``) or,
without one, random weights in the SD-Turbo UNet + SD VAE architecture (same cost).

    python tools/gpu_distill_bench.py --steps 300                  # CUDA, paper sizes
    python tools/gpu_distill_bench.py --tiny --steps 3 --device cpu  # the CPU path, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_teacher(args, device):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from backend.training.teacher import (
        SingleStepTeacher,
        TeacherOptions,
        load_teacher,
        sd_turbo_unet_config,
        tiny_unet_config,
        tiny_vae_config,
    )

    if args.teacher:
        return load_teacher(args.teacher, device=device)
    if args.tiny:
        unet, vae = UNet2DConditionModel(**tiny_unet_config()), AutoencoderKL(**tiny_vae_config())
    else:
        unet = UNet2DConditionModel(**sd_turbo_unet_config())
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
        )
    ac = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    prompt = torch.randn(1, 77, unet.config.cross_attention_dim)
    return SingleStepTeacher(unet, vae, ac, prompt, TeacherOptions()).to(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256, help="HR crop (paper: 256)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    p.add_argument("--teacher", default=None, help="local SD-Turbo/teacher directory (default: random)")
    p.add_argument("--tiny", action="store_true", help="tiny teacher and student (CPU check of this script)")
    p.add_argument("--mmd-samples", type=int, default=1024)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from backend.inference import describe_device, resolve_device
    from backend.model import SlimDiffSRStudent, StudentConfig
    from backend.model.config import TINY_STUDENT
    from backend.training.losses import feature_mmd

    device = resolve_device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    config = TINY_STUDENT if args.tiny else StudentConfig()
    if args.tiny:
        args.crop = min(args.crop, 64)
    student = SlimDiffSRStudent(config).to(device).train()
    teacher = build_teacher(args, device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    g = torch.Generator(device="cpu").manual_seed(0)

    def step() -> float:
        hr = F.avg_pool2d(torch.rand(args.batch_size, 3, args.crop, args.crop, generator=g), 5, 1, 2).to(
            device
        )
        lr = F.interpolate(hr, scale_factor=1 / args.scale, mode="bicubic", antialias=True)
        up = F.interpolate(lr * 2 - 1, scale_factor=args.scale, mode="bicubic")
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                target = student.vae.decoder.layers[0](teacher.restore(up)["z0"])
            z, image = student(up)
            loss = (
                feature_mmd(z.float(), target.float(), args.mmd_samples)
                + (image.float() - (hr * 2 - 1)).abs().mean()
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(min(args.warmup_steps, args.steps)):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    seconds = time.perf_counter() - t0
    report = {
        "device": describe_device(device),
        "precision": args.precision,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "hr_crop": args.crop,
        "scale": args.scale,
        "student_params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "teacher_unet_params_M": round(sum(p.numel() for p in teacher.unet.parameters()) / 1e6, 1),
        "steps_per_s": round(args.steps / seconds, 3),
        "images_per_s": round(args.steps * args.batch_size / seconds, 2),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    print(json.dumps(report, indent=2))
    return 0 if all(map(lambda v: v == v, losses)) else 1


if __name__ == "__main__":
    sys.exit(main())
