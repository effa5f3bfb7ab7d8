"""Writing predictions and embeddings of ``ssast-finetune predict``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


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
