"""What lets a long run survive faults, shared by pretraining and finetuning.

* Checkpoints are never half-written (:class:`AtomicCheckpointIO`, through
  :func:`ssast.files.written_atomically`): a node killed while saving leaves the previous
  checkpoint intact.
* ``--ckpt_path last`` finds the newest of ``last.ckpt`` and SLURM's requeue checkpoints
  (:func:`last_checkpoint`), and a fit resumed from a checkpoint continues its W&B run
  instead of starting a new one (:class:`WandbRunId`, :func:`wandb_run_id`).
  ``ssast.train.cli.RunCLI`` installs all of this in both programs.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import fsspec.utils
import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from ssast.checkpoints import refusal_reason
from ssast.files import written_atomically
from ssast.train.callbacks import LastCheckpoint, checkpoint_folder

log = logging.getLogger(__name__)


# --- checkpoints that are never half-written -------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local checkpoints written through
    :func:`ssast.files.written_atomically`.

    Lightning 2.6 saves through an fsspec transaction that writes the file in the system's
    temporary folder, then ``shutil.move``\\ s it over the checkpoint without an fsync: when
    that folder is on another file system than the run (a node's local ``/tmp`` and a shared
    run folder, the usual cluster layout), the move is a copy into the checkpoint itself, and
    a kill during it leaves a truncated file in place of the last good one; a kill before it
    leaves the whole checkpoint in ``/tmp``. Remote paths (``s3://`` ...) keep Lightning's
    write, where an object appears only once it is complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with written_atomically(path) as temp:
            torch.save(checkpoint, temp)


# --- resuming a run --------------------------------------------------------------------


class WandbRunId(L.Callback):
    """Keeps the id of the trainer's W&B run in every checkpoint (``wandb_run_id``), so that
    a fit resumed from it continues that run (``ssast.train.cli.RunCLI`` hands the id to the
    logger) rather than starting a new one beside it."""

    key = "wandb_run_id"

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[self.key] = logger.version
                return


def wandb_run_id(checkpoint_path: str | Path) -> str | None:
    """The W&B run that wrote ``checkpoint_path`` (:class:`WandbRunId`), read without loading
    its weights; ``None`` when it records none or is not a local file."""
    if fsspec.utils.get_protocol(str(checkpoint_path)) != "file":
        return None
    try:  # memory-mapped: the id without reading the weights
        checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as error:
        log.warning("could not read the W&B run id from %s: %s", checkpoint_path, error)
        return None
    return checkpoint.get(WandbRunId.key) if isinstance(checkpoint, dict) else None


def last_checkpoint(default_root_dir: str | Path, dirpath: str | Path | None = None) -> str | None:
    """What ``--ckpt_path last`` means: the newer of :class:`~ssast.train.callbacks.LastCheckpoint`'s
    ``last.ckpt`` (in ``dirpath``, by default ``<default_root_dir>/checkpoints``) and the
    ``hpc_ckpt_<n>.ckpt`` files Lightning saves in ``default_root_dir`` when SLURM asks a job
    to requeue; ``None`` when there is none yet."""
    found = [checkpoint_folder(default_root_dir, dirpath) / LastCheckpoint.filename,
             *Path(default_root_dir).glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in found if path.is_file()]
    return str(max(existing, key=lambda path: path.stat().st_mtime)) if existing else None


def newest_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written checkpoint file the trainer's checkpoint callbacks know of."""
    paths = {path for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)
             for path in (callback.last_model_path, callback.best_model_path, *callback.best_k_models) if path}
    paths |= {str(callback.path) for callback in trainer.callbacks
              if isinstance(callback, LastCheckpoint) and callback.dirpath is not None}
    existing = [path for path in paths if os.path.exists(path)]
    return max(existing, key=os.path.getmtime) if existing else None


def install_recovery(trainer: L.Trainer) -> None:
    """Atomic checkpoint writes (unless the recipe chose another CheckpointIO) and the W&B
    run id in every checkpoint."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if not any(isinstance(callback, WandbRunId) for callback in trainer.callbacks):
        trainer.callbacks.append(WandbRunId())


# --- checkpoints to resume from, checked before any work starts -------------------------


class ResumeError(ValueError):
    """A ``--ckpt_path`` this run cannot continue from, said before any work starts."""


def read_resumable(checkpoint_path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``checkpoint_path``, opened with ``weights_only=True`` (memory-mapped),
    or :class:`ResumeError` when it is missing, would run code, is not a torch file or not a
    Lightning checkpoint. ``None`` for remote paths, which are left to Lightning."""
    if fsspec.utils.get_protocol(str(checkpoint_path)) != "file":
        return None
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ResumeError(f"--ckpt_path {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save has written since torch 1.6
        raise ResumeError(f"--ckpt_path {path}: not a checkpoint (not a torch.save file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ResumeError(f"--ckpt_path {path}: refused, {refusal_reason(error)}; only checkpoints of weights and "
                          "plain values are resumed (a run of this project writes them)") from None
    except Exception as error:  # a damaged zip fails in many ways
        raise ResumeError(f"--ckpt_path {path}: not a readable checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ResumeError(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict); to start from an "
                          "encoder's weights use --model.init_from (finetuning) instead")
    return checkpoint


def check_resumable(model: L.LightningModule, checkpoint_path: str | Path) -> None:
    """Raises :class:`ResumeError` unless ``checkpoint_path`` is a Lightning checkpoint
    (:func:`read_resumable`) whose weights fit ``model``, every parameter present and of the
    same shape. Lightning would otherwise find out only after building the data loaders,
    with a page of ``load_state_dict`` errors."""
    checkpoint = read_resumable(checkpoint_path)
    if checkpoint is None:
        return
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = [name for name in expected if name not in saved]
    wrong = [f"{name} {tuple(saved[name].shape)} vs {tuple(tensor.shape)}" for name, tensor in expected.items()
             if name in saved and saved[name].shape != tensor.shape]
    if missing or wrong:
        problem = f"shapes differ: {wrong[0]}" if wrong else f"{len(missing)} parameters missing, e.g. {missing[0]}"
        raise ResumeError(f"--ckpt_path {checkpoint_path} was written by another model ({problem} in the file vs "
                          "this run); resume with the configuration that wrote it (config.yaml in its run folder)")
