"""The HEAR 2021 API (https://hearbenchmark.com) over any checkpoint ssast reads.

    hear-validator ssast.hear --model SSAST-Base-Patch-400.pth
    python -m heareval.embeddings.runner ssast.hear --model SSAST-Base-Patch-400.pth --tasks-dir tasks

Scene embeddings are the clip embeddings of :meth:`ssast.embed.Embedder.embed_long`: the mean
of the pooled embeddings of windows of the checkpoint's input length.

Timestamp embeddings keep the encoder's own time resolution: one vector per column of the
patch grid (the patch tokens of that column averaged over frequency), so their hop is the
encoder's time stride, ``tstride`` frames of 10 ms: 160 ms for SSAST's patch models at
stride 16 (100 ms at stride 10), 20 ms for its frame models at stride 2 (10 ms at stride 1).
HEAR recommends 50 ms or less; a patch model can be loaded at a finer stride
(``load_model(path, tstride=4)``: 40 ms), its position embedding interpolated, for about
``16 / tstride`` times the tokens. Windows follow each other by exactly the columns they
hold (``n_time * tstride`` frames), so the columns of consecutive windows tile evenly. A
column's timestamp is the middle of the frames it covers; the columns whose middle lies
past the end of the audio are left out, so the last timestamp is within one hop of the end
and never after it.

Both read the tokens the model's ``layers`` name (:class:`~ssast.embed.Embedder`'s): the final
output by default, ``all`` for the mean of every block's output (``--model-options
'{"layers": "all"}'``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, reduce
from torch import nn

from ssast.audio import SAMPLE_RATE
from ssast.embed import Embedder, Precision, Windowing
from ssast.encoder import Layers, Pooling


@dataclass(frozen=True)
class ColumnWindowing(Windowing):
    """Windows for timestamp embeddings. Each holds ``columns`` patch columns, ``column_hop``
    samples apart, and the next starts where its columns stop (``hop = columns *
    column_hop``), so that the columns of all windows are evenly spaced. There are as many
    windows as it takes to hold every column whose middle (``column_middle`` samples after
    its start) is inside the clip, and at least one column."""

    columns: int = 1
    column_hop: int = 1
    column_middle: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hop != self.columns * self.column_hop:
            raise ValueError(f"windows must follow each other by their {self.columns} columns, got hop {self.hop}")

    def num_columns(self, num_samples: int) -> int:
        return max(1, math.floor((num_samples - self.column_middle) / self.column_hop) + 1)

    def count(self, num_samples: int) -> int:
        return -(-self.num_columns(num_samples) // self.columns)

    def timestamps(self, num_samples: int) -> torch.Tensor:
        """The middle of each column, in ms, ``[num_columns]`` float64."""
        columns = torch.arange(self.num_columns(num_samples), dtype=torch.float64)
        return 1000 * (columns * self.column_hop + self.column_middle) / self.rate


class HearModel(nn.Module):
    """An :class:`~ssast.embed.Embedder` as the ``torch.nn.Module`` HEAR's tools load, move
    with ``.to(device)`` and pass back to :func:`get_scene_embeddings` and
    :func:`get_timestamp_embeddings`. It computes on the device it was moved to and returns
    on the device of the audio."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder
        self.encoder = embedder.encoder  # a submodule, so that .to() moves it, and the embedder with it
        config = embedder.encoder.config
        self.scene_embedding_size = int(config.embed_dim)
        self.timestamp_embedding_size = int(config.embed_dim)
        shift, frame = embedder.fbank.window_shift, embedder.fbank.window_size
        n_time = config.grid[1]
        # Column g covers frames g * tstride ... g * tstride + tshape - 1: from the start of
        # the first to the end of the last, in samples.
        self.columns = ColumnWindowing(
            embedder.window_samples, n_time * config.tstride * shift, columns=n_time,
            column_hop=config.tstride * shift, column_middle=((config.tshape - 1) * shift + frame) / 2,
        )

    @property
    def hop_ms(self) -> float:
        """Milliseconds between timestamps."""
        return 1000 * self.columns.column_hop / self.sample_rate

    def column_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder output ``[B, lead + N, D]`` -> one embedding per patch column ``[B, n_time, D]``."""
        n_freq = self.encoder.grid[0]
        return reduce(self.encoder.patch_tokens(tokens), "b (f t) d -> b t d", "mean", f=n_freq)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Scene embeddings (see :func:`get_scene_embeddings`)."""
        return get_scene_embeddings(audio, self)


def load_model(
    model_file_path: str = "",
    *,
    pooling: Pooling | None = None,
    layers: Layers = "last",
    precision: Precision | None = None,
    **overrides: Any,
) -> HearModel:
    """The HEAR model of a checkpoint file or Hugging Face folder (any ``ssast.load_checkpoint``
    reads), on the CPU. ``pooling``, ``layers`` and ``precision`` are :class:`~ssast.embed.Embedder`'s;
    ``overrides`` (``tstride``, ``fstride``, ``input_tdim``) go to ``load_checkpoint``: with
    heareval, ``--model-options '{"tstride": 4}'``."""
    if not model_file_path:
        raise ValueError("ssast.hear has no default weights: pass a checkpoint "
                         "(hear-validator ssast.hear --model PATH)")
    return HearModel(Embedder(model_file_path, pooling=pooling, layers=layers, precision=precision, **overrides))


def _rows(audio: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    if audio.dim() != 2:
        raise ValueError(f"audio must be [clips, samples] at {SAMPLE_RATE} Hz, got shape {list(audio.shape)}")
    return list(enumerate(audio))


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``audio [n, samples]`` at 16 kHz -> ``[n, scene_embedding_size]`` float32."""
    clips = [result.clip for _, result in model.embedder.embed_many(_rows(audio))]
    return torch.stack(clips).float().to(audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio [n, samples]`` at 16 kHz -> embeddings ``[n, T, timestamp_embedding_size]``
    float32 and their timestamps ``[n, T]`` in milliseconds (see the module docstring)."""
    timestamps = model.columns.timestamps(audio.shape[-1])
    clips = model.embedder.map_windows(_rows(audio), model.column_embeddings, model.columns)
    embeddings = torch.stack([rearrange(columns, "w t d -> (w t) d")[: len(timestamps)] for _, columns, _ in clips])
    return embeddings.float().to(audio.device), timestamps.expand(len(audio), -1).to(audio.device)
