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


def line_chart(
    panels: dict[str, dict[str, list[float]]],
    colours: dict[str, tuple[int, int, int]],
    y_label: str = "",
    size: tuple[int, int] = (320, 240),
) -> np.ndarray:
    """Small line charts side by side, one per panel (``{title: {series: values}}``), each
    series in its colour, x = 1..len(values), y from 0 to the largest value; a legend under
    them. An ``[H, W, 3]`` uint8 picture."""
    longest = max((len(values) for series in panels.values() for values in series.values()), default=1)
    points = {title: {name: [(i + 1.0, value) for i, value in enumerate(values)] for name, values in series.items()}
              for title, series in panels.items()}
    return xy_chart(points, colours, x_label=f"1 ... {longest} {y_label}", size=size)


def xy_chart(
    panels: dict[str, dict[str, list[tuple[float, float]]]],
    colours: dict[str, tuple[int, int, int]],
    x_label: str = "",
    size: tuple[int, int] = (320, 240),
) -> np.ndarray:
    """Small line charts side by side, one per panel (``{title: {series: [(x, y), ...]}}``),
    each series in its colour; x from the smallest to the largest x of the panel, y from 0 to
    the largest y; a legend under them. An ``[H, W, 3]`` uint8 picture."""
    from PIL import Image, ImageDraw

    width, height = size
    margin_left, margin_bottom, margin_top = 40, 24, 22
    legend = 22
    image = Image.new("RGB", (width * len(panels), height + legend), "white")
    draw = ImageDraw.Draw(image)
    for index, (title, series) in enumerate(panels.items()):
        left = index * width + margin_left
        right, top, bottom = (index + 1) * width - 10, margin_top, height - margin_bottom
        xs = [x for values in series.values() for x, _ in values] or [0.0, 1.0]
        x_low, x_high = min(xs), max(xs)
        top_value = max((y for values in series.values() for _, y in values), default=1.0) or 1.0
        draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
        draw.text((left, 4), title, fill="black")
        for fraction in (0.0, 0.5, 1.0):
            y = bottom - fraction * (bottom - top)
            draw.text((index * width + 4, y - 6), f"{fraction * top_value:.2f}", fill=(80, 80, 80))
        draw.text((left, bottom + 6), x_label, fill=(80, 80, 80))
        for name, values in series.items():
            span = (right - left) / max(x_high - x_low, 1e-9)
            points = [(left + (x - x_low) * span, bottom - y / top_value * (bottom - top)) for x, y in values]
            if len(points) > 1:
                draw.line(points, fill=colours[name], width=2)
            for x, y in points:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colours[name])
    x = margin_left
    for name, colour in colours.items():
        draw.rectangle((x, height + 6, x + 12, height + 16), fill=colour)
        draw.text((x + 16, height + 5), name, fill="black")
        x += 24 + 7 * len(name)
    return np.asarray(image)
