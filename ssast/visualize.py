"""Charts and spectrogram pictures for reports and dashboards, drawn with matplotlib.

Every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas: headless, and
free of pyplot's global state (no backend switch, no figure manager keeping figures alive
in a long run). matplotlib is imported inside the functions, so ``import ssast`` stays light.

* :func:`xy_chart` and :func:`line_chart`: panels of line charts (the demo's
  ``learning.png`` and ``val_curves.png``, the learning benchmark's picture);
* :func:`spectrogram_figure` / :func:`spectrogram_strip`: log-mels one above the other on
  one colour scale (the pictures pretraining methods log);
* :func:`confusion_matrix_figure`: a finetune's row-normalized confusion matrix;
* :func:`render`: a figure as the ``[H, W, 3]`` uint8 array loggers take (W&B, TensorBoard).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Points = Sequence[tuple[float, float]]
DPI = 100
PANEL_SIZE = (4.0, 3.0)  # inches of one chart panel
SPECTROGRAM_ROW_HEIGHT = 1.7  # inches
SPECTROGRAM_COLOUR_MAP = "magma"  # perceptually ordered, dark to bright, readable in grey


def new_figure(width: float, height: float) -> Figure:
    """An empty ``width`` x ``height`` inches figure on an Agg canvas, laid out by
    matplotlib's constrained layout (titles, labels and colour bars do not overlap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure: render() and savefig() draw on it
    return figure


def render(figure: Figure) -> np.ndarray:
    """The figure drawn as an ``[H, W, 3]`` uint8 RGB array."""
    figure.canvas.draw()
    return np.ascontiguousarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])


def xy_chart(
    panels: Mapping[str, Mapping[str, Points]],
    x_label: str,
    y_label: str = "accuracy",
    colours: Mapping[str, str] | None = None,
    baselines: Collection[str] = (),
    columns: int | None = None,
    title: str | None = None,
) -> Figure:
    """Line charts, one panel per ``{title: {series: [(x, y), ...]}}`` entry, each series a
    line with a marker at each point, with its legend, labelled axes and a light grid.

    Args:
        panels: the series of each panel, by the panel's title; a series without points is
            left out of its panel.
        x_label: the x axis of every panel, with its unit (``"pretraining minutes"``).
        y_label: the y axis of every panel. Its range starts at 0 (or lower) so that a gain
            is seen to scale.
        colours: a matplotlib colour per series name (the same in every panel); names it
            lacks take the default colour cycle.
        baselines: series names drawn dashed without markers: reference levels, such as
            the log-mel-statistics floor.
        columns: panels per row (default: all in one row).
        title: the figure's title above the panels.
    """
    columns = columns or max(len(panels), 1)
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + (0.3 if title else 0.0))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (panel_title, series) in zip(axes, panels.items()):
        for name, points in series.items():
            if not points:
                continue
            xs, ys = zip(*points)
            style = {"linestyle": "--"} if name in baselines else {"marker": "o", "markersize": 3}
            ax.plot(xs, ys, label=name, color=(colours or {}).get(name), **style)
        ax.set_title(panel_title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:  # the unfilled end of the last row
        ax.remove()
    if title:
        figure.suptitle(title)
    return figure


def line_chart(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    x_label: str = "epoch",
    y_label: str = "accuracy",
    colours: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """:func:`xy_chart` of series given as values only, drawn at x = 1, 2, ... (e.g. a
    validation per epoch)."""
    from matplotlib.ticker import MaxNLocator

    points = {panel: {name: list(enumerate(values, start=1)) for name, values in series.items()}
              for panel, series in panels.items()}
    figure = xy_chart(points, x_label, y_label, colours=colours, title=title)
    for ax in figure.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
    return figure


def spectrogram_figure(*spectrograms: torch.Tensor, titles: Sequence[str] = ()) -> Figure:
    """Log-mels ``[T, F]`` one above the other (time across, low frequencies down), a row
    per spectrogram titled by ``titles``, on one colour scale, the first one's 1st to 99th
    percentile (what a method makes of the input is seen on the input's scale), with its
    colour bar."""
    if titles and len(titles) != len(spectrograms):
        raise ValueError(f"{len(spectrograms)} spectrograms but {len(titles)} titles")
    first = spectrograms[0].detach().float().cpu().numpy()
    low, high = np.percentile(first, [1, 99])
    figure = new_figure(8.0, 0.6 + SPECTROGRAM_ROW_HEIGHT * len(spectrograms))
    axes = figure.subplots(len(spectrograms), 1, sharex=True, squeeze=False)[:, 0]
    for index, (ax, spectrogram) in enumerate(zip(axes, spectrograms)):
        image = ax.imshow(spectrogram.detach().float().cpu().numpy().T, origin="lower", aspect="auto",
                          interpolation="nearest", cmap=SPECTROGRAM_COLOUR_MAP, vmin=low, vmax=high)
        if titles:
            ax.set_title(titles[index], loc="left")
        ax.set_ylabel("mel bins")
    axes[-1].set_xlabel("frames")
    figure.colorbar(image, ax=list(axes), label="log-mel (normalized)")
    return figure


def spectrogram_strip(*spectrograms: torch.Tensor, titles: Sequence[str] = ()) -> np.ndarray:
    """:func:`spectrogram_figure` rendered as an ``[H, W, 3]`` uint8 picture."""
    return render(spectrogram_figure(*spectrograms, titles=titles))


def confusion_matrix_figure(rows: np.ndarray) -> Figure:
    """A confusion matrix ``[classes, classes]`` (rows: true class, each normalized to sum
    to 1; columns: predicted class) as a heat map from 0 to 1 with its colour bar."""
    from matplotlib.ticker import MaxNLocator

    side = min(10.0, 3.0 + 0.15 * len(rows))  # readable cells for a few classes, bounded for hundreds
    figure = new_figure(side + 1.0, side)
    ax = figure.subplots()
    image = ax.imshow(rows, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # class indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (rows normalized)")
    figure.colorbar(image, ax=ax, label="fraction of the true class")
    return figure
