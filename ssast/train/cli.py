"""What both ssast training programs (``ssast-pretrain``, ``ssast-finetune``) stand on: a
LightningCLI that survives killed nodes and reports the user's mistakes in one line.

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ssast.checkpoints import CheckpointError
from ssast.data.skips import NoReadableShards, TooManySkipped
from ssast.renamed import RenamedOptionError, explain
from ssast.train.callbacks import LastCheckpoint
from ssast.train.module import NonFiniteLossError
from ssast.train.ranks import DEFAULT_COLLECTIVE_TIMEOUT_MINUTES, RankTable, lost_rank_message, with_collective_timeout
from ssast.train.recovery import (
    DiskFullError, ResumeError, check_resumable, install_recovery, last_checkpoint, read_resumable, wandb_run_id,
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
class BatchSplitError(ValueError):
    """A recipe's global batch that the run's devices cannot share evenly."""


class SettingError(ValueError):
    """A setting that the class it configures refused as the run was built (the message
    names it)."""


USER_ERRORS: tuple[type[Exception], ...] = (
    CheckpointError, ResumeError, NonFiniteLossError, TooManySkipped, NoReadableShards, FileNotFoundError,
    FileExistsError, BatchSplitError, RenamedOptionError, SettingError, DiskFullError,
)


def run_program(program: str, run: Callable[[], object]) -> None:
    """Runs ``run``; a :data:`USER_ERRORS` error exits with ``program: error: ...``, also one
    that a class raised while jsonargparse built it (jsonargparse raises its own error from it)."""
    try:
        run()
    except Exception as error:
        if (lost := lost_rank_message(error)) is not None and not os.environ.get("SSAST_TRACEBACK"):
            sys.exit(f"{program}: error: {lost}")
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, USER_ERRORS):
            cause = cause.__cause__
        if cause is None or os.environ.get("SSAST_TRACEBACK"):
            raise
        sys.exit(f"{program}: error: {cause}")


class ConciseParser(LightningArgumentParser):
    """Reports a bad option or value in one line that names the key, the class it belongs
    to and what was wrong, instead of the usage of every option and jsonargparse's nested
    union report. An option is only known by its whole name: argparse's abbreviations would
    take an old name for the new one it starts (``head_lr`` for ``head_lr_scale``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        program = self.prog.replace(" [options]", "")
        if renamed := explain(message, program):
            sys.exit(f"{program}: error: {renamed}")
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
    given = next((line.removeprefix("Given value: ") for line in lines if line.startswith("Given value: ")), None)
    if given is not None and "Got value" not in reason:  # a union's errors name no value; its report does
        reason = f"{reason}. Got value: {given}"
    owner = f" ({classes[0]})" if classes else ""
    return f"{'.'.join(keys)}{owner}: {reason}"


def stage_parser_kwargs(program: str, base: Path | None, subcommands: bool) -> dict[str, Any]:
    """LightningCLI's ``parser_kwargs`` for a program whose recipes compose on ``base``: the
    base is a default config file of every subcommand, read before any ``--config``."""
    files = [str(base)] if base is not None else []
    if not subcommands:
        return {"prog": program, "default_config_files": files}
    return {"prog": program, **{name: {"default_config_files": files} for name in ("fit", "validate", "test", "predict")}}


def split_global_batch(global_batch: int, devices: int, max_device_batch: int | None = None) -> tuple[int, int]:
    """``(clips per device and batch, batches accumulated per optimizer step)`` that make
    ``global_batch`` clips per step on ``devices`` devices, with at most ``max_device_batch``
    clips on a device at once (then the fewest accumulated batches that divide evenly)."""
    if global_batch < 1 or devices < 1:
        raise BatchSplitError(f"a global batch of {global_batch} clips on {devices} devices")
    if global_batch % devices:
        raise BatchSplitError(f"global_batch_size {global_batch} does not divide among {devices} devices: choose a device "
                         "count that divides it, or another global batch")
    if max_device_batch is not None and max_device_batch < 1:
        raise BatchSplitError(f"max_device_batch_size must be at least 1, got {max_device_batch}")
    per_device = global_batch // devices
    limit = max_device_batch or per_device
    accumulate = next(k for k in range(1, per_device + 1) if per_device % k == 0 and per_device // k <= limit)
    return per_device // accumulate, accumulate


def device_count(trainer: Namespace) -> int:
    """The devices a parsed ``trainer`` config runs on, over all nodes, as Lightning counts
    them: a number, a list of ids, or ``auto`` / -1 (every visible GPU, else one CPU process)."""
    devices, nodes = trainer.get("devices", "auto"), int(trainer.get("num_nodes") or 1)
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([item for item in devices.split(",") if item.strip()])
    elif str(devices) in ("auto", "-1"):
        gpus = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpus else 1
    else:
        count = int(devices)
    return count * nodes


class RunCLI(LightningCLI):
    """LightningCLI with what both ssast programs need to survive a killed node: checkpoints
    written atomically and recording their W&B run (:func:`~ssast.train.recovery.install_recovery`),
    and ``fit --ckpt_path`` continuing that W&B run. ``--ckpt_path last`` resumes from the
    newest of ``last.ckpt`` and SLURM's requeue checkpoints
    (:func:`~ssast.train.recovery.last_checkpoint`) and starts afresh when there is none yet,
    so a job script can pass it on its first start and on every restart alike.

    Recipes compose (see :func:`stage_parser_kwargs`): the run is named after the last
    ``--config`` file, ``runs/<name>`` and the logger's run ``<name>``, unless the recipe or
    the command line names them. ``global_batch_size`` states a recipe's clips per optimizer
    step; the clips per device (``data.batch_size``) and the accumulated batches follow from
    the devices and nodes at start, and are logged in one line.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--global_batch_size", type=int | None, default=None,
                            help="clips per optimizer step over every device and node (the paper's batch); sets "
                                 "data.batch_size and trainer.accumulate_grad_batches at start")
        parser.add_argument("--max_device_batch_size", type=int | None, default=None,
                            help="with global_batch_size: at most this many clips on a device at once (the rest "
                                 "is accumulated)")
        parser.add_argument("--collective_timeout_minutes", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_MINUTES,
                            help="on several processes: how long a rank waits for the others at a collective before "
                                 "the run stops naming the rank it lost (ssast.train.ranks)")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Lightning reads the model's hyperparameters from --ckpt_path right after parsing:
        # the file is checked first, so a bad one is one clear line, not a traceback.
        ckpt_path = self._command_config().get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            read_resumable(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self._command_config()
        self._name_run(config)
        self._split_batch(config)
        _drop_lr_monitor_without_logger(config.trainer)
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

    def _name_run(self, config: Namespace) -> None:
        files = [Path(str(path)) for path in config.get("config") or []]
        if files:
            name_run(config, files[-1].stem)

    def _split_batch(self, config: Namespace) -> None:
        settings = split_batch(config)
        if settings is not None:
            rank_zero_only(print)(settings, flush=True)  # once, not once per process

    def instantiate_classes(self) -> None:
        # The classes check their settings as they are built, before any data is read: what
        # they refuse is the user's to fix, so it is one line, not jsonargparse's traceback.
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error, USER_ERRORS) or os.environ.get("SSAST_TRACEBACK"):
                raise
            raise SettingError(_innermost(error)) from error

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._command_config()
        subcommand = self.config.get("subcommand")
        built = (self.config_init[subcommand] if subcommand else self.config_init).get("trainer") or {}
        strategy = built.get("strategy", "auto")
        if strategy == "auto" and device_count(config.trainer) > 1:
            strategy = "ddp"  # what Lightning picks for several devices, here with the timeout
        kwargs.setdefault("strategy", with_collective_timeout(strategy, config.collective_timeout_minutes))
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(RankTable())
        install_recovery(trainer)
        return trainer

    # A checkpoint is checked against the model before Lightning builds the data loaders.
    def fit(self, model: L.LightningModule, **kwargs: Any) -> None:
        self.trainer.fit(model, **self._checked(model, kwargs, resuming=True))

    def validate(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.validate(model, **self._checked(model, kwargs))

    def test(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.test(model, **self._checked(model, kwargs))

    def predict(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.predict(model, **self._checked(model, kwargs))

    @staticmethod
    def _checked(model: L.LightningModule, kwargs: dict[str, Any], resuming: bool = False) -> dict[str, Any]:
        """``kwargs`` of a Trainer method, its checkpoint checked (a fit's also for settings it
        cannot change: ``resuming``)."""
        if kwargs.get("ckpt_path") not in (None, "last", "best", "hpc"):
            check_resumable(model, kwargs["ckpt_path"], kwargs.get("datamodule"), resuming)
        # Lightning loads a checkpoint as ours are loaded: tensors and plain values only.
        return {**kwargs, "weights_only": True if kwargs.get("weights_only") is None else kwargs["weights_only"]}


def _innermost(error: BaseException) -> str:
    """The message of the first exception in ``error``'s chain (what the class raised,
    not how jsonargparse or Lightning passed it on)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _drop_lr_monitor_without_logger(trainer: Namespace) -> None:
    """``trainer.logger: false`` (a quick try, a test): the recipes' ``LearningRateMonitor``,
    which Lightning refuses without a logger, goes with it."""
    callbacks = trainer.get("callbacks")
    if trainer.get("logger") is not False or not isinstance(callbacks, list):
        return
    monitors = [entry for cls, entry in _classes(callbacks) if issubclass(cls, LearningRateMonitor)]
    if monitors:
        rank_zero_only(log.info)("trainer.logger is false: the learning-rate monitor is left out with it")
        trainer.callbacks = [entry for entry in callbacks if not any(entry is monitor for monitor in monitors)]


def name_run(config: Namespace, name: str) -> None:
    """Name a parsed run ``name`` where the recipe leaves it unnamed: ``runs/<name>`` as the
    trainer's ``default_root_dir``, each logger's run name (where it is its class's default:
    W&B's none, CSV's and TensorBoard's ``lightning_logs``), and a W&B logger's folder."""
    trainer = config.trainer
    if not trainer.get("default_root_dir"):
        trainer.default_root_dir = f"runs/{name}"
    for cls, entry in _classes(trainer.get("logger")):
        parameters = inspect.signature(cls.__init__).parameters
        if "name" not in parameters:
            continue
        if entry.get("init_args") is None:
            entry.init_args = Namespace()
        if entry.init_args.get("name") in (None, parameters["name"].default):
            entry.init_args.name = name
        if issubclass(cls, WandbLogger) and entry.init_args.get("save_dir") in (None, "."):
            entry.init_args.save_dir = trainer.default_root_dir


def split_batch(config: Namespace) -> str | None:
    """Set a parsed run's clips per device (``data.batch_size``) and accumulated batches from
    its ``global_batch_size`` and its devices (:func:`split_global_batch`); returns the line
    that says so (``None`` without a global batch). A ``data.batch_size`` given explicitly
    wins."""
    global_batch = config.get("global_batch_size")
    if global_batch is None:
        return None
    data = config.data
    if data.get("batch_size") is not None:  # asked for on the command line or in a later file
        return f"data.batch_size {data.batch_size} per device, as given: global_batch_size {global_batch} is not applied"
    devices = device_count(config.trainer)
    per_device, accumulate = split_global_batch(global_batch, devices, config.get("max_device_batch_size"))
    data.batch_size = per_device
    config.trainer.accumulate_grad_batches = accumulate
    return (f"global batch {global_batch} = {devices} device(s) x {per_device} clips x {accumulate} accumulated "
            "batch(es) per optimizer step")


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
