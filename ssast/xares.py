"""An X-ARES encoder (https://github.com/jimbozhang/xares, arXiv 2505.16369) over any
checkpoint ssast reads:

    SSAST_CHECKPOINT=SSAST-Base-Patch-400.pth python -m xares.run ssast/xares.py tasks/esc50_task.py

``xares.run`` imports this file as a module (``ssast.xares``), takes its one attribute whose
name ends with ``Encoder`` and builds it without arguments, so this module holds no other such
name and :class:`CheckpointEncoder` reads its checkpoint (and, as JSON, its keyword options)
from the environment then.

Its frames are HEAR's timestamp embeddings (:class:`ssast.timestamps.TimestampEmbedder`):
patch columns of the unchanged encoder, evenly spaced ``hop_size_in_ms`` apart (40 ms for
SSAST's patch models, at 4 encoder runs over the audio; 20 ms for its frame models, at one),
over audio of any length, window by window.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ssast.timestamps import TimestampEmbedder

CHECKPOINT_VARIABLE = "SSAST_CHECKPOINT"
OPTIONS_VARIABLE = "SSAST_OPTIONS"


class CheckpointEncoder(TimestampEmbedder):
    """``forward(audio [B, T] at 16 kHz) -> [B, frames, output_dim]`` float32, one frame every
    ``hop_size_in_ms``, for X-ARES.

    ``checkpoint`` is anything :func:`~ssast.checkpoints.load_checkpoint` reads; ``options``
    are :class:`~ssast.timestamps.TimestampEmbedder`'s (``timestamp_hop_ms``, ``layers``,
    ``pooling``, ``precision``, ``tstride`` ...). Built without a checkpoint, as ``xares.run``
    builds it, it reads the path from ``SSAST_CHECKPOINT`` and options from ``SSAST_OPTIONS``
    (a JSON object, e.g. ``{"layers": "all"}``); options given here take precedence.
    """

    def __init__(self, checkpoint: str | Path | None = None, **options: Any) -> None:
        if checkpoint is None:
            checkpoint = os.environ.get(CHECKPOINT_VARIABLE)
            options = {**_environment_options(), **options}
        if not checkpoint:
            raise ValueError(f"CheckpointEncoder needs a checkpoint: pass its path, or set {CHECKPOINT_VARIABLE} "
                             f"(SSAST_CHECKPOINT=model.pth python -m xares.run ssast/xares.py TASK.py)")
        super().__init__(checkpoint, **options)
        self.sampling_rate = self.sample_rate
        self.output_dim = self.embedding_size
        self.hop_size_in_ms = self.hop_ms

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.timestamp_embeddings(audio)[0]


def _environment_options() -> dict[str, Any]:
    text = os.environ.get(OPTIONS_VARIABLE, "").strip()
    if not text:
        return {}
    options = json.loads(text)
    if not isinstance(options, dict):
        raise ValueError(f"{OPTIONS_VARIABLE} must be a JSON object of keyword options, got {text!r}")
    return options
