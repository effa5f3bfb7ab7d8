"""Pictures of spectrograms for dashboards, without a plotting library."""

from __future__ import annotations

import numpy as np
import torch

# Anchors of a perceptually ordered dark-to-bright colour map (magma-like).
_ANCHORS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


def colorize(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``[H, W]`` floats -> ``[H, W, 3]`` uint8 through the colour map, clipped to [low, high]."""
    position = np.clip((values - low) / max(high - low, 1e-8), 0, 1) * (len(_ANCHORS) - 1)
    index = np.minimum(position.astype(int), len(_ANCHORS) - 2)
    fraction = (position - index)[..., None]
    return (_ANCHORS[index] * (1 - fraction) + _ANCHORS[index + 1] * fraction).astype(np.uint8)


def spectrogram_strip(*spectrograms: torch.Tensor, gap: int = 2) -> np.ndarray:
    """Log-mels ``[T, F]`` stacked top to bottom, low frequencies down, on the colour scale
    of the first one, as one ``[H, W, 3]`` uint8 picture."""
    first = spectrograms[0].detach().float().cpu().numpy()
    low, high = np.percentile(first, 1), np.percentile(first, 99)
    rows = []
    for spectrogram in spectrograms:
        rows.append(colorize(spectrogram.detach().float().cpu().numpy().T[::-1], low, high))
        rows.append(np.full((gap, first.shape[0], 3), 255, dtype=np.uint8))
    return np.concatenate(rows[:-1])
