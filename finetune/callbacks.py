"""What a finetuning run writes besides checkpoints: its history, one row per epoch, and the
predictions and embeddings of ``ssast-finetune predict``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.trainer.states import TrainerFn

from ssast.files import written_atomically
from ssast.train.callbacks import RunRecord


class History(RunRecord):
    """``history.csv`` in the run folder: one row per validation (per epoch for the recipes
    that validate once an epoch), as the official SSAST/AST loop's ``result.csv``. Columns:
    ``epoch`` (from 1), ``step`` (optimizer steps so far), ``lr`` (the head's rate at the last
    step), ``train/loss`` (the mean since the row before, over every rank), ``val/loss``,
    ``val/<metric>`` and ``test/<metric>``, the last filled on the row of the weights that
    were tested (see :meth:`record_test`). An epoch without validation gets a row of its own
    at its end. The rows are kept in checkpoints, so a resumed run's file has them all;
    ``ssast-finetune`` adds this callback to every run.
    """

    filename = "history.csv"

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lr: float | None = None
        self._loss_sum, self._loss_count = 0.0, 0

    def columns(self, metric: str) -> list[str]:
        return ["epoch", "step", "lr", "train/loss", "val/loss", f"val/{metric}", f"test/{metric}"]

    def curve(self, name: str) -> list[float]:
        """A column, one value per row (NaN where the row has none)."""
        return [float("nan") if row.get(name) is None else float(row[name]) for row in self.rows]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        groups = optimizer.param_groups
        self._lr = next((group for group in groups if group.get("name") == "head"), groups[0])["lr"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and torch.isfinite(loss):
            self._loss_sum += float(loss)
            self._loss_count += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            metric = pl_module.metric_name
            self._add_row(trainer, pl_module, {name: float(trainer.callback_metrics[name])
                                               for name in ("val/loss", f"val/{metric}")
                                               if name in trainer.callback_metrics})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:  # this epoch ended unvalidated
            self._add_row(trainer, pl_module, {})

    def _add_row(self, trainer: L.Trainer, pl_module: L.LightningModule, validation: dict[str, float]) -> None:
        totals = trainer.strategy.reduce(torch.tensor([self._loss_sum, self._loss_count], dtype=torch.float64,
                                                      device=pl_module.device), reduce_op="sum")
        loss = float(totals[0] / totals[1]) if totals[1] else None
        self._loss_sum, self._loss_count = 0.0, 0
        self.rows.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "lr": self._lr,
                          "train/loss": loss, **validation})
        self.write(trainer, pl_module.metric_name)

    def record_test(self, trainer: L.Trainer, metric: str, value: float, step: int) -> None:
        """Put the test ``metric`` of the weights after optimizer step ``step`` on its row."""
        for row in self.rows:
            if row["step"] == step:
                row[f"test/{metric}"] = value
        self.write(trainer, metric)

    def write(self, trainer: L.Trainer, metric: str) -> None:
        if not trainer.is_global_zero:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns(metric), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({name: "" if value is None else value for name, value in row.items()} for row in self.rows)
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as partial:
            partial.write_text(text.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def restore(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class WritePredictions(BasePredictionWriter):
    """Writes what ``predict`` computed, one file per rank (``.rankN`` before the suffix
    when there are several).

    Args:
        path: the output; relative paths are under the trainer's ``default_root_dir``.
            A CSV with ``key,labels,scores`` (the ``top_k`` labels and their scores,
            separated by ``;``), or with ``embeddings`` the clip embeddings as ``.npy``
            and their keys, one per line, in ``.keys.txt`` beside it.
        embeddings: write clip embeddings instead of predictions.
        top_k: labels per clip in the CSV.
    """

    def __init__(self, path: str = "predictions.csv", embeddings: bool = False, top_k: int = 5) -> None:
        super().__init__(write_interval="epoch")
        self.path, self.embeddings, self.top_k = path, embeddings, top_k

    def target(self, trainer: L.Trainer) -> Path:
        path = Path(self.path)
        path = path if path.is_absolute() else Path(trainer.default_root_dir) / path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        batches = [batch for loader in _per_loader(predictions) for batch in loader]
        keys = [key for batch in batches for key in batch["key"]]
        path = self.target(trainer)
        if self.embeddings:
            vectors = torch.cat([batch["embeddings"] for batch in batches]) if batches else torch.empty(0)
            np.save(path.with_suffix(".npy"), vectors.numpy())
            path.with_suffix(".keys.txt").write_text("".join(f"{key}\n" for key in keys))
            print(f"wrote {len(keys)} embeddings to {path.with_suffix('.npy')}")
            return
        names = getattr(pl_module.hparams, "class_names", None)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "labels", "scores"])
            for batch in batches:
                top = batch["scores"].topk(min(self.top_k, batch["scores"].shape[1]), dim=1)
                for key, indices, scores in zip(batch["key"], top.indices.tolist(), top.values.tolist()):
                    labels = [names[i] if names else str(i) for i in indices]
                    writer.writerow([key, ";".join(labels), ";".join(f"{score:.4f}" for score in scores)])
        print(f"wrote {len(keys)} predictions to {path}")


def _per_loader(predictions: Any) -> list[list[dict]]:
    """Lightning gives a list of batches for one loader, a list of such lists for several."""
    if predictions and isinstance(predictions[0], list):
        return predictions
    return [predictions]
