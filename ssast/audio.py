"""Audio decoding and waveform helpers.

Everything downstream works on mono float32 waveforms at :data:`SAMPLE_RATE`. Decoding
happens from bytes in memory (shards are read as bytes; no temp files), and every way a
clip can be unusable raises :class:`AudioDecodeError`, the one exception the shard reader
catches and counts.
"""

from __future__ import annotations

import io
import random
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional

SAMPLE_RATE = 16_000
# Lossy codecs decode a frame with the help of the frames before it (MP3's bit reservoir,
# Vorbis's overlapping blocks): after a seek, their first samples come out wrong, so a
# window of them is read from this many samples earlier (by libsndfile format).
SEEK_PREROLL = {"MP3": 4 * 1152, "OGG": 8192}


# Only these sample formats can hold NaN or Inf: integer PCM, FLAC and the lossy codecs cannot.
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


class AudioDecodeError(ValueError):
    """A clip that cannot be used. ``reason`` says which way, in the words the shard
    reader counts skips by: ``undecodable``, ``empty``, ``truncated`` or ``not_finite``."""

    def __init__(self, message: str, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.reason = reason


class AudioFile:
    """Encoded audio (bytes in memory or a path) opened for reading windows of it.

    Rate, channels and length come from the header; :meth:`read` seeks to the window it
    is asked for and decodes only that, so an hour-long clip costs what its window costs
    rather than an hour of float samples. Windows are mono (channels averaged) and at
    ``target_rate`` (``None``: the file's own rate).

    A WAV file cut short (fewer samples than its header says: a copy that stopped, a
    download that broke) is refused as ``truncated``: libsndfile would read the part that is
    there as if it were the whole clip.
    """

    def __init__(self, source: bytes | str | Path, target_rate: int | None = SAMPLE_RATE) -> None:
        if isinstance(source, bytes) and not source:
            raise AudioDecodeError("empty file (0 bytes)", "empty")
        try:
            self._handle = soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source))
        except Exception as error:  # libsndfile and its codecs fail in many ways
            raise AudioDecodeError(f"cannot decode audio: {_reason(error)}") from error
        self.rate: int = self._handle.samplerate
        self.channels: int = self._handle.channels
        self.frames: int = self._handle.frames
        self.target_rate: int = target_rate or self.rate
        if self._handle.format in ("WAV", "WAVEX"):
            shortfall = _wav_data_shortfall(source)
            if shortfall is not None:
                self._handle.close()
                declared, present = shortfall
                raise AudioDecodeError(f"truncated: its header promises {declared} bytes of samples, the file holds "
                                       f"{present} ({self.frames / self.rate:.2f} s)", "truncated")

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()

    @property
    def num_samples(self) -> int:
        """The length at the target rate, as resampling the whole file gives it."""
        return -(-self.frames * self.target_rate // self.rate)

    def read(self, start: int = 0, num_samples: int | None = None) -> torch.Tensor:
        """``num_samples`` (to the end: ``None``) from ``start``, both at the target rate;
        fewer when the file ends first. A resampled window equals the same span of the
        whole file resampled: it is read with a margin on each side, for the filter to
        see the same neighbours, starting on a sample the two rates share."""
        if self.rate == self.target_rate:
            return self._read_mono(start, num_samples)
        step = gcd(self.rate, self.target_rate)
        source_step, target_step = self.rate // step, self.target_rate // step
        margin = 32 * -(-self.rate // self.target_rate)
        begin = max(0, start * source_step // target_step - margin)
        begin -= begin % source_step
        count = None
        if num_samples is not None:
            count = -(-(start + num_samples) * source_step // target_step) + margin - begin
        waveform = resample(self._read_mono(begin, count), self.rate, self.target_rate)
        offset = start - begin // source_step * target_step
        return waveform[offset : None if num_samples is None else offset + num_samples]

    def check_finite(self) -> None:
        """Raises :class:`AudioDecodeError` (``not_finite``) when any sample of the whole file
        is NaN or Inf, whatever window is read of it; read in blocks, so a long file costs
        one block of memory. Only float samples can hold them (:data:`FLOAT_SUBTYPES`): for
        any other file this reads nothing."""
        if self._handle.subtype not in FLOAT_SUBTYPES:
            return
        self._handle.seek(0)
        for block in self._handle.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise AudioDecodeError("audio holds NaN or Inf samples", "not_finite")

    def _read_mono(self, first: int, count: int | None) -> torch.Tensor:
        """``count`` frames (all: ``None``) from ``first`` at the file's rate, averaged to
        mono and checked."""
        preroll = min(first, SEEK_PREROLL.get(self._handle.format, 0))
        try:
            self._handle.seek(first - preroll)
            samples = self._handle.read(-1 if count is None else preroll + count, dtype="float32", always_2d=True)
        except Exception as error:
            raise AudioDecodeError(f"cannot decode audio: {_reason(error)}") from error
        waveform = torch.from_numpy(samples[preroll:]).mean(dim=1)
        if waveform.numel() == 0:
            raise AudioDecodeError("audio is empty (0 samples)", "empty")
        if not torch.isfinite(waveform).all():
            raise AudioDecodeError("audio holds NaN or Inf samples", "not_finite")
        return waveform


def decode_audio(data: bytes, target_rate: int | None = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """Decode encoded audio bytes (any format libsndfile reads) into a mono waveform.

    Returns ``(waveform [N] float32, sample_rate)``; with ``target_rate`` set the clip is
    resampled to it, with ``None`` the file's own rate is kept.
    """
    with AudioFile(data, target_rate) as audio:
        return audio.read(), audio.target_rate


def read_audio_window(
    path: str | Path, start: float, seconds: float, target_rate: int | None = SAMPLE_RATE
) -> tuple[torch.Tensor, int]:
    """``seconds`` of a file from ``start`` (seconds), read by seeking rather than
    decoding the whole file; mono and resampled like :func:`decode_audio`."""
    try:
        with AudioFile(path, target_rate) as audio:
            rate = audio.target_rate
            return audio.read(round(start * rate), round(seconds * rate)), rate
    except AudioDecodeError as error:
        raise AudioDecodeError(f"cannot read {seconds:g} s at {start:g} s: {error}", error.reason) from error


def _wav_data_shortfall(source: bytes | str | Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF WAV's ``data`` chunk when the file holds fewer
    than its header says; ``None`` when it holds them all, or its header gives no length (a
    stream written before its length was known says 0 or 0xFFFFFFFF)."""
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as stream:
        if stream.read(4) != b"RIFF" or stream.read(8)[4:] != b"WAVE":
            return None  # RF64 and others: their sizes are elsewhere
        total, position = stream.seek(0, io.SEEK_END), 12
        while position + 8 <= total:
            stream.seek(position)
            chunk, size = stream.read(4), int.from_bytes(stream.read(4), "little")
            if chunk == b"data":
                present = total - position - 8
                return (size, present) if size not in (0, 0xFFFFFFFF) and present < size else None
            position += 8 + size + (size & 1)
    return None


def _reason(error: Exception) -> str:
    return getattr(error, "error_string", None) or str(error)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last dimension (torchaudio's sinc interpolation)."""
    if orig_rate == new_rate:
        return waveform
    return torchaudio.functional.resample(waveform, orig_rate, new_rate)


def encode_flac(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode a mono waveform as 16-bit FLAC bytes (samples outside [-1, 1] are clipped)."""
    buffer = io.BytesIO()
    samples = waveform.detach().clamp(-1.0, 1.0).cpu().numpy()
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def pad_or_crop(waveform: torch.Tensor, num_samples: int, start: int = 0) -> tuple[torch.Tensor, int]:
    """Cut ``num_samples`` from ``start``, zero-padding at the end when the clip is short.

    Returns the fixed-length waveform and how many of its samples are real audio, so the
    fbank can treat the padding as padding (AST pads the *fbank* with zeros, not the audio).
    """
    clip = waveform[..., start : start + num_samples]
    valid = clip.shape[-1]
    if valid < num_samples:
        clip = F.pad(clip, (0, num_samples - valid))
    return clip, valid


def random_start(length: int, num_samples: int, rng: random.Random) -> int:
    """Where a random window of ``num_samples`` starts in a clip of ``length`` (0 when the
    clip is shorter), every start equally likely."""
    return rng.randint(0, max(0, length - num_samples))


def random_crop(waveform: torch.Tensor, num_samples: int, rng: random.Random) -> tuple[torch.Tensor, int]:
    """A random window of ``num_samples`` (the whole clip, padded, when it is shorter)."""
    return pad_or_crop(waveform, num_samples, random_start(waveform.shape[-1], num_samples, rng))
