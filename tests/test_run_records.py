"""A run's records (history, summaries, probe curves, clocks) are what ran: a resumed fit
restores them from its checkpoint, but loading an earlier checkpoint to test it (the best
epoch's, as ``ssast-finetune`` does) leaves them as they are (issue 37, finding 7)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from finetune.callbacks import History
from ssast.train.callbacks import MetricHistory, MetricsSummary


class Line(L.LightningModule):
    """A one-weight regression that logs what the finetuning module logs."""

    metric_name = "acc"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return (self.weight - batch).pow(2).mean()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch))
        self.log("val/acc", -self.loss(batch))

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("test/acc", -self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data() -> DataLoader:
    return DataLoader([torch.ones(2)] * 3, batch_size=None)


def trainer(tmp_path, epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, default_root_dir=tmp_path,
                     callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0)


def records() -> list[L.Callback]:
    return [History(), MetricHistory(("val/loss",)), MetricsSummary(("train/loss", "val/loss"))]


def test_testing_an_earlier_checkpoint_keeps_the_history_and_resuming_restores_it(tmp_path):
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="{epoch}", save_top_k=-1)
    history, metrics, summary = callbacks = records()
    fit = trainer(tmp_path, 4, [*callbacks, every_epoch])
    fit.fit(Line(), data(), data())
    last = summary.last["val/loss"]
    assert [row["epoch"] for row in history.rows] == [1, 2, 3, 4] and len(metrics.history["val/loss"]) == 4

    fit.test(ckpt_path=str(tmp_path / "checkpoints/epoch=0.ckpt"), dataloaders=data())
    assert [row["epoch"] for row in history.rows] == [1, 2, 3, 4]  # was [1]: the tested epoch's rows
    assert len(metrics.history["val/loss"]) == 4 and summary.last["val/loss"] == last
    written = (tmp_path / History.filename).read_text().splitlines()
    assert len(written) == 1 + 4

    # A fit resumed from that checkpoint continues its records from there.
    history, metrics, summary = callbacks = records()
    trainer(tmp_path, 2, callbacks).fit(Line(), data(), data(), ckpt_path=str(tmp_path / "checkpoints/epoch=0.ckpt"))
    assert [row["epoch"] for row in history.rows] == [1, 2] and len(metrics.history["val/loss"]) == 2
