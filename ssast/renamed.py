"""Options that were renamed: refused under their old names, in one line that names the new one.

Recipe keys and values (what the training programs parse) are listed in :data:`RENAMED`, per
program, and :func:`explain` turns the parser's error about an old one into that line; the
signatures carry only the new names. A Python function that renamed a keyword keeps the old
one defaulting to ``None`` and hands it to :func:`refuse_renamed` first. The training programs
exit with these lines (``ssast.train.cli``).
"""

from __future__ import annotations

import re

_PROBE_CALLBACKS = {f"ssast.train.probe.{name}": f"ssast.train.probe_callbacks.{name}"
                    for name in ("ProbeMonitor", "TrainingBudget")}

# Per program: an old option name -> the new one; "key: old value" -> the new value; an old class path -> the new one.
RENAMED: dict[str, dict[str, str]] = {
    "ssast-pretrain": {
        # Each method's optimization is one options object (pretrain.optimization.Optimization).
        **{name: f"optimization.{name}" for name in (
            "optimizer", "lr", "lr_batch_size", "betas", "weight_decay", "weight_decay_end", "decay_norms_and_biases",
            "gradient_clip_per_tensor", "schedule", "warmup_steps", "warmup_every", "min_lr", "plateau_factor",
            "plateau_patience")},
        "schedule: cosine": "warmup_cosine",
        "cls_dim": "cls_prototypes",
        "patch_dim": "patch_prototypes",
        "teacher_temp_warmup_steps": "teacher_temp_warmup_epochs (30 epochs: the paper's)",
        "momentum": "ema_decay",
        "cls_loss": "utterance_weight",
        "pretrain.distill.ASiT": "pretrain.asit.ASiT",
        **_PROBE_CALLBACKS,
    },
    "ssast-finetune": {
        "decay_start": "lr_decay_start",
        "decay_every": "lr_decay_every",
        "decay_factor": "lr_decay_factor",
        "head_lr": "head_lr_scale",
        "schedule: cosine": "fairseq_cosine",
        **_PROBE_CALLBACKS,
    },
}
_OPTION = re.compile(r"(?:Option '(?:[\w.]*\.)?(\w+)' is not accepted|does not accept option '(?:[\w.]*\.)?(\w+)'|"
                     r"unrecognized arguments: --[\w.]*?\b(\w+)\b(?:[ =]|$))")


class RenamedOptionError(TypeError):
    """An option given under a name it no longer has."""


def explain(message: str, program: str) -> str | None:
    """The one line for a parser error ``message`` of ``program`` (``ssast-pretrain``,
    ``ssast-finetune``) about an option, value or class path that was renamed, or ``None``."""
    renamed = next((table for name, table in RENAMED.items() if program.startswith(name)), {})
    if re.search(r"data\.init_args|Group 'data' does not accept option 'init_args", message):
        return ("data.init_args was removed: the data's options sit under data itself (data.train, "
                "data.batch_size), as in the finetuning recipes")
    for match in _OPTION.finditer(message):
        old = next(group for group in match.groups() if group)
        if old in renamed:
            return f"{old} was renamed {renamed[old]}; set {renamed[old].split(' ')[0]} instead"
    for old, new in renamed.items():
        if ": " in old:  # a value
            key, value = old.split(": ")
            if re.search(rf"\b{key}\b.*Got value: {re.escape(value)}\b", message, re.S):
                return f"{key} {value} was renamed {new}; set {key}: {new} instead"
        elif "." in old and old in message:  # a class path
            return f"{old} was renamed {new}; set {new} instead"
    return None


def refuse_renamed(owner: str, old: str, new: str, value: object) -> None:
    """Raise :class:`RenamedOptionError` when ``old``, the former name of ``new``, was given
    (``value`` is not ``None``) to ``owner``."""
    if value is not None:
        raise RenamedOptionError(f"{owner}: {old} was renamed {new}; set {new} instead")
