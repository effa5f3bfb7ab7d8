"""ssast-demo end to end with tiny step counts: pretrain, six finetunes, table, report, plot."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from ssast.demo.runner import main
from ssast.train.callbacks import MetricHistory
from ssast.visualize import line_chart


@pytest.mark.slow
def test_demo_writes_the_table_report_and_curves(small_demo_corpus, tmp_path, capsys):
    out = tmp_path / "demo"
    main([
        "--corpus", str(small_demo_corpus), "--out", str(out),
        "--pretrain-arg=--trainer.max_epochs", "--pretrain-arg=1",
        "--pretrain-arg=--data.init_args.batches_per_epoch", "--pretrain-arg=3",
        "--pretrain-arg=--data.init_args.batch_size", "--pretrain-arg=4",
        "--finetune-arg=--trainer.max_epochs", "--finetune-arg=2",
        "--finetune-arg=--data.batches_per_epoch", "--finetune-arg=2",
    ])
    printed = capsys.readouterr().out
    number = r"([+-]?[\d.]+)"
    row = r"^\| (events|keywords|speakers) \| test acc \| " + r" \| ".join([number] * 8) + r" \|$"
    rows = re.findall(row, printed, flags=re.M)
    assert [row[0] for row in rows] == ["events", "keywords", "speakers"]
    for _, *cells in rows:
        chance, scratch, pretrained, difference, untrained, probed, gain, logmel = map(float, cells)
        assert 0 < chance < 1 and all(0 <= value <= 1 for value in (scratch, pretrained, untrained, probed, logmel))
        assert difference == pytest.approx(pretrained - scratch, abs=2e-3)
        assert gain == pytest.approx(probed - untrained, abs=2e-3)
    probes = json.loads((out / "pretrain/probes.json").read_text())["tasks"]
    assert sorted(probes) == ["events", "keywords", "speakers"]
    assert all(len(task["probes"]) == 2 for task in probes.values())  # the untrained encoder, and the end
    assert np.asarray(Image.open(out / "learning.png")).std() > 0
    assert (out / "pretrain/encoder.safetensors").exists()
    for task in ("events", "keywords", "speakers"):
        for start in ("scratch", "pretrained"):
            assert (out / f"{task}-{start}/checkpoints/best.ckpt").exists()
    report = (out / "report.md").read_text()
    assert "| events | test acc |" in report and "val_curves.png" in report
    picture = np.asarray(Image.open(out / "val_curves.png"))
    assert picture.shape[1] == 3 * 320 and picture.std() > 0


def test_line_chart_draws_each_series_in_its_colour():
    colours = {"a": (200, 0, 0), "b": (0, 0, 200)}
    picture = line_chart({"one": {"a": [0.1, 0.5, 0.9], "b": [0.2, 0.2]}, "two": {"a": [1.0], "b": []}}, colours)
    assert picture.shape == (240 + 22, 2 * 320, 3) and picture.dtype == np.uint8
    for colour in colours.values():
        assert (picture == colour).all(axis=-1).sum() > 20


def test_metric_history_keeps_every_validation_but_sanity_checks():
    class Trainer:
        sanity_checking = False
        callback_metrics = {"val/acc": 0.5}

    history = MetricHistory(("val/acc", "val/missing"))
    trainer = Trainer()
    history.on_validation_end(trainer, None)
    trainer.sanity_checking = True
    history.on_validation_end(trainer, None)
    assert history.history == {"val/acc": [0.5], "val/missing": []}
