"""Embeddings evenly spaced in time, at most 50 ms apart, from any checkpoint: what the
benchmarks read, HEAR's timestamp embeddings (:mod:`ssast.hear`) and X-ARES's frames
(:mod:`ssast.xares`), both thin adapters over :class:`TimestampEmbedder`.

The finest time resolution an encoder has is a column of its patch grid: the patch tokens of
one column averaged over frequency, one vector every ``tstride`` frames of 10 ms (160 ms for
SSAST's patch models at stride 16, 100 ms at stride 10, 20 ms for its frame models at stride
2). The benchmarks ask for finer: HEAR's validator warns above 50 ms. A finer stride would
change the encoder (a position embedding interpolated to a grid it never saw), so instead
the encoder runs over the audio in ``passes`` phases, phase ``k`` reading the audio from
``k * sub_hop`` samples on (``sub_hop = tstride / passes`` frames), and the columns of the
phases are interleaved into one sequence ``sub_hop`` apart: every vector is exactly what the
unchanged encoder gives for the audio at that position. ``passes`` is the smallest divisor
of ``tstride`` whose sub-hop is at most ``timestamp_hop_ms`` (50 ms by default):

=======================  ======  ==========  ======
checkpoint               stride  passes      hop
=======================  ======  ==========  ======
patch, pretrained        16      4           40 ms
patch, finetuned (AST)   10      2           50 ms
frame, pretrained        2       1           20 ms
=======================  ======  ==========  ======

The cost is ``passes`` encoder runs over the audio (4x for SSAST's patch models);
``timestamp_hop_ms=None`` gives the encoder's own column hop at the cost of one run. Scene
(clip) embeddings are the :class:`~ssast.embed.Embedder`'s and cost one run whatever the hop.

Within a phase, windows follow each other by exactly the columns they hold (``n_time *
tstride`` frames), so the columns of consecutive windows tile evenly (:class:`ColumnWindowing`).
A column's timestamp is the middle of the frames it covers (87.5 ms for the first column of a
16-frame patch); columns whose middle lies past the end of the audio are left out, so the last
timestamp is within one hop of the end and never after it (a clip shorter than its first
column's middle keeps that one column). Windows are cut and batched by
:meth:`Embedder.map_windows <ssast.embed.Embedder.map_windows>`: the encoder holds one batch of
windows at a time however long the audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, reduce
from torch import nn

from ssast.audio import SAMPLE_RATE
from ssast.checkpoints import Checkpoint
from ssast.embed import Embedder, Precision
from ssast.windows import Windowing
from ssast.encoder import Layers, Pooling

DEFAULT_HOP_MS = 50.0  # HEAR's validator warns above it


@dataclass(frozen=True)
class ColumnWindowing(Windowing):
    """Windows for column embeddings. Each holds ``columns`` patch columns, ``column_hop``
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


def count_passes(tstride: int, frame_shift: int, hop_ms: float | None, rate: int = SAMPLE_RATE) -> int:
    """The fewest phases (a divisor of ``tstride``) whose columns interleave at most ``hop_ms``
    apart, ``tstride / passes`` frames of ``frame_shift`` samples; 1 for ``None``."""
    if hop_ms is None:
        return 1
    for passes in range(1, tstride + 1):
        sub_hop = tstride // passes * frame_shift
        if tstride % passes == 0 and 1000 * sub_hop <= hop_ms * rate:
            return passes
    raise ValueError(f"timestamp_hop_ms must be at least one fbank frame shift, {1000 * frame_shift / rate:g} ms, "
                     f"or None for the encoder's own column hop; got {hop_ms}")


def _rows(audio: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    if audio.dim() != 2:
        raise ValueError(f"audio must be [clips, samples] at {SAMPLE_RATE} Hz, got shape {list(audio.shape)}")
    return list(enumerate(audio))


class TimestampEmbedder(nn.Module):
    """An :class:`~ssast.embed.Embedder` giving embeddings ``hop_ms`` apart
    (:meth:`timestamp_embeddings`, see the module docstring) and clip embeddings
    (:meth:`scene_embeddings`), as a ``torch.nn.Module`` that benchmarks move with
    ``.to(device)``: it computes on the device it was moved to (bf16 autocast on CUDA unless
    ``precision``) and answers in float32 on the device of the audio.

    ``checkpoint`` is anything :func:`~ssast.checkpoints.load_checkpoint` reads;
    ``timestamp_hop_ms`` the largest hop wanted between timestamps (``None``: the encoder's
    column hop, one encoder run); ``pooling``, ``layers`` and ``precision`` are the
    Embedder's; ``overrides`` (``tstride``, ``fstride``, ``input_tdim``) go to
    ``load_checkpoint``.
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        *,
        timestamp_hop_ms: float | None = DEFAULT_HOP_MS,
        pooling: Pooling | None = None,
        layers: Layers = "last",
        precision: Precision | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.embedder = Embedder(checkpoint, pooling=pooling, layers=layers, precision=precision, **overrides)
        self.encoder = self.embedder.encoder  # a submodule, so that .to() moves it, and the embedder with it
        config = self.encoder.config
        self.embedding_size = int(config.embed_dim)
        shift, frame = self.embedder.fbank.window_shift, self.embedder.fbank.window_size
        n_time = config.grid[1]
        # Column g covers frames g * tstride ... g * tstride + tshape - 1: from the start of
        # the first to the end of the last, in samples.
        self.columns = ColumnWindowing(
            self.embedder.window_samples, n_time * config.tstride * shift, columns=n_time,
            column_hop=config.tstride * shift, column_middle=((config.tshape - 1) * shift + frame) / 2,
        )
        self.passes = count_passes(config.tstride, shift, timestamp_hop_ms)
        self.sub_hop = self.columns.column_hop // self.passes  # samples between timestamps

    @property
    def hop_ms(self) -> float:
        """Milliseconds between timestamps."""
        return 1000 * self.sub_hop / self.sample_rate

    def num_timestamps(self, num_samples: int) -> int:
        """How many timestamps a clip of ``num_samples`` gets: the columns of all phases, in
        time order, up to the last whose middle is inside the clip (at least one)."""
        inside = math.floor((num_samples - self.columns.column_middle) / self.sub_hop) + 1
        # Phase k starts k * sub_hop in; one left with less than an fbank frame of audio cannot
        # be run. Only a patch narrower than 4 frames has a column whose middle comes before
        # its first frame's end; there, the columns stop before the first such phase.
        with_a_frame = math.floor((num_samples - self.embedder.fbank.window_size) / self.sub_hop) + 1
        return max(1, inside if with_a_frame >= self.passes else min(inside, with_a_frame))

    def timestamps(self, num_samples: int) -> torch.Tensor:
        """The middle of each timestamp's column, in ms, ``[num_timestamps]`` float64."""
        steps = torch.arange(self.num_timestamps(num_samples), dtype=torch.float64)
        return 1000 * (steps * self.sub_hop + self.columns.column_middle) / self.sample_rate

    def column_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder output ``[B, lead + N, D]`` -> one embedding per patch column ``[B, n_time, D]``."""
        n_freq = self.encoder.grid[0]
        return reduce(self.encoder.patch_tokens(tokens), "b (f t) d -> b t d", "mean", f=n_freq)

    @torch.inference_mode()
    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [n, samples]`` at 16 kHz -> embeddings ``[n, T, embedding_size]`` float32,
        ``hop_ms`` apart, and their timestamps ``[T]`` float64 in ms (the same for every row)."""
        rows = _rows(audio)
        count = self.num_timestamps(audio.shape[-1])
        passes = min(self.passes, count)  # a phase whose first column is past the end adds none
        phases = (((row, k), waveform[k * self.sub_hop :]) for row, waveform in rows for k in range(passes))
        results = self.embedder.map_windows(phases, self.column_embeddings, self.columns)
        clips = [self._interleave([columns for _, columns, _ in phase], count)
                 for _, phase in groupby(results, key=lambda result: result[0][0])]
        return torch.stack(clips).to(audio.device), self.timestamps(audio.shape[-1]).to(audio.device)

    @staticmethod
    def _interleave(phases: list[torch.Tensor], count: int) -> torch.Tensor:
        """The columns ``[windows, n_time, D]`` of each phase of one clip -> ``[count, D]``,
        column ``c`` of phase ``k`` at ``c * passes + k``. Phase 0 has the most windows; the
        later ones' missing places lie past ``count``, where the result is cut."""
        first = rearrange(phases[0], "w t d -> (w t) d")
        interleaved = first.new_zeros(len(first), len(phases), first.shape[-1])
        for k, phase in enumerate(phases):
            columns = rearrange(phase, "w t d -> (w t) d")
            interleaved[: len(columns), k] = columns
        return rearrange(interleaved, "c k d -> (c k) d")[:count]

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [n, samples]`` at 16 kHz -> ``[n, embedding_size]`` float32: the clip
        embeddings of :meth:`Embedder.embed_long <ssast.embed.Embedder.embed_long>`."""
        clips = [result.clip for _, result in self.embedder.embed_many(_rows(audio))]
        return torch.stack(clips).float().to(audio.device)
