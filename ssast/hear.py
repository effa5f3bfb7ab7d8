"""The HEAR 2021 API (https://hearbenchmark.com) over any checkpoint ssast reads.

    hear-validator ssast.hear --model SSAST-Base-Patch-400.pth
    python -m heareval.embeddings.runner ssast.hear --model SSAST-Base-Patch-400.pth --tasks-dir tasks

Scene embeddings are the clip embeddings of :meth:`ssast.embed.Embedder.embed_long`: the mean
of the pooled embeddings of windows of the checkpoint's input length.

Timestamp embeddings are :class:`ssast.timestamps.TimestampEmbedder`'s: patch columns (the
patch tokens of a column averaged over frequency) of the unchanged encoder, evenly spaced at
most 50 ms apart (``hop_ms``), the encoder run over the audio at several phases when its own
column hop, ``tstride`` frames of 10 ms, is longer. SSAST's patch models at stride 16 give
40 ms for 4 encoder runs (at stride 10: 50 ms for 2 runs), its frame models at stride 2 give
20 ms for one. ``--model-options '{"timestamp_hop_ms": null}'`` keeps the encoder's own hop
(160 ms for stride 16) at the cost of one run. A timestamp is the middle of the frames its
column covers; the last is within one hop of the end of the audio and never after it.

Both read the tokens the model's ``layers`` name (:class:`~ssast.embed.Embedder`'s): the final
output by default, ``all`` for the mean of every block's output (``--model-options
'{"layers": "all"}'``).
"""

from __future__ import annotations

from typing import Any

import torch

from ssast.timestamps import TimestampEmbedder


class HearModel(TimestampEmbedder):
    """A :class:`~ssast.timestamps.TimestampEmbedder` as the ``torch.nn.Module`` HEAR's tools
    load, move with ``.to(device)`` and pass back to :func:`get_scene_embeddings` and
    :func:`get_timestamp_embeddings`."""

    def __init__(self, checkpoint: str, **options: Any) -> None:
        super().__init__(checkpoint, **options)
        self.scene_embedding_size = self.timestamp_embedding_size = self.embedding_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Scene embeddings (see :func:`get_scene_embeddings`)."""
        return self.scene_embeddings(audio)


def load_model(model_file_path: str = "", **options: Any) -> HearModel:
    """The HEAR model of a checkpoint file or Hugging Face folder (any ``ssast.load_checkpoint``
    reads), on the CPU. ``options`` are :class:`~ssast.timestamps.TimestampEmbedder`'s:
    ``timestamp_hop_ms`` (50; ``None`` for the encoder's column hop), ``pooling``, ``layers``,
    ``precision``, and ``tstride``, ``fstride``, ``input_tdim`` for ``load_checkpoint``; with
    heareval, ``--model-options '{"layers": "all"}'``."""
    if not model_file_path:
        raise ValueError("ssast.hear has no default weights: pass a checkpoint "
                         "(hear-validator ssast.hear --model PATH)")
    return HearModel(model_file_path, **options)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``audio [n, samples]`` at 16 kHz -> ``[n, scene_embedding_size]`` float32."""
    return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio [n, samples]`` at 16 kHz -> embeddings ``[n, T, timestamp_embedding_size]``
    float32 and their timestamps ``[n, T]`` in milliseconds (see the module docstring)."""
    embeddings, timestamps = model.timestamp_embeddings(audio)
    return embeddings, timestamps.expand(len(audio), -1)
