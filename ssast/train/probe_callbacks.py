"""Probes during pretraining: does the encoder learn anything a label would reward?

:class:`ProbeMonitor` embeds small labeled train/test sets with the frozen encoder that
transfers (``pl_module.exported_encoder``) at the start of training (the untrained
encoder: the floor to gain from), every ``every_n_steps`` steps (or ``every_minutes``) and
at the end, and logs the accuracy of a kNN vote and of a linear probe on them (see
:mod:`ssast.probe`) as ``probe/<task>/knn`` and ``probe/<task>/linear``, with
``probe/minutes``, the training time so far with the probes left out (a dashboard's x-axis
for learning per minute). It keeps that history, and writes it to ``probes.json`` in the
run folder, for pictures of learning per minute. ``layers`` chooses the tokens the clip
embeddings pool: the final output (``last``, the default), the mean of every block's output
(``all``, as SSAST's SUPERB figures read the encoder, keeping more of what lower blocks hold,
such as the speaker) or one block's.
:class:`TrainingBudget` stops a fit after so many minutes of that same time.

In a recipe::

    trainer:
      callbacks:
        - class_path: ssast.train.probe_callbacks.ProbeMonitor
          init_args:
            every_n_steps: 100
            layers: all          # optional: last (default), all, or a block number
            tasks:
              - {name: keywords, train: demo_data/keywords/train, test: demo_data/keywords/test}
              - {name: esc50, train: [data/esc50/fold2, data/esc50/fold3], test: data/esc50/fold1}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L

from ssast.data.shards import find_beside
from ssast.embed import Precision, check_layers, check_precision
from ssast.encoder import Layers
from ssast.files import written_atomically
from ssast.probe import DEFAULT_L2, LabeledClips, load_clips, probe
from ssast.renamed import refuse_renamed
from ssast.train.callbacks import RunRecord
from ssast.train.module import log_line_chart

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTask:
    """A labeled train/test pair to probe on (single-label classes).

    Args:
        name: the name in the logged keys (``probe/<name>/knn``).
        train: shards the probes learn from: a folder, a webdataset pattern, or a list.
        test: shards they are scored on.
        target_length: frames read per clip; ``None``: the encoder's input length. Clips
            are padded or cut to the encoder's input length in any case.
        classes: ``classes.txt``; ``"auto"``: beside the training shards or one folder up,
            as :class:`~ssast.train.datamodule.AudioDataModule` finds it.
        stats: the normalization: a ``stats.json``, ``audioset``/``esc50``/``speechcommands``,
            or ``"auto"``: ``stats.json`` found like ``classes`` (else the AudioSet stats).
        layers: this task's layers, when they differ from the monitor's ``layers`` (a
            speaker task read as SUPERB reads it: ``all``).
    """

    name: str
    train: str | list[str]
    test: str | list[str]
    target_length: int | None = None
    classes: str = "auto"
    stats: str = "auto"
    layers: Layers | None = None

    def resolve(self, name: str) -> str | None:
        """The path of ``classes`` or ``stats`` with ``"auto"`` looked up beside the shards."""
        value = getattr(self, name)
        if value != "auto":
            return value
        first = self.train if isinstance(self.train, str) else self.train[0]
        found = find_beside(first, f"{name}.txt" if name == "classes" else f"{name}.json")
        return str(found) if found is not None else None


class ProbePoint(NamedTuple):
    """One probe of one task: the optimizer ``step``, the ``seconds`` of training since the
    fit started (time spent probing left out), and the two accuracies."""

    step: int
    seconds: float
    knn: float
    linear: float


class ProbeMonitor(RunRecord):
    """Logs kNN and linear-probe accuracy of the frozen exported encoder on labeled tasks
    during training (see the module docstring).

    Only global rank 0 reads the clips (once, at the start, kept in memory), embeds them and
    logs; the other ranks go on and wait for it at their next collective. No collective is
    used, so no rank can hang on another's probe; for the same reason the accuracies go to
    the loggers only, not to ``trainer.callback_metrics`` (a checkpoint callback monitoring a
    value only rank 0 has would hang a multi-GPU run). The encoder is put in eval mode for the
    probe and back in its mode afterwards; no gradient is computed (sharded strategies such
    as FSDP, whose rank 0 holds only part of the weights, are not supported).

    Args:
        tasks: the labeled sets (:class:`ProbeTask`).
        every_n_steps: probe every this many optimizer steps (0: not by steps).
        every_minutes: also probe whenever this many minutes of training (probes left out)
            passed since the last probe (``None``: not by time); equal times across methods
            whose steps take different times.
        max_clips: at most this many clips of each train and each test set (the first ones).
        k: neighbours of the kNN vote.
        l2: the linear probe's penalty on its weights.
        layers: the tokens the clip embeddings pool (the mean of the patch tokens): ``last``,
            the encoder's final output; ``all``, the mean of every block's output (SUPERB's
            ``hidden_states`` with equal weights); ``k``, block ``k``'s output (from 1; checked
            against the encoder's depth when the fit starts).
        batch_size: clips per forward pass of the encoder.
        precision: ``bf16`` (bf16 autocast for the encoder) or ``fp32``; ``None``: bf16 on CUDA
            only.
        at_start: probe the untrained encoder before the first step.
        history_file: where the history is written as JSON after every probe (relative
            paths are under the trainer's ``default_root_dir``; ``None``: nowhere).
        progress: show progress bars while reading and embedding.
        bf16: the old name of ``precision``: giving it (a recipe's ``bf16:`` too) is an error
            that says so.

    Attributes:
        history: ``{task: [ProbePoint(step, seconds, knn, linear), ...]}``, on rank 0.
        probe_seconds: time spent probing (reading clips included), on rank 0.
    """

    def __init__(
        self,
        tasks: list[ProbeTask],
        every_n_steps: int = 500,
        every_minutes: float | None = None,
        max_clips: int = 1000,
        k: int = 20,
        l2: float = DEFAULT_L2,
        layers: Layers = "last",
        batch_size: int = 64,
        precision: Precision | None = None,
        at_start: bool = True,
        history_file: str | None = "probes.json",
        progress: bool = False,
        *,
        bf16: bool | None = None,
    ) -> None:
        refuse_renamed("ProbeMonitor", "bf16", "precision", bf16)
        tasks = [ProbeTask(**task) if isinstance(task, dict) else task for task in tasks]
        if not tasks:
            raise ValueError("ProbeMonitor needs at least one task")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"ProbeMonitor task names must differ, got {names}")
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be 0 (off) or positive, got {every_n_steps}")
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"every_minutes must be positive, got {every_minutes}")
        self.tasks = tasks
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self.max_clips = max_clips
        self.k = k
        self.l2 = l2
        self.layers: Layers = check_layers(layers)
        self.batch_size = batch_size
        self.precision = check_precision(precision)
        self.at_start = at_start
        self.history_file = history_file
        self.progress = progress
        self.clock: Callable[[], float] = time.perf_counter  # seconds; a test may put a fake clock here
        self.history: dict[str, list[ProbePoint]] = {task.name: [] for task in self.tasks}
        self.probe_seconds = 0.0
        self._clips: dict[str, tuple[LabeledClips, LabeledClips]] = {}
        self._fit_start = 0.0
        self._offset = 0.0  # training seconds of the runs this one resumes
        self._last_step = -1
        self._last_probe_at = 0.0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=[task.name for task in self.tasks])

    # --- the clock ------------------------------------------------------------------------

    def training_seconds(self) -> float:
        """Seconds since the fit started, time spent probing left out (continuing a resumed
        run's count)."""
        return self._offset + self.clock() - self._fit_start - self.probe_seconds

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for layers in (self.layers, *(task.layers for task in self.tasks if task.layers is not None)):
            check_layers(layers, pl_module.exported_encoder.config.depth)  # a block past the last: stop now
        self._fit_start = self.clock()
        self.probe_seconds = 0.0
        self._last_probe_at = self._offset

    # --- when ------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return  # a batch that only accumulated gradients, or a rank that does not probe
        by_steps = self.every_n_steps and step % self.every_n_steps == 0
        by_time = self.every_minutes is not None and (
            self.training_seconds() - self._last_probe_at >= 60 * self.every_minutes)
        if by_steps or by_time:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.run(trainer, pl_module)
        if trainer.is_global_zero:  # the history, drawn against minutes (the scalars are logged by step)
            for task, points in self.history.items():
                log_line_chart(pl_module, f"probe/{task}/learning",
                               {"linear probe": [(point.seconds / 60, point.linear) for point in points],
                                "kNN": [(point.seconds / 60, point.knn) for point in points]},
                               title=f"{task}: probe accuracy", x_label="pretraining minutes")

    # --- what ------------------------------------------------------------------------------

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Probe every task now (on global rank 0; elsewhere nothing) and log the
        accuracies at the current step; returns them by logged name."""
        if not trainer.is_global_zero:
            return {}
        started = self.clock()
        seconds = self.training_seconds()
        step = trainer.global_step
        self._last_step, self._last_probe_at = step, seconds
        metrics: dict[str, float] = {"probe/minutes": seconds / 60}
        try:
            for task in self.tasks:
                train, test = self._task_clips(task, pl_module.exported_encoder.config.input_tdim)
                layers = task.layers if task.layers is not None else self.layers
                result = probe(pl_module.exported_encoder, train, test, k=self.k, l2=self.l2, layers=layers,
                               batch_size=self.batch_size, precision=self.precision)
                self.history[task.name].append(ProbePoint(step, seconds, result["knn"], result["linear"]))
                metrics[f"probe/{task.name}/knn"] = result["knn"]
                metrics[f"probe/{task.name}/linear"] = result["linear"]
        finally:
            self.probe_seconds += self.clock() - started
        self._write_history(trainer)
        for logger in trainer.loggers:
            # Straight to the loggers: self.log cannot log at step 0 (on_train_start) nor at
            # the end (on_train_end), and from rank 0 alone it must not sync.
            logger.log_metrics(metrics, step=step)
        log.info("step %d probes (%.1f s): %s", step, self.clock() - started,
                 ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()))
        return metrics

    def history_json(self) -> dict[str, Any]:
        """The history as plain values: per task, its clip counts and its probes."""
        return {
            "tasks": {
                task.name: {
                    "train_clips": len(self._clips[task.name][0]) if task.name in self._clips else None,
                    "test_clips": len(self._clips[task.name][1]) if task.name in self._clips else None,
                    "probes": [point._asdict() for point in self.history[task.name]],
                }
                for task in self.tasks
            },
            "probe_seconds": self.probe_seconds,
        }

    def _write_history(self, trainer: L.Trainer) -> None:
        if self.history_file is None:
            return
        path = Path(self.history_file)
        path = path if path.is_absolute() else Path(trainer.default_root_dir) / path
        with written_atomically(path) as partial:  # a report reading it mid-run finds it whole
            partial.write_text(json.dumps(self.history_json(), indent=1))

    def _task_clips(self, task: ProbeTask, input_tdim: int) -> tuple[LabeledClips, LabeledClips]:
        """The task's train and test clips, read on first use and kept."""
        if task.name not in self._clips:
            classes = task.resolve("classes")
            if classes is None:
                raise FileNotFoundError(f"probe task {task.name!r}: classes='auto' but there is no classes.txt beside "
                                        f"{task.train}; give its path as the task's classes")
            stats = task.resolve("stats")
            if stats is None:
                log.warning("probe task %r: no stats.json beside %s: normalizing with the AudioSet stats",
                            task.name, task.train)
            options = dict(classes=classes, target_length=task.target_length or input_tdim,
                           max_clips=self.max_clips, progress=self.progress)
            train = load_clips(task.train, stats=stats, **options)
            test = load_clips(task.test, stats=train.normalize, **options)
            self._clips[task.name] = (train, test)
        return self._clips[task.name]

    # --- resuming --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": {name: [list(point) for point in points] for name, points in self.history.items()},
            "training_seconds": self.training_seconds(),
        }

    def restore(self, state_dict: dict[str, Any]) -> None:
        for name, points in state_dict.get("history", {}).items():
            self.history[name] = [ProbePoint(int(step), *map(float, rest)) for step, *rest in points]
        self._offset = float(state_dict.get("training_seconds", 0.0))
        # A resumed run does not probe the step it resumes at a second time.
        steps = [points[-1].step for points in self.history.values() if points]
        self._last_step = max(steps, default=-1)


class TrainingBudget(RunRecord):
    """Stops a fit after ``minutes`` of training wall-clock time, not counting the time the
    run's :class:`ProbeMonitor` callbacks spent probing: equal budgets for methods compared
    by learning per minute (Lightning's ``max_time`` would count the probes).

    The decision is global rank 0's, broadcast to the others every step (one small
    collective), so that all ranks stop at the same step. The seconds spent are kept in
    checkpoints, so a resumed run continues the same budget.

    Args:
        minutes: the training time allowed.
    """

    def __init__(self, minutes: float) -> None:
        if minutes <= 0:
            raise ValueError(f"minutes must be positive, got {minutes}")
        self.minutes = minutes
        self.clock: Callable[[], float] = time.perf_counter  # seconds; a test may put a fake clock here
        self._monitors: list[ProbeMonitor] = []
        self._fit_start = 0.0
        self._offset = 0.0  # training seconds of the runs this one resumes
        self._last_step = -1
        self.timeline: list[tuple[int, float]] = []  # (optimizer steps done, training seconds) after each step

    def elapsed_seconds(self) -> float:
        """Training seconds so far, probes left out (continuing a resumed run's count)."""
        probing = sum(monitor.probe_seconds for monitor in self._monitors)  # this fit's, as the clock's
        return self._offset + self.clock() - self._fit_start - probing

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._monitors = [callback for callback in trainer.callbacks if isinstance(callback, ProbeMonitor)]
        self._fit_start = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # a batch that only accumulated gradients
        self._last_step = trainer.global_step
        elapsed = self.elapsed_seconds()
        self.timeline.append((trainer.global_step, elapsed))
        if len(self.timeline) > 2048:  # a long run keeps every other point: enough to time its second half
            self.timeline = self.timeline[::2]
        due = elapsed >= 60 * self.minutes
        if trainer.strategy.broadcast(due, src=0):
            trainer.should_stop = True

    def steps_per_minute(self) -> float | None:
        """The pace of this fit's second half (its start, which loads data and warms caches,
        left out); ``None`` before it took four optimizer steps."""
        if len(self.timeline) < 4:
            return None
        (first_step, first_seconds), (last_step, last_seconds) = self.timeline[len(self.timeline) // 2], self.timeline[-1]
        return 60 * (last_step - first_step) / max(last_seconds - first_seconds, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        return {"training_seconds": self.elapsed_seconds()}

    def restore(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict["training_seconds"])
