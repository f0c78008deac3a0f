"""The supervised trainer: loss falls, exact resume, budget stop, exported weights load."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import random_rgb, write_raster

from backend.cli import COMMANDS, build_parser, main
from backend.model import COMPACT_STUDENT
from backend.training.cli_fields import from_args
from backend.training.settings import (
    Distillation,
    Pruning,
    TeacherOptions,
    TeacherTraining,
    parse_student,
)
from backend.training.trainer import StudentTrainer, TrainingError, TrainSettings, lr_factor
from backend.weights import load_weights


def run_quick(command: str, folder: Path, out: Path, *flags: str) -> int:
    """A training command on ``folder`` for a CPU run of seconds, written to ``out``."""
    quick = "--steps 2 --crop 32 --batch-size 1 --warmup 0".split()
    return main([command, "--data", str(folder), "--out", str(out), *quick, *flags])


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Smooth random 'images' (low-pass noise), easy to learn in a few steps."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        noise = rng.random((3, 24, 24))
        big = np.kron(noise, np.ones((4, 4)))
        data = (big * 200 + 20).astype(np.uint8)
        with rasterio.open(
            folder / f"img{i}.tif", "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8"
        ) as ds:
            ds.write(data)
    return folder


def settings(folder: Path, out: Path, tiny_config, **kw) -> TrainSettings:
    base = dict(
        data=[str(folder)],
        out=str(out),
        val_fraction=0.25,
        scale=4,
        crop=32,
        batch_size=2,
        steps=4,
        lr=1e-3,
        warmup=0,
        schedule="cosine",
        checkpoint_every=2,
        val_every=2,
        log_every=1,
        student=tiny_config.to_dict(),
        seed=5,
    )
    base.update(kw)
    return TrainSettings(**base)


def test_lr_schedule_warmup_and_cosine():
    s = TrainSettings(data=[], out="", steps=110, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, s) == pytest.approx(0.1)
    assert lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(60, s) == pytest.approx(0.55)
    assert lr_factor(110, s) == pytest.approx(0.1)


def test_student_config_from_preset_json_or_file(tmp_path: Path, tiny_config):
    assert parse_student("compact") == COMPACT_STUDENT.to_dict()
    assert parse_student(tiny_config.to_json())["vae_channels"] == 16
    f = tmp_path / "s.json"
    f.write_text(tiny_config.to_json())
    assert parse_student(str(f)) == tiny_config.to_dict()


def test_training_resumes_exactly_and_exports(image_folder: Path, tmp_path: Path, tiny_config):
    torch.set_num_threads(1)
    straight = StudentTrainer(settings(image_folder, tmp_path / "a", tiny_config))
    path_a = straight.run()
    # A budget that runs out after the first step: the chunk checkpoints and exports.
    chunk1 = StudentTrainer(settings(image_folder, tmp_path / "b", tiny_config, max_minutes=1e-9))
    chunk1.run()
    assert chunk1.step == 1 and chunk1.stopped_by == "time budget"
    partial = load_weights(tmp_path / "b" / "slimdiffsr_x4.safetensors")
    assert partial.metadata["training"]["complete"] is False
    chunk2 = StudentTrainer(settings(image_folder, tmp_path / "b", tiny_config))
    path_b = chunk2.run()
    a = load_weights(path_a).model.state_dict()
    b = load_weights(path_b).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_weights(path_a)
    meta = loaded.metadata["training"]
    assert meta["steps"] == 4 and meta["complete"] is True and meta["method"] == "supervised"
    assert meta["degradation"]["kind"] == "bicubic" and "psnr" in meta["validation"]
    assert loaded.scale == 4 and loaded.model.config == tiny_config
    assert not loaded.lr_consistency  # not asked for
    with open(tmp_path / "b" / "train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_changed_recipe(image_folder: Path, tmp_path: Path, tiny_config):
    StudentTrainer(settings(image_folder, tmp_path / "c", tiny_config, steps=1)).run()
    with pytest.raises(TrainingError, match="lr"):
        StudentTrainer(settings(image_folder, tmp_path / "c", tiny_config, steps=2, lr=5e-4)).run()
    # The same data folder spelled another way, and another export name, still resume.
    respelled = Path(os.path.relpath(image_folder))
    trainer = StudentTrainer(settings(respelled, tmp_path / "c", tiny_config, steps=2, name="other"))
    trainer.run()
    assert trainer.step == 2


def test_a_setting_newer_than_the_checkpoint_resumes_only_at_its_default(
    image_folder: Path, tmp_path: Path, tiny_config
):
    StudentTrainer(settings(image_folder, tmp_path / "e", tiny_config, steps=1)).run()
    # A checkpoint written before the augmentation options existed.
    path = tmp_path / "e" / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state["settings"])
    del saved["zoom_out"], saved["colour_augment"]
    state["settings"] = json.dumps(saved)
    torch.save(state, path)
    with pytest.raises(TrainingError, match="zoom_out"):
        StudentTrainer(settings(image_folder, tmp_path / "e", tiny_config, steps=2, zoom_out=2.0)).run()
    trainer = StudentTrainer(settings(image_folder, tmp_path / "e", tiny_config, steps=2))
    trainer.run()
    assert trainer.step == 2


def test_augmented_run_records_its_options(image_folder: Path, tmp_path: Path, tiny_config):
    path = StudentTrainer(
        settings(image_folder, tmp_path / "f", tiny_config, steps=2, colour_augment=0.5, zoom_out=1.5)
    ).run()
    meta = load_weights(path).metadata["training"]
    assert (meta["colour_augment"], meta["zoom_out"]) == (0.5, 1.5)
    with pytest.raises(TrainingError, match="zoom_out"):
        settings(image_folder, tmp_path / "g", tiny_config, zoom_out=0.5).validate(1)
    # a clean share belongs to the sensor-like syntheses, as a probability
    with pytest.raises(TrainingError, match="clean_share applies to the sensor-like"):
        settings(image_folder, tmp_path / "g", tiny_config, clean_share=0.2).validate(1)
    with pytest.raises(TrainingError, match="clean_share must be a probability"):
        settings(
            image_folder, tmp_path / "g", tiny_config, degradation="sensor-soft", clean_share=2.0
        ).validate(1)
    path = StudentTrainer(
        settings(
            image_folder, tmp_path / "h", tiny_config, steps=1, degradation="sensor-soft", clean_share=0.2
        )
    ).run()
    assert load_weights(path).metadata["training"]["degradation"]["clean_prob"] == 0.2


def test_loss_falls_on_a_fixed_batch(image_folder: Path, tmp_path: Path, tiny_config):
    torch.manual_seed(0)
    s = settings(
        image_folder,
        tmp_path / "d",
        tiny_config,
        steps=40,
        val_every=0,
        checkpoint_every=0,
        lr=2e-3,
        ssim_weight=0.1,
        fft_weight=0.1,
    )
    trainer = StudentTrainer(s)
    hr = next(trainer.batches(0))
    inputs, target, lr = trainer.make_pair(hr, 0, 0)
    losses = []
    for _ in range(40):
        trainer.optimizer.zero_grad()
        loss, _ = trainer.compute_loss(inputs, target, lr)
        loss.backward()
        trainer.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0]


def test_mse_loss_is_the_squared_error_psnr_measures(image_folder: Path, tmp_path: Path, tiny_config):
    s = settings(image_folder, tmp_path / "m", tiny_config, l1_weight=0.0, mse_weight=1.0, val_every=0)
    trainer = StudentTrainer(s)
    inputs, target, lr = trainer.make_pair(next(trainer.batches(0)), 0, 0)
    loss, parts = trainer.compute_loss(inputs, target, lr)
    with torch.no_grad():
        image = trainer.model(inputs)[1].float()
    assert parts["mse"] == pytest.approx(float((image - target).square().mean()), rel=1e-4)
    assert float(loss) == pytest.approx(parts["mse"], rel=1e-6)  # l1 reported, weighted 0
    assert (
        "mse"
        not in StudentTrainer(settings(image_folder, tmp_path / "n", tiny_config)).compute_loss(
            inputs, target, lr
        )[1]
    )


def test_settings_are_validated(image_folder: Path, tmp_path: Path, tiny_config):
    bad = dataclasses.replace(settings(image_folder, tmp_path / "e", tiny_config), crop=36)
    with pytest.raises(TrainingError, match="multiple"):
        StudentTrainer(bad)


def test_train_command_end_to_end(image_folder: Path, tmp_path: Path, tiny_config):
    out = tmp_path / "cli"
    flags = "--val-every 1 --precision bf16 --name mine --lr-consistency --sampling sqrt-area".split()
    rc = run_quick("train", image_folder, out, "--student", tiny_config.to_json(), *flags)
    assert rc == 0
    loaded = load_weights(out / "mine.safetensors")
    assert loaded.metadata["training"]["precision"] == "bf16"
    assert loaded.metadata["training"]["sampling"] == "sqrt-area"
    # trained with the back-projection in the loss: the file asks for it at inference
    assert loaded.metadata["training"]["lr_consistency"] is True and loaded.lr_consistency


def test_finetune_validates_before_and_after(image_folder: Path, tmp_path: Path, tiny_weights: Path):
    pytest.importorskip("kornia", reason="the Real-ESRGAN degradation needs kornia (requirements-train.txt)")
    out = tmp_path / "ft"
    rc = run_quick("finetune", image_folder, out, "--init", str(tiny_weights))
    assert rc == 0
    with open(out / "val_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2]  # finetune validates every 100 steps and at the end
    meta = load_weights(out / "slimdiffsr_finetuned_x4.safetensors").metadata["training"]
    assert meta["method"] == "finetune" and meta["degradation"]["kind"] == "realesrgan-second-order"
    assert meta["started_from"] == "tiny test model"


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    return build_parser({command: COMMANDS[command]}).parse_args([command, *argv])


def test_the_generated_cli_exposes_every_setting_with_its_default():
    args = parse("train", ["--data", "a", "b", "--out", "o"])
    assert from_args(TrainSettings, args) == TrainSettings(data=["a", "b"], out="o")
    assert from_args(TrainSettings, args).steps == 20000 and args.threads is None and args.restart is False
    on_cli = {f.name for f in dataclasses.fields(TrainSettings) if "cli" in f.metadata}
    assert on_cli <= set(vars(args))
    # what the command sets, not the user
    assert {f.name for f in dataclasses.fields(TrainSettings)} - on_cli == {
        "min_lr_ratio",
        "method",
        "teacher_training",
        "distillation",
    }
    flags = "--l1 0 --mse 1 --sampling sqrt-area --lr-consistency --val-data v w --max-minutes 5 --scale 8"
    args = parse("train", ["--data", "a", "--out", "o", "--student", "compact", *flags.split()])
    assert from_args(TrainSettings, args) == TrainSettings(
        data=["a"],
        out="o",
        student=COMPACT_STUDENT.to_dict(),
        l1_weight=0.0,
        mse_weight=1.0,
        sampling="sqrt-area",
        lr_consistency=True,
        val_data=["v", "w"],
        max_minutes=5.0,
        scale=8,
    )
    with pytest.raises(SystemExit):  # not one of the choices
        parse("train", ["--data", "a", "--out", "o", "--scale", "3"])
    with pytest.raises(SystemExit):  # --out is required
        parse("train", ["--data", "a"])


def test_each_training_command_keeps_its_own_defaults():
    args = parse("finetune", ["--data", "a", "--out", "o", "--init", "w.safetensors"])
    assert from_args(TrainSettings, args, method="finetune") == TrainSettings(
        data=["a"],
        out="o",
        init="w.safetensors",
        steps=2000,
        lr=2e-5,
        degradation="realesrgan",
        val_fraction=0.2,
        warmup=50,
        val_every=100,
        method="finetune",
    )
    assert "student" not in vars(args)
    args = parse(
        "teacher", ["--data", "a", "--out", "o", "--base", "b", "--lora-rank", "8", "--nll-weight", "0.5"]
    )
    assert from_args(TeacherTraining, args) == TeacherTraining(TeacherOptions(lora_rank=8), nll_weight=0.5)
    assert (args.steps, args.lr, args.crop, args.batch_size, args.degradation) == (
        10000,
        1e-4,
        256,
        2,
        "realesrgan",
    )
    args = parse("distill", ["--data", "a", "--out", "o", "--init", "s", "--teacher", "t", "--gan", "0.1"])
    assert from_args(Distillation, args) == Distillation(teacher="t", gan_weight=0.1)
    with pytest.raises(SystemExit):  # distillation starts from a student: --init is required
        parse("distill", ["--data", "a", "--out", "o", "--teacher", "t"])
    args = parse("prune", ["--teacher", "t", "--student", '{"vae_channels": 16, "encoder_blocks": [1, 1]}'])
    assert from_args(Pruning, args) == Pruning(
        teacher="t", student={"vae_channels": 16, "encoder_blocks": (1, 1)}
    )
    with pytest.raises(SystemExit):  # the overrides must be a JSON object
        parse("prune", ["--student", "[1, 2]"])


def test_export_name_follows_the_method_and_scale():
    assert TrainSettings(data=[], out="", scale=8).export_name == "slimdiffsr_x8"
    assert TrainSettings(data=[], out="", method="distillation").export_name == "slimdiffsr_distilled_x4"
    assert TrainSettings(data=[], out="", name="mine", method="finetune").export_name == "mine"
    with pytest.raises(TrainingError, match="method"):
        TrainSettings(data=[], out="", method="other").validate(8)
    with pytest.raises(TrainingError, match="precision must be one of fp32, bf16, fp16"):
        TrainSettings(data=[], out="", precision="fp64").validate(8)


def test_split_seed_keeps_the_parent_runs_held_out_files(tmp_path: Path, tiny_config):
    """A run continued from another's weights draws new crops (its own --seed) but holds
    out the same files (--split-seed), so its validation never sees its parent's data."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        write_raster(folder / f"f{i:02d}.tif", random_rgb(48, seed=i), crs=None)

    def held_out(**kw: int) -> tuple[list[str], torch.Tensor]:
        run = tmp_path / "_".join(f"{k}{v}" for k, v in kw.items())
        trainer = StudentTrainer(settings(folder, run, tiny_config, **kw))
        return sorted(p.name for p in trainer.val_files), trainer.dataset[0]

    parent, parent_crop = held_out(seed=5)
    other, _ = held_out(seed=6)
    assert other != parent  # the seeds split differently, so the next line tests something
    continued, continued_crop = held_out(seed=6, split_seed=5)
    assert continued == parent
    assert not torch.equal(continued_crop, parent_crop)  # yet the crops are new
