"""Embeddings of clips and long recordings from any loadable checkpoint, in Python.

An encoder takes a fixed input: ``target_length`` fbank frames (1024 for SSAST: 10.24 s), made
from ``(target_length - 1) * 160 + 400`` samples at 16 kHz. Longer audio is cut into windows of
that many samples, ``hop`` apart, until one reaches the end of the clip (:mod:`ssast.windows`);
the last is zero-padded in the fbank, as AST pads a short clip. Each window goes through the
checkpoint's fbank, normalization and encoder and is pooled as the checkpoint pools; a clip's
embedding is the mean of its windows'. The tokens pooled are the encoder's final output, or with
``layers`` the mean of every block's output (SUPERB's ``hidden_states``) or one block's
(:meth:`~ssast.encoder.ASTEncoder.layer_tokens`). Files are read one window at a time by seeking
(:class:`ssast.audio.AudioFile`), so an hour-long recording costs the memory of one window, and
in-memory waveforms are cut into views.

:class:`Embedder` is the Python API; ``ssast-embed`` (:mod:`ssast.embed_cli`) runs it over
files, folders, CSV manifests and shards, and ``ssast.hear`` builds the HEAR API on
:meth:`Embedder.map_windows`, the one place windows are cut and batched.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple, TypeVar

import torch

from ssast.audio import SAMPLE_RATE
from ssast.checkpoints import Checkpoint, load_checkpoint
from ssast.encoder import Layers, Pooling
from ssast.features import Fbank, Normalize
from ssast.windows import Audio, Windowing, first_windows, in_batches, pad, read_windows

Precision = Literal["bf16", "fp32"]
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


def check_precision(precision: object) -> Precision | None:
    """``precision`` if it is ``bf16``, ``fp32`` or ``None`` (bf16 on CUDA only), else ``ValueError``."""
    if precision is None or precision in ("bf16", "fp32") and isinstance(precision, str):
        return precision  # type: ignore[return-value]
    raise ValueError(f"precision must be 'bf16', 'fp32' or None (bf16 on CUDA only), got {precision!r}")


def autocast(device: torch.device, precision: Precision | None) -> torch.autocast:
    """bf16 autocast on ``device`` for ``precision`` ``bf16``, or ``None`` on CUDA; otherwise
    autocast off, also inside a caller's autocast: ``fp32`` means float32."""
    bf16 = precision == "bf16" or (precision is None and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


class Embeddings(NamedTuple):
    clip: torch.Tensor  # [B, D]
    tokens: torch.Tensor  # [B, N, D] patch tokens (of the embedder's layers), frequency-major


class WindowEmbeddings(NamedTuple):
    clip: torch.Tensor  # [D] the mean of the window embeddings
    windows: torch.Tensor  # [T, D] one per window, pooled as the checkpoint pools
    timestamps: torch.Tensor  # [T] float64, seconds: the middle of the audio each window holds


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
        self.precision = check_precision(precision)
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
        windows, cut = first_windows(items, self.window_samples, self.fbank.window_size)
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
        pool = functools.partial(self.encoder.pool, pooling=self.pooling)
        for key, windows, num_samples in self.map_windows(clips, pool, on_error=on_error):
            timestamps = self.windowing.centres(num_samples).to(windows.device)
            yield key, WindowEmbeddings(windows.mean(dim=0), windows, timestamps)

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
        def run(windows: list[torch.Tensor]) -> torch.Tensor:
            return per_window(self._encode(windows)).float()

        windows = read_windows(clips, windowing or self.windowing, self.fbank.window_size, on_error)
        for clip in in_batches(windows, self.batch_size, run):
            yield clip.key, clip.features, clip.num_samples

    def _encode(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """The encoder's tokens ``[B, lead + N, D]`` from the embedder's ``layers``, for waveforms
        of at most one window each."""
        lengths = torch.tensor([len(window) for window in windows], device=self.device)
        padded = pad(windows, self.window_samples).to(self.device)
        # Frames reaching into the padding come out as zeros: AST's zero-padded fbank.
        features = self.normalize(self.fbank(padded, lengths))
        with autocast(self.device, self.precision):
            return self.encoder.layer_tokens(features, self.layers)
