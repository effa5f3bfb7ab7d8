"""Audio decoding and waveform helpers.

Everything downstream works on mono float32 waveforms at :data:`SAMPLE_RATE`. Decoding
happens from bytes in memory (shards are read as bytes; no temp files), and every way a
clip can be unusable raises :class:`AudioDecodeError`, the one exception the shard reader
catches and counts.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional

SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """A clip that cannot be used: undecodable, empty or not finite."""


def decode_audio(data: bytes, target_rate: int | None = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """Decode encoded audio bytes (any format libsndfile reads) into a mono waveform.

    Returns ``(waveform [N] float32, sample_rate)``; with ``target_rate`` set the clip is
    resampled to it, with ``None`` the file's own rate is kept.
    """
    if not data:
        raise AudioDecodeError("empty file (0 bytes)")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile and its codecs fail in many ways
        raise AudioDecodeError(f"cannot decode audio: {_reason(error)}") from error
    return _checked_mono(samples, rate, target_rate)


def read_audio_window(
    path: str | Path, start: float, seconds: float, target_rate: int | None = SAMPLE_RATE
) -> tuple[torch.Tensor, int]:
    """``seconds`` of a file from ``start`` (seconds), read by seeking rather than
    decoding the whole file; mono and resampled like :func:`decode_audio`."""
    try:
        with soundfile.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            handle.seek(round(start * rate))
            samples = handle.read(round(seconds * rate), dtype="float32", always_2d=True)
    except Exception as error:
        raise AudioDecodeError(f"cannot read {seconds:g} s at {start:g} s: {_reason(error)}") from error
    return _checked_mono(samples, rate, target_rate)


def _reason(error: Exception) -> str:
    return getattr(error, "error_string", None) or str(error)


def _checked_mono(samples: np.ndarray, rate: int, target_rate: int | None) -> tuple[torch.Tensor, int]:
    waveform = torch.from_numpy(samples).mean(dim=1)
    if waveform.numel() == 0:
        raise AudioDecodeError("audio is empty (0 samples)")
    if not torch.isfinite(waveform).all():
        raise AudioDecodeError("audio holds NaN or Inf samples")
    if target_rate is not None and rate != target_rate:
        waveform = resample(waveform, rate, target_rate)
        rate = target_rate
    return waveform, rate


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


def random_crop(waveform: torch.Tensor, num_samples: int, rng: random.Random) -> tuple[torch.Tensor, int]:
    """A random window of ``num_samples`` (the whole clip, padded, when it is shorter)."""
    start = rng.randint(0, max(0, waveform.shape[-1] - num_samples))
    return pad_or_crop(waveform, num_samples, start)
