"""Clip and token embeddings from any loadable checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from ssast.audio import decode_audio
from ssast.checkpoints import Checkpoint, load_checkpoint
from ssast.encoder import Pooling
from ssast.features import Fbank, Normalize, fit_frames


class Embeddings(NamedTuple):
    clip: torch.Tensor  # [B, D]
    tokens: torch.Tensor  # [B, N, D] patch tokens, frequency-major


class Embedder:
    """Embeds audio with the fbank, normalization and input length the encoder was
    trained with.

    >>> embedder = Embedder("ssast-base-patch-400.pth")
    >>> out = embedder(["dog.wav", "cat.flac"])      # or a [B, N] 16 kHz waveform tensor
    >>> out.clip.shape, out.tokens.shape             # [2, 768], [2, 512, 768]

    Clips longer than the encoder's input are cut, shorter ones zero-padded (in the fbank,
    as AST does). ``pooling`` defaults to the checkpoint's own (``mean`` of patch tokens
    for SSAST, ``cls`` for Hugging Face AST). ``overrides`` go to
    :func:`~ssast.checkpoints.load_checkpoint` (``fstride``, ``tstride``, ``input_tdim``);
    ``mean``/``std`` replace the checkpoint's normalization statistics.
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        *,
        device: str | torch.device = "cpu",
        pooling: Pooling | None = None,
        batch_size: int = 16,
        mean: float | None = None,
        std: float | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, **overrides)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.encoder = checkpoint.encoder.to(self.device).eval()
        self.fbank = Fbank().to(self.device)
        preprocessing = checkpoint.preprocessing
        self.normalize = Normalize(preprocessing.mean if mean is None else mean, preprocessing.std if std is None else std)
        self.target_length = preprocessing.target_length
        self.pooling: Pooling = pooling or checkpoint.pooling
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor | Sequence[torch.Tensor | str | Path]) -> Embeddings:
        """Embed a ``[B, N]`` batch of 16 kHz waveforms, or a list of waveforms or files."""
        waveforms = list(audio) if not isinstance(audio, torch.Tensor) else list(audio.reshape(-1, audio.shape[-1]))
        waveforms = [decode_audio(Path(item).read_bytes())[0] if isinstance(item, (str, Path)) else item
                     for item in waveforms]
        clips, tokens = [], []
        for start in range(0, len(waveforms), self.batch_size):
            batch = waveforms[start : start + self.batch_size]
            lengths = torch.tensor([len(waveform) for waveform in batch], device=self.device)
            padded = pad_sequence([waveform.float() for waveform in batch], batch_first=True).to(self.device)
            features = self.normalize(fit_frames(self.fbank(padded, lengths), self.target_length))
            out = self.encoder(features)
            clips.append(self.encoder.pool(out, self.pooling))
            tokens.append(self.encoder.patch_tokens(out))
        return Embeddings(torch.cat(clips), torch.cat(tokens))
