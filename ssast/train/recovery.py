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

import dataclasses
import errno
import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Mapping
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
        folder, needed = Path(path).parent, checkpoint_bytes(checkpoint)
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise DiskFullError(folder, needed, free)
        try:
            with written_atomically(path) as temp:
                torch.save(checkpoint, temp)
        except (OSError, RuntimeError) as error:
            # torch's zip writer says "unexpected pos" when a write comes up short, not ENOSPC.
            if getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in str(error):
                raise DiskFullError(folder, needed, free) from error
            raise


class DiskFullError(OSError):
    """A checkpoint that does not fit on its disk. The previous checkpoint is untouched (a
    checkpoint is written beside it and renamed), and the run stops: going on without
    checkpoints would risk more work than it saves."""

    def __init__(self, folder: Path, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device at {folder}: a checkpoint needs ~{_mb(needed)} MB, "
                                       f"{_mb(free)} MB free before writing. The previous checkpoint is intact: "
                                       "free some space (or set trainer.default_root_dir elsewhere) and resume with "
                                       "--ckpt_path last")

    def __str__(self) -> str:
        return self.strerror


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f}" if size < 10 * 2**20 else f"{size / 2**20:.0f}"


def checkpoint_bytes(checkpoint: Any) -> int:
    """About the size of ``checkpoint`` once saved: its tensors' bytes (each storage once),
    and 1 MB for the rest."""
    storages: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(checkpoint)
    return sum(storages.values()) + 2**20


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


def check_resumable(model: L.LightningModule, checkpoint_path: str | Path,
                    datamodule: L.LightningDataModule | None = None, resuming: bool = False) -> None:
    """Raises :class:`ResumeError` unless ``checkpoint_path`` is a Lightning checkpoint
    (:func:`read_resumable`) whose weights fit ``model``, every parameter present and of the
    same shape. Lightning would otherwise find out only after building the data loaders,
    with a page of ``load_state_dict`` errors. ``resuming`` (a fit goes on from it): the
    run's settings must also be the checkpoint's (:func:`check_same_settings`)."""
    checkpoint = read_resumable(checkpoint_path)
    if checkpoint is None:
        return
    if resuming:
        check_same_settings(checkpoint, checkpoint_path, model, datamodule)
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = [name for name in expected if name not in saved]
    wrong = [f"{name} {tuple(saved[name].shape)} vs {tuple(tensor.shape)}" for name, tensor in expected.items()
             if name in saved and saved[name].shape != tensor.shape]
    if missing or wrong:
        problem = f"shapes differ: {wrong[0]}" if wrong else f"{len(missing)} parameters missing, e.g. {missing[0]}"
        raise ResumeError(f"--ckpt_path {checkpoint_path} was written by another model ({problem} in the file vs "
                          "this run); resume with the configuration that wrote it (config.yaml in its run folder)")


# A resumed fit takes these from its command, not from the checkpoint: where the data lies (a
# requeued job may find it mounted elsewhere) and how it is read, not what is learned or how.
# Every other model and data setting is the checkpoint's, and a change to one is refused:
# the weights, the optimizer's state and the schedules were made with the saved values.
APPLIED_ON_RESUME = (
    "data.train", "data.val", "data.test", "data.predict", "data.num_workers", "data.fbank_in_workers",
    "data.reader.", "model.max_nonfinite_steps", "model.compile", "model.init_from",
)


def check_same_settings(checkpoint: dict[str, Any], checkpoint_path: str | Path, model: L.LightningModule,
                        datamodule: L.LightningDataModule | None) -> None:
    """Compares the model and data settings of a fit resumed from ``checkpoint`` with those
    it was written with: a change to one of :data:`APPLIED_ON_RESUME` is logged as applied;
    any other is refused, in one :class:`ResumeError` that names each key, its saved and its
    given value. A setting only one side has (another version of this project) is not compared."""
    sides = [("model", checkpoint.get("hyper_parameters"), model.hparams)]
    if datamodule is not None:
        sides.append(("data", checkpoint.get("datamodule_hyper_parameters"), datamodule.hparams))
    applied, refused = [], []
    for prefix, saved, given in sides:
        saved, given = _flat(saved or {}, prefix), _flat(given, prefix)
        for key in sorted(saved.keys() & given.keys()):
            if saved[key] != given[key]:
                change = f"{key} {saved[key]!r} -> {given[key]!r}"
                (applied if key.startswith(APPLIED_ON_RESUME) else refused).append(change)
    if refused:
        raise ResumeError(f"--ckpt_path {checkpoint_path}: a resumed run keeps the settings it was written with, and "
                          f"these differ: {'; '.join(refused)} (saved -> given). Resume without changing them, or "
                          f"start a new run from its weights (--model.init_from {checkpoint_path})")
    for change in applied:
        log.info("resuming with %s (saved -> given)", change)


def _flat(settings: Any, prefix: str) -> dict[str, Any]:
    """Nested settings as ``{"model.optimization.lr": value}`` (:func:`_plain` values);
    LightningCLI's own keys (``_class_path``) left out."""
    settings = _plain(settings)
    if not isinstance(settings, dict):
        return {prefix: settings}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if not str(key).startswith("_"):
            flat.update(_flat(value, f"{prefix}.{key}"))
    return flat


def _plain(value: Any) -> Any:
    """``value`` as a checkpoint holds it: dataclasses as dicts, tuples as lists, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value
