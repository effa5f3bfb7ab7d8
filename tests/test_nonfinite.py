"""Non-finite losses, injected for real into real ``Trainer.fit`` runs of tiny models: the
step is skipped (weights, optimizer state, EMA teacher and centers untouched), counted and
logged; too many in a row stop the run naming the checkpoint to go back to; and under DDP
every rank skips together."""

from __future__ import annotations

from dataclasses import replace

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from finetune.module import Finetune
from ssast.train.callbacks import RunCheckpoint
from pretrain.asit import ASIT_RECIPE, ASiT
from pretrain.mspm import MSPM, SSAST_RECIPE
from ssast.train.module import NonFiniteLossError

FRAMES = 16  # frame tokens (128 x 2): 8 patches per clip
TINY = dict(size="mini", fshape=128, tshape=2, input_tdim=FRAMES)


def mspm(**changes) -> MSPM:
    return MSPM(**{**TINY, "mask_patches": 4, "passes": 1,
                   "optimization": replace(SSAST_RECIPE, warmup_steps=0, lr=1e-3), **changes})


def asit(**changes) -> ASiT:
    return ASiT(**{**TINY, "view_frames": 12, "cls_prototypes": 32, "patch_prototypes": 16, "head_hidden_dim": 32,
                   "head_bottleneck_dim": 16, "teacher_temp_warmup_epochs": 4, "ema_decay": 0.9,
                   "optimization": replace(ASIT_RECIPE, warmup_epochs=0, warmup_steps=2, lr=1e-2), **changes})


def finetune(**changes) -> Finetune:
    return Finetune(**{**TINY, "num_classes": 3, "schedule": "fairseq_cosine", "warmup_steps": 2, "lr": 1e-3, **changes})


BUILDERS = {"mspm": mspm, "asit": asit, "finetune": finetune}


def batches(count: int, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = [{"fbank": torch.randn(4, FRAMES, 128, generator=generator),
             "labels": torch.randint(0, 3, (4,), generator=generator)} for _ in range(count)]
    return DataLoader(data, batch_size=None)


def trainer(tmp_path: Path, steps: int, callbacks: list[L.Callback], **options) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                    default_root_dir=tmp_path)
    return L.Trainer(**{**settings, **options}, callbacks=callbacks)


class PoisonInputs(L.Callback):
    """Makes the inputs of the chosen steps (of the chosen ranks) NaN: the whole first clip,
    so every method's random crops and masks still see it."""

    def __init__(self, steps: set[int] | range, ranks: set[int] | None = None) -> None:
        self.steps, self.ranks = set(steps), ranks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps and (self.ranks is None or trainer.global_rank in self.ranks):
            batch["fbank"] = batch["fbank"].clone()
            batch["fbank"][0] = math.nan


class PoisonWeight(L.Callback):
    """Makes one weight NaN before the given step: every later loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.encoder.cls_token.fill_(math.nan)


def training_state(module: L.LightningModule, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Everything a step may change: every parameter and buffer (EMA teacher and centers
    included) and every tensor of the optimizer's state."""
    state = {f"module.{name}": value.detach().clone() for name, value in module.state_dict().items()}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            state[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone()
    return state


class StepChanges(L.Callback):
    """For each step: the names of the state tensors it changed."""

    def __init__(self) -> None:
        self.changed: dict[int, set[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step, self.before = trainer.global_step, training_state(pl_module, trainer.optimizers[0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = training_state(pl_module, trainer.optimizers[0])
        self.changed[self.step] = {name for name, value in after.items()
                                   if name not in self.before or not torch.equal(value, self.before[name])}


@pytest.mark.parametrize("method", list(BUILDERS))
def test_a_nonfinite_loss_skips_the_step(method, tmp_path, caplog):
    torch.manual_seed(0)
    model, changes = BUILDERS[method](), StepChanges()
    fit = trainer(tmp_path, 6, [PoisonInputs({2, 4}), changes])
    fit.fit(model, train_dataloaders=batches(6))

    assert fit.global_step == 6  # a skipped step still counts, for the schedules too
    for step in (2, 4):
        assert changes.changed[step] == set(), f"step {step} changed {sorted(changes.changed[step])[:5]}"
    for step in (0, 1, 3, 5):
        changed = changes.changed[step]
        assert "module.encoder.patch_embed.proj.weight" in changed and any(n.startswith("optimizer.") for n in changed)
    if method == "asit":  # the teacher and both centers move on every step taken
        for step in (3, 5):
            assert {"module.teacher.cls_token", "module.teacher_head.mlp.0.weight",
                    "module.global_loss.center", "module.local_loss.center"} <= changes.changed[step]
    for name, value in model.state_dict().items():
        assert torch.isfinite(value).all(), name
    assert fit.callback_metrics["train/nonfinite_steps"] == 2 and model.nonfinite_steps == 2
    warnings = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(warnings) == 2 and "step 4" in warnings[1] and "2 skipped so far, 1 in a row" in warnings[1]


@pytest.mark.parametrize("fault", ["inputs", "weights"])
def test_consecutive_nonfinite_losses_stop_the_run_naming_the_last_checkpoint(fault, tmp_path):
    torch.manual_seed(0)
    model = mspm(max_nonfinite_steps=2)
    # Checkpoints after steps 2 and 4; from step 3 on every loss is NaN, so the second in a
    # row (step 4) stops the run, after a checkpoint was written between the two.
    poison = PoisonInputs(range(3, 100)) if fault == "inputs" else PoisonWeight(3)
    checkpoints = RunCheckpoint(every_n_train_steps=2)
    fit = trainer(tmp_path, 10, [poison, checkpoints], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError) as caught:
        fit.fit(model, train_dataloaders=batches(10))

    message = str(caught.value)
    assert "2 consecutive optimizer steps (3 to 4" in message and "max_nonfinite_steps" in message
    named = next(Path(word.rstrip(",;.")) for word in message.split() if word.rstrip(",;.").endswith(".ckpt"))
    assert named.parent == tmp_path / "checkpoints" and named.exists()
    saved = torch.load(named, weights_only=True)
    assert saved["global_step"] == 4 and saved["nonfinite_steps"] == {"total": 1, "consecutive": 1}
    if fault == "inputs":
        assert "The last good checkpoint is" in message and "check the data" in message
        for name, value in model.state_dict().items():  # the weights of step 3, as saved at step 4
            assert torch.equal(saved["state_dict"][name], value), name
    else:
        assert "The weights themselves hold NaN or Inf" in message and "may hold them too" in message


def test_the_stop_says_when_there_is_no_checkpoint(tmp_path):
    model = mspm(max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLossError, match="No checkpoint has been written yet"):
        trainer(tmp_path, 4, [PoisonInputs({1, 2})]).fit(model, train_dataloaders=batches(4))


def test_one_nonfinite_step_at_a_time_never_stops_the_run(tmp_path):
    model = mspm(max_nonfinite_steps=2)
    fit = trainer(tmp_path, 6, [PoisonInputs({1, 3, 5})])
    fit.fit(model, train_dataloaders=batches(6))
    assert fit.global_step == 6 and model.nonfinite_steps == 3 and model.consecutive_nonfinite == 1


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_nonfinite_steps must be at least 1"):
        finetune(max_nonfinite_steps=0)


class RankReport(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        weights = {name: value.tolist() for name, value in pl_module.state_dict().items() if "center" in name}
        weights["patch_embed"] = pl_module.encoder.patch_embed.proj.weight.flatten()[:50].tolist()
        report = {"skipped": pl_module.nonfinite_steps, "global_step": trainer.global_step, "weights": weights,
                  "finite": all(bool(torch.isfinite(v).all()) for v in pl_module.state_dict().values())}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_every_ddp_rank_skips_when_one_rank_sees_a_nonfinite_loss(tmp_path):
    # Only rank 1 sees NaN inputs at step 2. Through DDP's gradient all-reduce its NaN
    # gradients reach rank 0 too, whose own loss is finite: both must skip.
    torch.manual_seed(0)
    model = asit()
    fit = trainer(tmp_path, 4, [PoisonInputs({2}, ranks={1}), RankReport(str(tmp_path))],
                  devices=2, strategy="ddp_spawn")
    fit.fit(model, train_dataloaders=batches(4))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["skipped"] == reports[1]["skipped"] == 1
    assert reports[0]["global_step"] == reports[1]["global_step"] == 4
    assert reports[0]["finite"] and reports[1]["finite"]
    assert reports[0]["weights"] == reports[1]["weights"]  # the ranks did not drift apart
