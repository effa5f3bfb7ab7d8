"""The charts and pictures of ssast.visualize, and the W&B line charts of ssast.train.module."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib.colors import to_rgb

from finetune.module import confusion_picture
from ssast.train.module import log_line_chart
from ssast.train.probe_callbacks import ProbeMonitor, ProbePoint
from ssast.visualize import (DPI, confusion_matrix_figure, line_chart, render, spectrogram_figure, spectrogram_strip,
                             xy_chart)


def texts(items) -> list[str]:
    return [item.get_text() for item in items]


def test_xy_chart_labels_every_panel_and_lays_them_out_in_rows():
    panels = {f"task {index}": {"linear": [(0.0, 0.2), (1.5, 0.6)], "floor": [(0.0, 0.4), (1.5, 0.4)], "none": []}
              for index in range(4)}
    figure = xy_chart(panels, x_label="pretraining minutes", colours={"linear": "tab:red"}, baselines=("floor",),
                      columns=3, title="learning")
    assert len(figure.axes) == 4  # two rows of three, the unfilled end removed
    assert figure.get_suptitle() == "learning"
    for ax, title in zip(figure.axes, panels):
        assert ax.get_title() == title
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("pretraining minutes", "accuracy")
        assert texts(ax.get_legend().get_texts()) == ["linear", "floor"]  # a series without points is left out
        linear, floor = ax.get_lines()
        assert to_rgb(linear.get_color()) == to_rgb("tab:red") and linear.get_marker() == "o"
        assert floor.get_linestyle() == "--" and floor.get_marker() == "None"
        assert ax.get_ylim()[0] == 0.0 and ax.xaxis.get_gridlines()[0].get_visible()
        assert texts(ax.get_xticklabels())  # ticks with their values
    assert [ax.get_subplotspec().rowspan.start for ax in figure.axes] == [0, 0, 0, 1]


def test_line_chart_draws_values_at_whole_epochs():
    figure = line_chart({"events": {"scratch": [0.1, 0.5, 0.9], "pretrained": [0.3, 0.7]}})
    (ax,) = figure.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "accuracy")
    scratch, pretrained = ax.get_lines()
    assert list(scratch.get_xdata()) == [1, 2, 3] and list(pretrained.get_ydata()) == [0.3, 0.7]
    render(figure)  # ticks are placed when drawn
    assert all(float(tick).is_integer() for tick in ax.get_xticks())


def test_render_is_an_rgb_picture_of_the_figure_size():
    picture = render(line_chart({"a": {"b": [1.0, 2.0]}}))
    assert picture.shape == (round(3.0 * DPI), round(4.0 * DPI), 3) and picture.dtype == np.uint8
    assert picture.flags.c_contiguous and picture.std() > 0


def test_spectrogram_figure_has_a_titled_row_per_spectrogram_on_the_first_ones_colour_scale():
    torch.manual_seed(0)
    first = torch.randn(64, 16)
    figure = spectrogram_figure(first, 3 * first, titles=("input", "louder"))
    *rows, colour_bar = figure.axes
    assert [ax.get_title(loc="left") for ax in rows] == ["input", "louder"]
    assert [ax.get_ylabel() for ax in rows] == ["mel bins"] * 2 and rows[-1].get_xlabel() == "frames"
    assert colour_bar.get_ylabel() == "log-mel (normalized)"
    limits = [ax.get_images()[0].get_clim() for ax in rows]
    assert limits[0] == limits[1] == pytest.approx(tuple(np.percentile(first.numpy(), [1, 99])))
    image = rows[0].get_images()[0]
    assert np.array_equal(image.get_array(), first.numpy().T) and image.origin == "lower"  # low frequencies down


def test_spectrogram_strip_renders_and_checks_its_titles():
    picture = spectrogram_strip(torch.randn(32, 8), torch.randn(32, 8), titles=("a", "b"))
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
    with pytest.raises(ValueError, match="2 spectrograms but 1 titles"):
        spectrogram_strip(torch.randn(32, 8), torch.randn(32, 8), titles=("a",))


def test_confusion_matrix_normalizes_rows_and_labels_its_axes():
    matrix = torch.tensor([[3, 1], [0, 0]])
    figure = confusion_matrix_figure((matrix / matrix.sum(1, keepdim=True).clamp_min(1)).numpy())
    ax, colour_bar = figure.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert colour_bar.get_ylabel() == "fraction of the true class"
    assert ax.get_images()[0].get_array().tolist() == [[0.75, 0.25], [0.0, 0.0]]
    picture = confusion_picture(matrix)
    assert picture.ndim == 3 and picture.dtype == np.uint8 and picture.std() > 0


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger whose run is a list of what was logged (no W&B run is started)."""

    def __init__(self) -> None:
        self.logged: list[dict] = []

    @property
    def experiment(self):
        return SimpleNamespace(log=self.logged.append)


def test_log_line_chart_logs_a_native_wandb_chart_to_wandb_only():
    wandb_logger = RecordingWandbLogger()
    other = SimpleNamespace(log_metrics=lambda *args, **kwargs: pytest.fail("only W&B gets line charts"))
    module = SimpleNamespace(loggers=[other, wandb_logger], global_step=7)
    series = {"linear probe": [(0.0, 0.2), (1.5, 0.6)], "kNN": [(0.0, 0.1)], "none": []}
    log_line_chart(module, "probe/events/learning", series, title="events", x_label="pretraining minutes")
    (logged,) = wandb_logger.logged
    chart = logged["probe/events/learning"]
    assert chart.table.data == [[0.0, "linear probe", 0.2], [1.5, "linear probe", 0.6], [0.0, "kNN", 0.1]]
    log_line_chart(module, "empty", {"none": []}, title="", x_label="")
    assert len(wandb_logger.logged) == 1  # nothing to draw, nothing logged


def test_probe_monitor_charts_its_history_against_minutes_at_the_end(monkeypatch):
    monitor = ProbeMonitor([{"name": "events", "train": "unused", "test": "unused"}])
    monitor.history["events"] = [ProbePoint(step=0, seconds=0.0, knn=0.1, linear=0.2),
                                 ProbePoint(step=10, seconds=90.0, knn=0.3, linear=0.6)]
    monkeypatch.setattr(monitor, "run", lambda trainer, pl_module: {})  # the last probe is taken: no encoder here
    wandb_logger = RecordingWandbLogger()
    monitor.on_train_end(SimpleNamespace(global_step=10, is_global_zero=True),
                         SimpleNamespace(loggers=[wandb_logger], global_step=10))
    (logged,) = wandb_logger.logged
    chart = logged["probe/events/learning"]
    assert chart.table.data == [[0.0, "linear probe", 0.2], [1.5, "linear probe", 0.6],
                                [0.0, "kNN", 0.1], [1.5, "kNN", 0.3]]
