"""Embeddings of clips and long recordings from any loadable checkpoint; ``ssast-embed``.

An encoder takes a fixed input: ``target_length`` fbank frames (1024 for SSAST: 10.24 s), made
from ``(target_length - 1) * 160 + 400`` samples at 16 kHz. Longer audio is cut into windows of
that many samples, ``hop`` apart, until one reaches the end of the clip (:class:`Windowing`);
the last is zero-padded in the fbank, as AST pads a short clip. Each window goes through the
checkpoint's fbank, normalization and encoder and is pooled as the checkpoint pools; a clip's
embedding is the mean of its windows'. The tokens pooled are the encoder's final output, or with
``layers`` the mean of every block's output (SUPERB's ``hidden_states``) or one block's
(:meth:`~ssast.encoder.ASTEncoder.layer_tokens`). Files are read one window at a time by seeking
(:class:`ssast.audio.AudioFile`), so an hour-long recording costs the memory of one window, and
in-memory waveforms are cut into views.

:class:`Embedder` is the Python API and :func:`main` the ``ssast-embed`` program, which runs it
over files, folders, CSV manifests and shards and writes ``.npy`` files. ``ssast.hear`` builds
the HEAR API on :meth:`Embedder.map_windows`, the one place windows are cut and batched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ssast.audio import SAMPLE_RATE, AudioDecodeError, AudioFile
from ssast.checkpoints import Checkpoint, CheckpointError, load_checkpoint
from ssast.data.reader import AUDIO_MEMBERS, list_shards, shard_samples
from ssast.data.writer import AUDIO_SUFFIXES, read_manifest, scan_folder
from ssast.encoder import Layers, Pooling
from ssast.features import Fbank, Normalize
from ssast.files import written_atomically

Precision = Literal["bf16", "fp32"]
# A 16 kHz mono waveform [N], a path to an audio file (any rate libsndfile reads), or the bytes of one.
Audio = torch.Tensor | str | Path | bytes
K = TypeVar("K")


def check_layers(layers: object, depth: int | None = None) -> Layers:
    """``layers`` if it names tokens an encoder of ``depth`` blocks has (``last``, ``all``, or a
    block from 1 to ``depth``; any positive block when ``depth`` is ``None``), else ``ValueError``."""
    if layers in ("last", "all") and isinstance(layers, str):
        return layers  # type: ignore[return-value]
    if isinstance(layers, int) and not isinstance(layers, bool) and 1 <= layers <= (depth or layers):
        return layers
    blocks = f"from 1 to {depth}" if depth else "number from 1"
    raise ValueError(f"layers must be 'last', 'all' or a block {blocks}, got {layers!r}")


def parse_layers(text: str) -> Layers:
    """``last``, ``all`` or a block number as a command line gives it (``"3"`` -> ``3``)."""
    text = text.strip().lower()
    return check_layers(int(text) if text.lstrip("+-").isdigit() else text)


class Embeddings(NamedTuple):
    clip: torch.Tensor  # [B, D]
    tokens: torch.Tensor  # [B, N, D] patch tokens (of the embedder's layers), frequency-major


class WindowEmbeddings(NamedTuple):
    clip: torch.Tensor  # [D] the mean of the window embeddings
    windows: torch.Tensor  # [T, D] one per window, pooled as the checkpoint pools
    timestamps: torch.Tensor  # [T] float64, seconds: the middle of the audio each window holds


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


class _Waveform:
    """An in-memory waveform read like an :class:`~ssast.audio.AudioFile`: windows are views."""

    def __init__(self, waveform: torch.Tensor) -> None:
        if waveform.dim() != 1:
            raise ValueError(f"a waveform must be [samples], got shape {list(waveform.shape)}")
        self.waveform = waveform
        self.num_samples = waveform.shape[0]

    def __enter__(self) -> _Waveform:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def read(self, start: int, num_samples: int) -> torch.Tensor:
        return self.waveform[start : start + num_samples]


def open_audio(audio: Audio) -> AudioFile | _Waveform:
    """``audio`` opened for reading windows: ``num_samples`` and ``read(start, count)`` at 16 kHz."""
    if isinstance(audio, torch.Tensor):
        return _Waveform(audio)
    if not isinstance(audio, bytes) and not Path(audio).is_file():
        raise FileNotFoundError(f"no such file: {audio}")  # libsndfile would only say "System error"
    return AudioFile(audio)


@dataclass(eq=False)
class _Clip:
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


class Embedder:
    """Embeds audio with the fbank, normalization and input length the encoder was
    trained with.

    >>> embedder = Embedder("SSAST-Base-Patch-400.pth")
    >>> out = embedder(["dog.wav", "cat.flac"])      # or a [B, N] 16 kHz waveform tensor
    >>> out.clip.shape, out.tokens.shape             # [2, 768], [2, 512, 768]
    >>> long = embedder.embed_long("meeting.flac")   # any length, read window by window
    >>> long.clip.shape, long.windows.shape, long.timestamps.shape   # [768], [T, 768], [T]

    Calling it embeds each clip's first window: clips longer than the encoder's input are
    cut (with a warning), shorter ones zero-padded in the fbank, as AST does.
    :meth:`embed_long` and :meth:`embed_many` embed whole clips of any length, window by
    window (:class:`Windowing`); a clip that fits in one window gets the same clip embedding
    either way.

    ``pooling`` defaults to the checkpoint's own (``mean`` of patch tokens for SSAST, ``cls``
    for Hugging Face AST). ``layers`` says which tokens are pooled (and returned as ``tokens``):
    ``last``, the encoder's final output (after its norm), as finetuning's ``mean`` and ``cls``
    pooling read it; ``all``, the mean of every block's output, as SSAST's SUPERB figures read
    the encoder (s3prl's ``hidden_states``, a weighted sum of layers, here with equal weights),
    which keeps more of what lower blocks hold, such as the speaker's voice; ``k``, block
    ``k``'s output (1 is the first). ``hop`` is the time between windows in seconds; by default
    half a window (5.12 s for 1024 frames), so every moment is seen by two windows and an event cut
    by one window's edge is whole in its neighbour. ``precision`` ``bf16`` runs the encoder
    under bf16 autocast (the default on CUDA; ``fp32`` elsewhere); embeddings are float32
    either way. ``overrides`` go to :func:`~ssast.checkpoints.load_checkpoint` (``fstride``,
    ``tstride``, ``input_tdim``); ``mean``/``std`` replace the checkpoint's normalization
    statistics. The embedder computes on the device its encoder is on.
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        *,
        device: str | torch.device = "cpu",
        pooling: Pooling | None = None,
        layers: Layers = "last",
        batch_size: int = 16,
        hop: float | None = None,
        precision: Precision | None = None,
        mean: float | None = None,
        std: float | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, **overrides)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if precision not in (None, "bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
        self.checkpoint = checkpoint
        self.encoder = checkpoint.encoder.to(device).eval()
        self.fbank = Fbank()
        preprocessing = checkpoint.preprocessing
        self.normalize = Normalize(preprocessing.mean if mean is None else mean,
                                   preprocessing.std if std is None else std)
        self.target_length = preprocessing.target_length
        self.pooling: Pooling = pooling or checkpoint.pooling
        self.layers: Layers = check_layers(layers, self.encoder.config.depth)
        self.batch_size = batch_size
        self.precision = precision
        window = self.fbank.num_samples(self.target_length)
        # Whole frames by default, so that windows share the file's frame grid.
        default_hop = self.target_length // 2 * self.fbank.window_shift
        self.windowing = Windowing(window, default_hop if hop is None else round(hop * SAMPLE_RATE))

    @property
    def device(self) -> torch.device:
        """Where the encoder is (and so where it computes)."""
        return self.encoder.pos_embed.device

    @property
    def window_samples(self) -> int:
        """The samples of one encoder input: ``(target_length - 1) * 160 + 400``."""
        return self.windowing.length

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor | Sequence[Audio]) -> Embeddings:
        """Embed a ``[B, N]`` batch of 16 kHz waveforms, or a list of waveforms or files:
        the first window of each (see the class docstring)."""
        items = list(audio.reshape(-1, audio.shape[-1])) if isinstance(audio, torch.Tensor) else list(audio)
        windows, cut = [], 0
        for item in items:
            with open_audio(item) as reader:
                self._check_length(reader.num_samples)
                cut += reader.num_samples > self.window_samples
                windows.append(reader.read(0, self.window_samples))
        if cut:
            warnings.warn(
                f"{cut} of {len(items)} clips are longer than the encoder's input ({self.window_samples} samples) and "
                "were cut to it; Embedder.embed_long embeds whole clips", stacklevel=2,
            )
        clips, tokens = [], []
        for start in range(0, len(windows), self.batch_size):
            out = self._encode(windows[start : start + self.batch_size])
            clips.append(self.encoder.pool(out, self.pooling).float())
            tokens.append(self.encoder.patch_tokens(out).float())
        return Embeddings(torch.cat(clips), torch.cat(tokens))

    def embed_long(self, audio: Audio) -> WindowEmbeddings:
        """The clip embedding, the window embeddings and the window centres of one clip of
        any length (a 16 kHz waveform ``[N]``, a file path, or encoded bytes)."""
        return next(self.embed_many([(None, audio)]))[1]

    def embed_many(
        self, clips: Iterable[tuple[K, Audio]], on_error: Callable[[K, Exception], None] | None = None
    ) -> Iterator[tuple[K, WindowEmbeddings]]:
        """:meth:`embed_long` for each ``(key, audio)`` of ``clips``, given back in order as
        each is done; windows of consecutive clips share batches. A clip that cannot be read
        (:class:`~ssast.audio.AudioDecodeError`, ``OSError``) raises, or with ``on_error`` is
        handed to it with the error and left out."""
        for key, windows, num_samples in self.map_windows(clips, self._pool, on_error=on_error):
            timestamps = self.windowing.centres(num_samples).to(windows.device)
            yield key, WindowEmbeddings(windows.mean(dim=0), windows, timestamps)

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder.pool(tokens, self.pooling)

    @torch.inference_mode()
    def map_windows(
        self,
        clips: Iterable[tuple[K, Audio]],
        per_window: Callable[[torch.Tensor], torch.Tensor],
        windowing: Windowing | None = None,
        on_error: Callable[[K, Exception], None] | None = None,
    ) -> Iterator[tuple[K, torch.Tensor, int]]:
        """Cut each clip into windows (``windowing``, by default the embedder's), run them
        through the encoder in batches of ``batch_size`` and reduce each window's tokens
        ``[B, lead + N, D]`` (of the embedder's ``layers``) with ``per_window`` to ``[B, ...]``.
        Yields, in input order, ``(key, features [windows, ...] float32, num_samples)`` per clip; on
        ``on_error`` see :meth:`embed_many`. Only the windows of one batch are in memory."""
        windowing = windowing or self.windowing
        pending: deque[_Clip] = deque()  # clips with windows read, in input order
        batch: list[tuple[_Clip, int, torch.Tensor]] = []
        for clip, index, window in self._read_windows(clips, windowing, on_error):
            if index == 0:
                pending.append(clip)
            batch.append((clip, index, window))
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch, pending, per_window)
        yield from self._run_batch(batch, pending, per_window)

    def _read_windows(
        self, clips: Iterable[tuple[K, Audio]], windowing: Windowing, on_error: Callable[[K, Exception], None] | None
    ) -> Iterator[tuple[_Clip, int, torch.Tensor]]:
        for key, audio in clips:
            clip = _Clip(key)
            try:
                with open_audio(audio) as reader:
                    clip.num_samples = reader.num_samples
                    self._check_length(clip.num_samples)
                    clip.windows = windowing.count(clip.num_samples)
                    for index, start in enumerate(windowing.starts(clip.num_samples)):
                        yield clip, index, reader.read(start, windowing.length)
            except (AudioDecodeError, OSError) as error:
                if on_error is None:
                    raise
                clip.failed = True  # a window it already gave is dropped before it is run
                on_error(key, error)

    def _run_batch(
        self,
        batch: list[tuple[_Clip, int, torch.Tensor]],
        pending: deque[_Clip],
        per_window: Callable[[torch.Tensor], torch.Tensor],
    ) -> Iterator[tuple[Any, torch.Tensor, int]]:
        batch[:] = [item for item in batch if not item[0].failed]
        if batch:
            features = per_window(self._encode([window for _, _, window in batch])).float()
            for (clip, index, _), feature in zip(batch, features):
                clip.put(index, feature)
            batch.clear()
        while pending and (pending[0].failed or pending[0].done):
            clip = pending.popleft()
            if not clip.failed:
                yield clip.key, clip.features, clip.num_samples

    def _encode(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """The encoder's tokens ``[B, lead + N, D]`` from the embedder's ``layers``, for waveforms
        of at most one window each."""
        lengths = torch.tensor([len(window) for window in windows], device=self.device)
        # Assembled where the windows are (a file's on the CPU), then moved in one copy.
        padded = windows[0].new_zeros(len(windows), self.window_samples, dtype=torch.float32)
        for row, window in zip(padded, windows):
            row[: len(window)] = window
        padded = padded.to(self.device)
        # Frames reaching into the padding come out as zeros: AST's zero-padded fbank.
        features = self.normalize(self.fbank(padded, lengths))
        bf16 = (self.precision or ("bf16" if self.device.type == "cuda" else "fp32")) == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.encoder.layer_tokens(features, self.layers)

    def _check_length(self, num_samples: int) -> None:
        if num_samples < self.fbank.window_size:
            raise AudioDecodeError(
                f"audio of {num_samples} samples is shorter than one {self.fbank.window_size}-sample (25 ms) "
                "fbank frame", "empty",
            )


# --------------------------------------------------------------------------------------
# ssast-embed


@dataclass
class EmbedSummary:
    """What a run of :func:`embed_inputs` did."""

    out: Path
    embedded: int = 0
    skipped: int = 0
    ignored: int = 0  # files in input folders that are not audio, by their suffix
    dim: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"embedded {self.embedded} clips in {self.seconds:.1f} s"
        if self.embedded:
            text += f" -> {self.out / 'clips.npy'} [{self.embedded}, {self.dim}]"
        text += f"; {self.skipped} skipped"
        if self.skipped:
            text += f" (reasons in {self.out / 'skipped.txt'})"
        if self.ignored:
            text += f"; ignored {self.ignored} non-audio files"
        return text


class _Run:
    """The output folder of one run, written as clips come::

        OUT/clips.npy                 [N, D] float32, one row per line of keys.txt; written last
        OUT/keys.txt                  the input of each row: a file path or a shard sample's key
        OUT/skipped.txt               input <TAB> reason, for each input that could not be used (only if any)
        OUT/frames/<n>.npy            [T, D] float32 window embeddings of row n (with --frames)
        OUT/frames/<n>.timestamps.npy [T] float64 window centres, seconds

    Rows and keys go to hidden files as they come, so memory does not grow with the number of
    clips; ``keys.txt`` and then ``clips.npy`` are made from them at the end, each in one
    rename, after the previous run's are removed: a folder whose run was interrupted has no
    ``clips.npy``, never one that disagrees with ``keys.txt``.
    """

    OUTPUTS = ("clips.npy", "keys.txt", "skipped.txt")

    def __init__(self, out: Path, frames: bool) -> None:
        self.out, self.frames = out, frames
        self.rows_path, self.keys_path = out / ".clips.f32.partial", out / ".keys.txt.partial"
        self.skips: list[tuple[str, str]] = []
        self.count, self.dim = 0, 0
        out.mkdir(parents=True, exist_ok=True)
        self.rows = self.rows_path.open("wb")
        self.keys = self.keys_path.open("w", encoding="utf-8")

    def clear_previous(self) -> None:
        """Remove what an earlier run left here, so no old file is mistaken for this run's."""
        for name in self.OUTPUTS:
            (self.out / name).unlink(missing_ok=True)
        if (self.out / "frames").is_dir():
            for path in (self.out / "frames").glob("*.npy"):
                if path.name.split(".")[0].isdigit():
                    path.unlink()

    def add(self, key: str, result: WindowEmbeddings) -> None:
        clip = result.clip.cpu().numpy().astype(np.float32)
        self.rows.write(clip.tobytes())
        self.keys.write(key + "\n")
        if self.frames:
            frames = self.out / "frames"
            frames.mkdir(exist_ok=True)
            np.save(frames / f"{self.count}.npy", result.windows.cpu().numpy().astype(np.float32))
            np.save(frames / f"{self.count}.timestamps.npy", result.timestamps.cpu().numpy())
        self.count, self.dim = self.count + 1, len(clip)

    def skip(self, key: str, reason: str) -> None:
        self.skips.append((key, reason.replace("\n", " ").replace("\t", " ")))

    def close(self) -> None:
        """Write ``skipped.txt``, then ``keys.txt`` and ``clips.npy`` when a clip was embedded."""
        self.rows.close()
        self.keys.close()
        if self.skips:
            with written_atomically(self.out / "skipped.txt") as temp:
                temp.write_text("".join(f"{key}\t{reason}\n" for key, reason in self.skips), encoding="utf-8")
        if self.count:
            with written_atomically(self.out / "keys.txt") as temp:
                shutil.copyfile(self.keys_path, temp)
            rows = np.memmap(self.rows_path, dtype=np.float32, mode="r", shape=(self.count, self.dim))
            with written_atomically(self.out / "clips.npy", suffix=".npy") as temp:
                clips = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=rows.shape)
                clips[:] = rows
                clips.flush()
                del clips
            del rows
        self.discard()

    def discard(self) -> None:
        """Remove the hidden files of rows and keys (all a failed run leaves is its frames)."""
        self.rows.close()
        self.keys.close()
        self.rows_path.unlink(missing_ok=True)
        self.keys_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Shards:
    """A shard pattern given as an input, expanded to its shard URLs."""

    urls: list[str]


def _is_shards(text: str) -> bool:
    return text.startswith("pipe:") or text.split("?")[0].endswith((".tar", ".tar.gz"))


def _resolve_inputs(inputs: Sequence[str]) -> tuple[list[Path | _Shards], int]:
    """The audio files and shard sets the command line names, in its order: a folder gives
    its audio files (recursively, sorted), a ``.csv`` the files of its ``path`` column
    (relative to the CSV's folder), a ``.tar`` name, brace pattern or ``pipe:`` command its
    shards; anything else is an audio file. Returns them and how many non-audio files the
    folders held. Raises ``FileNotFoundError``/``ValueError`` for an input that does not
    exist or cannot be read: a typo should stop a run before it starts, not after."""
    sources: list[Path | _Shards] = []
    ignored = 0
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files, skipped = scan_folder(path)
            sources += [file.path for file in files]
            ignored += skipped
        elif path.suffix.lower() == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"{text}: no such file")
            sources += [file.path for file in read_manifest(path)]
        elif _is_shards(text):
            sources.append(_Shards(list_shards(text)))
        elif path.is_file():
            sources.append(path)
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return sources, ignored


def _clips(sources: Sequence[Path | _Shards], skip: Callable[[str, str], None]) -> Iterator[tuple[str, Audio]]:
    """``(key, audio)`` for every clip of ``sources``; what cannot even be opened goes to
    ``skip(key, reason)``."""
    for source in sources:
        if isinstance(source, Path):
            key = str(source)
            if "\n" in key:
                skip(key.replace("\n", "\\n"), "a line break in its name would break keys.txt")
            else:
                yield key, source
            continue
        for url in source.urls:
            # The project's strict tar reading: a truncated shard fails instead of ending early.
            try:
                for sample in shard_samples(url):
                    member = next((name for name in AUDIO_MEMBERS if name in sample), None)
                    if member is None:
                        skip(sample["__key__"], f"no audio member (looked for {', '.join(AUDIO_MEMBERS)})")
                    else:
                        yield sample["__key__"], sample[member]
            except Exception as error:  # opening and reading shards fail in many ways: OSError, tarfile, pipes
                skip(url, f"shard unreadable, its later samples are missing: {type(error).__name__}: {error}")


def embed_inputs(
    checkpoint: str | Path | Checkpoint,
    inputs: Sequence[str],
    out: str | Path,
    *,
    hop: float | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    precision: Precision | None = None,
    pooling: Pooling | None = None,
    layers: Layers = "last",
    frames: bool = False,
    progress: bool = True,
) -> EmbedSummary:
    """What ``ssast-embed`` does (see :func:`main` and :class:`_Run` for the output layout).
    Raises ``FileNotFoundError``/``ValueError`` for inputs that do not exist (or, when
    nothing is found in them, ``ValueError``), ``OSError`` for an output folder that cannot
    be written and :class:`~ssast.checkpoints.CheckpointError` for a checkpoint that cannot
    be read, all before anything is embedded."""
    start = time.perf_counter()
    out = Path(out)
    sources, ignored = _resolve_inputs(inputs)
    if not sources:
        raise ValueError(f"no inputs found in {', '.join(map(str, inputs))} (audio files: "
                         f"{', '.join(sorted(AUDIO_SUFFIXES))}; folders of them; CSV files with a path column; shards)")
    try:
        run = _Run(out, frames)
    except OSError as error:
        raise OSError(f"cannot write to {out}: {error}") from error
    try:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        embedder = Embedder(checkpoint, device=device, pooling=pooling, layers=layers, batch_size=batch_size,
                            hop=hop, precision=precision)
        run.clear_previous()
        total = None if any(isinstance(source, _Shards) for source in sources) else len(sources)
        with tqdm(total=total, unit="clip", desc="embed", disable=not progress, file=sys.stderr) as bar:
            def skip(key: str, reason: str) -> None:
                run.skip(key, reason)
                bar.update()

            clips = embedder.embed_many(_clips(sources, skip), on_error=lambda key, error: skip(key, str(error)))
            for key, result in clips:
                run.add(key, result)
                bar.update()
    except BaseException:
        run.discard()  # an interrupted run publishes no clips.npy
        raise
    run.close()
    return EmbedSummary(out, run.count, len(run.skips), ignored, run.dim, time.perf_counter() - start)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssast-embed",
        description="Clip embeddings (and, with --frames, window embeddings) of audio files, folders, CSV "
                    "manifests and WebDataset shards, from any checkpoint ssast.load_checkpoint reads. Audio longer "
                    "than the checkpoint's input is embedded window by window and the windows averaged.",
    )
    parser.add_argument("checkpoint", help="a checkpoint file or Hugging Face folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files, folders (searched recursively), CSV files with a 'path' column, "
                             "or shards (.tar files, brace patterns, pipe: commands)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--frames", action="store_true",
                        help="also write each clip's window embeddings and their times (frames/<n>.npy)")
    parser.add_argument("--hop", type=float,
                        help="seconds between windows; default half a window (5.12 s at 1024 frames)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per encoder batch (default 16)")
    parser.add_argument("--device", help="default cuda when available, else cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 elsewhere")
    parser.add_argument("--pooling", choices=["mean", "cls"], help="default the checkpoint's")
    parser.add_argument("--layers", type=_layers_argument, default="last", metavar="last|all|K",
                        help="the tokens pooled: 'last', the encoder's final output (default); 'all', the mean of "
                             "every block's output (SUPERB's hidden states, as SSAST's speaker and keyword results "
                             "read them); K, block K's output (1 is the first)")
    return parser


def _layers_argument(text: str) -> Layers:
    try:
        return parse_layers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``ssast-embed CHECKPOINT INPUT... --out DIR``: exit status 0 when a clip was embedded,
    1 when none could be, 2 for a bad command line, checkpoint or output folder."""
    args = _build_parser().parse_args(argv)
    try:
        summary = embed_inputs(
            args.checkpoint, args.inputs, args.out, hop=args.hop, batch_size=args.batch_size, device=args.device,
            precision=args.precision, pooling=args.pooling, layers=args.layers, frames=args.frames,
        )
    except (CheckpointError, OSError, ValueError) as error:  # inputs, checkpoint, output folder
        print(f"ssast-embed: error: {error}", file=sys.stderr)
        return 2
    print(summary)
    if not summary.embedded:
        print(f"ssast-embed: error: no clip could be embedded (reasons in {args.out / 'skipped.txt'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
