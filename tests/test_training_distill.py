"""The paper's training side: MMD, timestep inversion, pruning, teacher, degradations, distillation."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.training.blur_kernels import family_kernel, sinc_kernel
from backend.training.losses import feature_mmd, mmd2
from backend.training.realesrgan import RealESRGANDegradation

diffusers = pytest.importorskip("diffusers", reason="training extras (requirements-train.txt) not installed")


# -- MMD --------------------------------------------------------------------------------
def test_mmd_is_zero_for_identical_samples_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-6)
    same = float(mmd2(x, torch.randn(400, 16, generator=g)))
    shifts = [float(mmd2(x, torch.randn(400, 16, generator=g) + s)) for s in (0.25, 0.5, 1.0, 2.0)]
    assert same < 0.05
    assert same < shifts[0] < shifts[1] < shifts[2] < shifts[3]


def test_mmd_gradients_reach_the_student_features():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 8, 6, 6, generator=g, requires_grad=True)
    teacher = torch.randn(2, 8, 6, 6, generator=g) + 1.0
    loss = feature_mmd(student, teacher, samples=50, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert float(loss) > 0 and float(student.grad.abs().sum()) > 0
    # One gradient step on the student moves its distribution towards the teacher's.
    with torch.no_grad():
        moved = student - 5.0 * student.grad
    again = feature_mmd(moved, teacher, samples=50, generator=torch.Generator().manual_seed(0))
    assert float(again) < float(loss)


# -- timestep from uncertainty ----------------------------------------------------------
def test_inversion_table_matches_the_schedule():
    from diffusers import DDPMScheduler

    from backend.training.teacher import alpha_bar_at, timestep_from_variance

    ac = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    steps = torch.tensor([0, 1, 10, 100, 250, 500, 999])
    sigma2 = 1.0 / ac[steps] - 1.0  # the variance whose alpha* is exactly alphas_cumprod[t]
    t = timestep_from_variance(sigma2, ac)
    assert torch.allclose(t, steps.float(), atol=1e-2)
    # Fractional t between steps: alpha_bar(t) reproduces 1 / (1 + sigma^2).
    s2 = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 20.0])
    t = timestep_from_variance(s2, ac)
    assert torch.all(t[1:] > t[:-1])  # more uncertainty, larger t
    assert torch.allclose(alpha_bar_at(t, ac), 1.0 / (1.0 + s2), rtol=1e-3)
    # Clamping: no uncertainty gives t ~ 0, huge uncertainty the last step.
    assert float(timestep_from_variance(torch.tensor([0.0]), ac)) < 1.0
    assert float(timestep_from_variance(torch.tensor([1e9]), ac)) == pytest.approx(999.0)


def test_time_mapping_stays_in_its_range():
    from backend.training.teacher import TimeMapping

    t = TimeMapping(width=16)(torch.randn(3, 4, 8, 8))
    assert t.shape == (3,) and bool(((t >= 10) & (t <= 200)).all())


# -- pruning ----------------------------------------------------------------------------
def test_paper_pruning_parameter_counts():
    from backend.training.pruning import paper_parameter_counts

    unet, student = paper_parameter_counts()
    assert unet == 865_910_724  # SD-Turbo UNet, the paper's 865.9M
    assert student == 58_053_402  # the paper's 58.05M student (release checkpoint size)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from backend.training.teacher import write_tiny_base

    return write_tiny_base(tmp_path_factory.mktemp("base"))


TINY_OVERRIDES = {
    "vae_channels": 16,
    "encoder_blocks": (1, 1, 1, 1),
    "decoder_blocks": (1, 1, 1, 1),
    "num_queries": 8,
    "squeeze_dim": 16,
}


def test_pruning_inherits_surviving_weights(tiny_base: Path):
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from backend.training.pruning import prune_teacher, student_config_for, taesd_config_for

    unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
    config = student_config_for(dict(unet.config), 2, **TINY_OVERRIDES)
    taesd = AutoencoderTiny(**taesd_config_for(config))
    student, report = prune_teacher(unet, 2, taesd=taesd, config=config)
    t, s = unet.state_dict(), student.state_dict()
    pairs = {
        "unet.mid_block.mid_block.norm1.weight": "down_blocks.2.resnets.0.norm1.weight",
        "unet.mid_block.mid_block.norm2.weight": "down_blocks.2.resnets.0.norm2.weight",
        "unet.up_blocks.0.attentions.0.proj_in.weight": "up_blocks.2.attentions.0.proj_in.weight",
        "unet.up_blocks.1.resnets.1.conv_shortcut.weight": "up_blocks.3.resnets.1.conv_shortcut.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight": (
            "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight"
        ),
        "unet.down_blocks.0.downsamplers.0.conv.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "unet.conv_norm_out.weight": "conv_norm_out.weight",
    }
    for mine, theirs in pairs.items():
        assert torch.equal(s[mine], t[theirs]), mine
    assert torch.equal(
        s["vae.decoder.layers.2.conv.0.weight"], taesd.state_dict()["decoder.layers.2.conv.0.weight"]
    )
    assert "unet.down_blocks.1.downsamplers.0.conv.weight" not in s  # the deepest kept level
    assert not any("attn2" in k or "time_emb_proj" in k for k in s)
    assert all(
        ("attn1" in k or "conv1" in k or "conv2" in k or "merge_conv" in k) for k in report.new_tensors
    )
    assert report.inherited_tensors > 100 and report.taesd_tensors > 0
    assert report.student_params == sum(p.numel() for p in student.parameters())


# -- teacher ----------------------------------------------------------------------------
def test_teacher_lora_trains_only_adapters_and_saves_merged(tiny_base: Path, tmp_path: Path):
    from backend.training.teacher import load_teacher, save_teacher, teacher_loss

    torch.manual_seed(0)
    teacher = load_teacher(tiny_base, with_lora=True)
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("uncertainty.") for n in trainable)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = teacher.restore(x)
    assert out["z0"].shape == (2, 4, 4, 4) and out["image"].shape == x.shape
    assert bool(((out["t"] >= 0) & (out["t"] <= 999)).all())
    loss, parts = teacher_loss(out, teacher.encode(x).detach(), x)
    loss.backward()
    assert teacher.uncertainty.logvar_head.weight.grad.abs().sum() > 0  # through t and the NLL
    for p in teacher.parameters():  # make the adapters non-trivial before merging
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))
    teacher.eval()
    with torch.no_grad():
        before = teacher.restore(x)["image"]
    save_teacher(teacher, tmp_path / "teacher", tiny_base)
    reloaded = load_teacher(tmp_path / "teacher").eval()
    with torch.no_grad():
        after = reloaded.restore(x)["image"]
    assert torch.allclose(before, after, atol=1e-4)


# -- degradations -----------------------------------------------------------------------
def test_kernels_are_normalised_and_shaped():
    iso = family_kernel("iso", 21, 2.0, 2.0, 0.0)
    assert float(iso.sum()) == pytest.approx(1.0, abs=1e-5) and torch.allclose(iso, iso.T)
    aniso = family_kernel("aniso", 21, 3.0, 0.5, 0.0)
    assert float(aniso[10, :].sum()) > float(aniso[:, 10].sum())  # elongated along x
    plateau = family_kernel("plateau_iso", 21, 2.0, 2.0, 0.0, beta=2.0)
    assert float(plateau.sum()) == pytest.approx(1.0, abs=1e-5)
    sinc = sinc_kernel(21, math.pi / 3)
    assert float(sinc.sum()) == pytest.approx(1.0, abs=1e-5) and float(sinc.min()) < 0  # ringing lobes


def test_realesrgan_degradation_is_reproducible_per_seed():
    hr = torch.nn.functional.avg_pool2d(
        torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 3, 1, 1
    )
    degrade = RealESRGANDegradation(4)
    a = degrade(hr, torch.Generator().manual_seed(11))
    b = degrade(hr, torch.Generator().manual_seed(11))
    c = degrade(hr, torch.Generator().manual_seed(12))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-4)  # quantized to 8 bits
    assert float((a - torch.nn.functional.interpolate(hr, size=(16, 16), mode="area")).abs().mean()) < 0.2


# -- distillation end to end ------------------------------------------------------------
def test_distillation_runs_resumes_and_exports(tiny_base: Path, tmp_path: Path, capsys):
    from diffusers import UNet2DConditionModel

    from backend.cli import main
    from backend.training.pruning import prune_teacher, student_config_for
    from backend.weights import load_weights, save_safetensors

    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        with rasterio.open(
            folder / f"{i}.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8"
        ) as ds:
            ds.write((np.kron(rng.random((3, 8, 8)), np.ones((8, 8))) * 250).astype("uint8"))
    unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
    student, _ = prune_teacher(unet, 2, config=student_config_for(dict(unet.config), 2, **TINY_OVERRIDES))
    init = save_safetensors(student, tmp_path / "pruned.safetensors", 4)
    quick = "--crop 32 --batch-size 2 --warmup 0 --val-every 3 --checkpoint-every 1 --log-every 1 --lr 1e-3"
    distill = "--degradation bicubic --val-fraction 0.34 --mmd-samples 64 --gan 0.1"
    run = tmp_path / "run"
    argv = [
        "distill",
        "--data",
        str(folder),
        "--teacher",
        str(tiny_base),
        "--init",
        str(init),
        "--out",
        str(run),
    ]
    argv += quick.split() + distill.split()
    assert main([*argv, "--steps", "2"]) == 0
    assert main([*argv, "--steps", "3"]) == 0  # one more step: resumes, discriminator included
    assert "resumed from step 2" in capsys.readouterr().out
    path = run / "slimdiffsr_distilled_x4.safetensors"
    loaded = load_weights(path)
    meta = loaded.metadata["training"]
    assert meta["method"] == "distillation" and meta["steps"] == 3 and meta["complete"] is True
    assert meta["distillation"]["mmd_samples"] == 64 and "psnr" in meta["validation"]
    assert loaded.model.config.vae_channels == 16
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("mmd", "adv", "d_loss"))
