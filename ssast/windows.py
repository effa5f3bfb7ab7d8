"""Audio cut into the encoder's input windows, and many clips' windows run in shared batches.

A clip longer than the encoder's input is cut into windows ``hop`` apart (:class:`Windowing`) and
read one window at a time: files by seeking (:class:`ssast.audio.AudioFile`), so an hour-long
recording costs the memory of one window, in-memory waveforms as views. :func:`read_windows`
and :func:`in_batches` feed the windows of consecutive clips to the encoder ``batch_size`` at a
time and hand each clip back, in order, once all its windows are embedded; :class:`ssast.embed.Embedder`
is built on them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssast.audio import SAMPLE_RATE, AudioDecodeError, AudioFile

# A 16 kHz mono waveform [N], a path to an audio file (any rate libsndfile reads), or the bytes of one.
Audio = torch.Tensor | str | Path | bytes


@dataclass(frozen=True)
class Windowing:
    """Where the encoder's input windows lie in a clip: ``length`` samples every ``hop``
    samples from the start, until a window reaches the end of the clip.

    A clip no longer than one window is one window. The last window of a longer clip holds
    more than ``length - hop`` samples of audio; the rest of it is padding, which the fbank
    zeroes (``Fbank`` with ``lengths``), as AST pads a short clip. ``hop`` may not exceed
    ``length``: every sample is in some window.
    """

    length: int
    hop: int
    rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if not 0 < self.hop <= self.length:
            raise ValueError(f"the hop must be above 0 and at most the window, {self.length / self.rate:g} s; "
                             f"got {self.hop / self.rate:g} s")

    def count(self, num_samples: int) -> int:
        """How many windows a clip of ``num_samples`` has."""
        return 1 + max(0, -(-(num_samples - self.length) // self.hop))

    def starts(self, num_samples: int) -> range:
        """The first sample of each window."""
        return range(0, self.count(num_samples) * self.hop, self.hop)

    def centres(self, num_samples: int) -> torch.Tensor:
        """The middle of the audio each window holds, in seconds: ``[count]`` float64, evenly
        spaced but for the last window of a clip that does not end on a window's end."""
        starts = torch.arange(self.count(num_samples), dtype=torch.float64) * self.hop
        ends = (starts + self.length).clamp(max=num_samples)
        return (starts + ends) / 2 / self.rate


class WaveformReader:
    """An in-memory waveform read like an :class:`~ssast.audio.AudioFile`: windows are views."""

    def __init__(self, waveform: torch.Tensor) -> None:
        if waveform.dim() != 1:
            raise ValueError(f"a waveform must be [samples], got shape {list(waveform.shape)}")
        self.waveform = waveform
        self.num_samples = waveform.shape[0]

    def __enter__(self) -> WaveformReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def read(self, start: int, num_samples: int) -> torch.Tensor:
        return self.waveform[start : start + num_samples]


def open_audio(audio: Audio) -> AudioFile | WaveformReader:
    """``audio`` opened for reading windows: ``num_samples`` and ``read(start, count)`` at 16 kHz."""
    if isinstance(audio, torch.Tensor):
        return WaveformReader(audio)
    if not isinstance(audio, bytes) and not Path(audio).is_file():
        raise FileNotFoundError(f"no such file: {audio}")  # libsndfile would only say "System error"
    return AudioFile(audio)


def check_length(num_samples: int, frame_samples: int) -> None:
    if num_samples < frame_samples:
        raise AudioDecodeError(
            f"audio of {num_samples} samples is shorter than one {frame_samples}-sample (25 ms) fbank frame", "empty",
        )


def pad(windows: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Waveforms of at most ``length`` samples as the rows of one zero-padded ``[B, length]``
    float32 tensor, assembled where the windows are (a file's on the CPU) to move in one copy."""
    padded = windows[0].new_zeros(len(windows), length, dtype=torch.float32)
    for row, window in zip(padded, windows):
        row[: len(window)] = window
    return padded


def first_windows(items: Sequence[Audio], length: int, frame_samples: int) -> tuple[list[torch.Tensor], int]:
    """The first ``length`` samples of each of ``items``, and how many of them were longer."""
    windows, cut = [], 0
    for item in items:
        with open_audio(item) as reader:
            check_length(reader.num_samples, frame_samples)
            cut += reader.num_samples > length
            windows.append(reader.read(0, length))
    return windows, cut


# --- many clips, window by window, in shared batches ------------------------------------


@dataclass(eq=False)
class WindowedClip:
    """A clip whose windows are being embedded: ``features`` fill in as batches are run."""

    key: Any
    num_samples: int = 0
    windows: int = 0
    features: torch.Tensor | None = None  # [windows, ...], made at the first result
    filled: int = 0
    failed: bool = False

    def put(self, index: int, feature: torch.Tensor) -> None:
        # One buffer per clip rather than a view of each batch's output: small blocks kept
        # between a batch's large temporary ones would fragment the heap, and a long
        # recording's memory would then grow with its length.
        if self.features is None:
            self.features = feature.new_empty(self.windows, *feature.shape)
        self.features[index] = feature
        self.filled += 1

    @property
    def done(self) -> bool:
        return self.filled == self.windows


Window = tuple[WindowedClip, int, torch.Tensor]  # a window's clip, its index in the clip, its samples


def read_windows(
    clips: Iterable[tuple[Any, Audio]],
    windowing: Windowing,
    frame_samples: int,
    on_error: Callable[[Any, Exception], None] | None,
) -> Iterator[Window]:
    """Every window of every clip, in order, read one at a time. A clip that cannot be read
    (or is shorter than one fbank frame) raises, or with ``on_error`` is marked failed and
    handed to it."""
    for key, audio in clips:
        clip = WindowedClip(key)
        try:
            with open_audio(audio) as reader:
                clip.num_samples = reader.num_samples
                check_length(clip.num_samples, frame_samples)
                clip.windows = windowing.count(clip.num_samples)
                for index, start in enumerate(windowing.starts(clip.num_samples)):
                    yield clip, index, reader.read(start, windowing.length)
        except (AudioDecodeError, OSError) as error:
            if on_error is None:
                raise
            clip.failed = True  # a window it already gave is dropped before it is run
            on_error(key, error)


def in_batches(
    windows: Iterable[Window], batch_size: int, run: Callable[[list[torch.Tensor]], torch.Tensor]
) -> Iterator[WindowedClip]:
    """The clips of ``windows``, in input order, each as soon as ``run`` has given the features
    ``[windows, ...]`` of all its windows (a failed clip is left out). ``run`` takes the windows
    of consecutive clips ``batch_size`` at a time, so only one batch of them is in memory."""
    pending: deque[WindowedClip] = deque()  # clips with windows read, in input order
    batch: list[Window] = []

    def flush() -> Iterator[WindowedClip]:
        run_batch(batch, run)
        batch.clear()
        while pending and (pending[0].failed or pending[0].done):
            clip = pending.popleft()
            if not clip.failed:
                yield clip

    for clip, index, window in windows:
        if index == 0:
            pending.append(clip)
        batch.append((clip, index, window))
        if len(batch) == batch_size:
            yield from flush()
    yield from flush()


def run_batch(batch: list[Window], run: Callable[[list[torch.Tensor]], torch.Tensor]) -> None:
    """Put the features of each window of ``batch`` whose clip has not failed in its clip."""
    live = [(clip, index, window) for clip, index, window in batch if not clip.failed]
    if live:
        for (clip, index, _), feature in zip(live, run([window for _, _, window in live])):
            clip.put(index, feature)
