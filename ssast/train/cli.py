"""What both ssast training programs (``ssast-pretrain``, ``ssast-finetune``) stand on: a
LightningCLI that survives killed nodes and reports the user's mistakes in one line.

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from ssast.checkpoints import CheckpointError
from ssast.data.reader import NoReadableShards, TooManySkipped
from ssast.train.callbacks import LastCheckpoint
from ssast.train.module import NonFiniteLossError
from ssast.train.recovery import (
    ResumeError, check_resumable, install_recovery, last_checkpoint, read_resumable, wandb_run_id,
)

log = logging.getLogger(__name__)


def default_wandb_to_offline() -> None:
    """No key in the environment or ~/.netrc: log offline instead of prompting."""
    netrc = Path.home() / ".netrc"
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if not logged_in and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


class LogConfig(SaveConfigCallback):
    """Writes config.yaml to the run folder and sends the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


# Our programs pass ``args`` on purpose (``cv`` folds, ``ssast-demo``'s runs).
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")

# Errors that are the user's to fix, reported in one line instead of a traceback (set
# SSAST_TRACEBACK=1 to see it).
USER_ERRORS: tuple[type[Exception], ...] = (
    CheckpointError, ResumeError, NonFiniteLossError, TooManySkipped, NoReadableShards, FileNotFoundError,
    FileExistsError,
)


def run_program(program: str, run: Callable[[], object]) -> None:
    """Runs ``run``; a :data:`USER_ERRORS` error exits with ``program: error: ...``."""
    try:
        run()
    except USER_ERRORS as error:
        if os.environ.get("SSAST_TRACEBACK"):
            raise
        sys.exit(f"{program}: error: {error}")


class ConciseParser(LightningArgumentParser):
    """Reports a bad option or value in one line that names the key, the class it belongs
    to and what was wrong, instead of the usage of every option and jsonargparse's nested
    union report."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        program = self.prog.replace(" [options]", "")
        sys.exit(f"{program}: error: {concise_error(message)} (`{program} --help` lists the options; "
                 "--print_config shows the resolved configuration)")


def concise_error(message: str) -> str:
    """The key path, the class and the innermost reason of a jsonargparse error message."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    keys = [key for line in lines for key in re.findall(r'^(?:error: )?Parser key "([^"]+)"', line)]
    classes = [name for line in lines for name in re.findall(r"given class_path '([\w.]+)'", line)]
    noise = ("error: Parser key", "Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value",
             "- Expected a <class 'NoneType'>", "- Problem with given class_path")
    reasons = [line.removeprefix("- ") for line in lines if not line.startswith(noise)]
    if not keys:
        return lines[0].removeprefix("error: ") if lines else message
    reason = re.sub(r"<class '([\w.]+)'>", r"\1", reasons[0] if reasons else lines[-1])
    owner = f" ({classes[0]})" if classes else ""
    return f"{'.'.join(keys)}{owner}: {reason}"


class RunCLI(LightningCLI):
    """LightningCLI with what both ssast programs need to survive a killed node: checkpoints
    written atomically and recording their W&B run (:func:`~ssast.train.recovery.install_recovery`),
    and ``fit --ckpt_path`` continuing that W&B run. ``--ckpt_path last`` resumes from the
    newest of ``last.ckpt`` and SLURM's requeue checkpoints
    (:func:`~ssast.train.recovery.last_checkpoint`) and starts afresh when there is none yet,
    so a job script can pass it on its first start and on every restart alike.
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Lightning reads the model's hyperparameters from --ckpt_path right after parsing:
        # the file is checked first, so a bad one is one clear line, not a traceback.
        ckpt_path = self._command_config().get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            read_resumable(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self._command_config()
        if config.get("ckpt_path") == "last":
            # Resolved here, once, so that the W&B run and the weights come from the same file.
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.ckpt_path = last_checkpoint(root, _last_checkpoint_dirpath(config.trainer.get("callbacks")))
            if config.ckpt_path is None:
                log.warning("--ckpt_path last: no last checkpoint in %s yet; starting from scratch", root)
            else:
                read_resumable(config.ckpt_path)
        if self.config.get("subcommand") == "fit" and config.get("ckpt_path"):
            run_id = wandb_run_id(config.ckpt_path)
            if run_id is None:
                log.warning("%s records no W&B run: a W&B logger starts a new one", config.ckpt_path)
            else:
                _continue_wandb_run(config.trainer.get("logger"), run_id)

    def _command_config(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_recovery(trainer)
        return trainer

    # A checkpoint is checked against the model before Lightning builds the data loaders.
    def fit(self, model: L.LightningModule, **kwargs: Any) -> None:
        self.trainer.fit(model, **self._checked(model, kwargs))

    def validate(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.validate(model, **self._checked(model, kwargs))

    def test(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.test(model, **self._checked(model, kwargs))

    def predict(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.predict(model, **self._checked(model, kwargs))

    @staticmethod
    def _checked(model: L.LightningModule, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("ckpt_path") not in (None, "last", "best", "hpc"):
            check_resumable(model, kwargs["ckpt_path"])
        return kwargs


def _classes(config: Any) -> list[tuple[type, Namespace]]:
    """``(class, init_args)`` of each ``class_path`` entry of a parsed ``callbacks`` or
    ``logger`` value (one entry or a list; ``None`` and ``False`` have none)."""
    entries = config if isinstance(config, list) else [config]
    found = []
    for entry in entries:
        if isinstance(entry, Namespace) and entry.get("class_path"):
            module, _, name = entry.class_path.rpartition(".")
            found.append((getattr(importlib.import_module(module), name), entry))
    return found


def _last_checkpoint_dirpath(callbacks: Any) -> str | None:
    """The ``dirpath`` of the recipe's :class:`~ssast.train.callbacks.LastCheckpoint`, if it names one."""
    for cls, entry in _classes(callbacks):
        if issubclass(cls, LastCheckpoint) and entry.get("init_args") and entry.init_args.get("dirpath"):
            return entry.init_args.dirpath
    return None


def _continue_wandb_run(loggers: Any, run_id: str) -> None:
    """Point the recipe's W&B loggers at ``run_id`` before they are built (``id``; their
    ``resume="allow"`` default continues it). An id or version the recipe gives is kept."""
    for cls, entry in _classes(loggers):
        if issubclass(cls, WandbLogger):
            if entry.get("init_args") is None:
                entry.init_args = Namespace()
            if entry.init_args.get("id") is None and entry.init_args.get("version") is None:
                entry.init_args.id = run_id
