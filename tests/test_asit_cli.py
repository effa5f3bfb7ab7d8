"""ssast-pretrain with the ASiT recipe end to end on a small demo corpus, and the centers
averaged across two real processes."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ssast
from finetune.module import Finetune
from pretrain.cli import main
from ssast.losses import CenteredDistillation

from helpers import logged, recipe_args



@pytest.mark.slow
def test_demo_recipe_trains_logs_and_exports_the_teacher(small_demo_corpus, tmp_path):
    corpus, run = small_demo_corpus, tmp_path / "run"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    main([
        "fit", *recipe_args("pretrain", "asit_demo"),
        "--data.train", str(corpus / "unlabeled"), "--data.val", str(corpus / "events/val"),
        "--data.batch_size", "8", "--data.batches_per_epoch", "10",
        "--data.num_workers", "1",
        "--model.init_args.optimization.warmup_steps", "5",
        "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false",
    ])
    recon = logged(run, "train/recon")
    half = len(recon) // 2
    assert len(recon) >= 5 and sum(recon[-half:]) < sum(recon[:half]), recon  # reconstruction improves in 30 steps
    for name in ("train/global", "train/local", "train/kl", "train/teacher_entropy", "train/student_entropy",
                 "val/loss", "val/global", "val/local", "val/recon"):
        assert all(torch.isfinite(torch.tensor(logged(run, name)))), name
    for name in ("train/ema_decay", "train/teacher_temp", "train/weight_decay"):  # all rising over the run
        values = logged(run, name)
        assert values == sorted(values) and values[-1] > values[0], name
    assert logged(run, "train/teacher_entropy")[-1] > 1.0  # no collapse onto one prototype in 30 steps

    exported = ssast.load_checkpoint(run / "encoder.safetensors")
    assert exported.encoder.config.input_tdim == 192 and exported.encoder.config.drop_path == 0.0
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    teacher = ssast.load_encoder(run / "checkpoints/last.ckpt")
    for name, tensor in exported.encoder.state_dict().items():
        assert torch.equal(tensor, teacher.state_dict()[name]), name  # the export is the teacher...
    student_embed = state["state_dict"]["encoder.patch_embed.proj.weight"]
    assert not torch.equal(student_embed, teacher.state_dict()["patch_embed.proj.weight"])  # ...not the student

    model = Finetune(num_classes=3, init_from=str(run / "encoder.safetensors"), input_tdim=100)
    assert model(torch.randn(2, 100, 128)).shape == (2, 3)


def _center_on_rank(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    loss = CenteredDistillation(3, center_momentum=0.5)
    loss.update_center(torch.full((4, 3), float(rank + 1)))  # rank 0 sees 1s, rank 1 sees 2s
    torch.save(loss.center, Path(results) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_centers_are_averaged_across_ranks(tmp_path):
    mp.spawn(_center_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    centers = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    expected = torch.full((3,), 0.5 * 1.5)  # momentum 0.5 from zero toward the mean of 1 and 2
    assert torch.equal(centers[0], centers[1]) and torch.allclose(centers[0], expected)
