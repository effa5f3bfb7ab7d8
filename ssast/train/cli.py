"""What both ssast training programs (``ssast-pretrain``, ``ssast-finetune``) stand on: a
LightningCLI that survives killed nodes and reports the user's mistakes in one line.

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

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
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ssast.checkpoints import CheckpointError
from ssast.data.reader import NoReadableShards, TooManySkipped
from ssast.train.module import NonFiniteLossError
from ssast.train.recovery import (
    ResumeError, check_resumable, install_recovery, last_checkpoint, read_resumable,
    resume_wandb_run,
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
    newest ``last.ckpt`` of the run folder and starts afresh when there is none yet, so a job
    script can pass it on its first start and on every restart alike.
    """

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the model's hyperparameters from --ckpt_path here, while parsing:
        # the file is checked first, so a bad one is one clear line, not a traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "last", "best", "hpc"):
            read_resumable(ckpt_path)
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_recovery(trainer)
        return trainer

    def fit(self, model: L.LightningModule, **kwargs: Any) -> None:
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path == "last":
            # Resolved here, once, so the W&B run and the weights come from the same file.
            kwargs["ckpt_path"] = ckpt_path = last_checkpoint(self.trainer)
            if ckpt_path is None:
                log.warning("--ckpt_path last: no last checkpoint in %s yet; starting from scratch",
                            self.trainer.default_root_dir)
        if ckpt_path:
            check_resumable(model, ckpt_path)
            resume_wandb_run(self.trainer, ckpt_path)
        self.trainer.fit(model, **kwargs)

    # A checkpoint handed to the other subcommands is checked as early as fit's.
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
