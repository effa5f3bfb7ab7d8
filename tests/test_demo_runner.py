"""ssast-demo end to end with tiny step counts: pretrain, six finetunes, table, report, plot."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssast import save_encoder
from ssast.checkpoints import Preprocessing
from ssast.encoder import LAYOUTS
from ssast.demo.runner import TaskResult, learning_chart, main, scratch_args, validation_chart, write_report
from ssast.train.callbacks import MetricHistory
from helpers import tiny_encoder


@pytest.mark.slow
def test_demo_writes_the_table_report_and_curves(small_demo_corpus, tmp_path, capsys):
    out = tmp_path / "demo"
    main([
        "--corpus", str(small_demo_corpus), "--out", str(out),
        "--pretrain-arg=--trainer.max_epochs", "--pretrain-arg=1",
        "--pretrain-arg=--data.batches_per_epoch", "--pretrain-arg=3",
        "--pretrain-arg=--data.batch_size", "--pretrain-arg=4",
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
    assert picture.shape[1] > picture.shape[0] and picture.std() > 0  # three panels side by side


def chart_results() -> list[TaskResult]:
    probes = [{"seconds": 0.0, "linear": 0.2, "knn": 0.1}, {"seconds": 90.0, "linear": 0.6, "knn": 0.4}]
    return [TaskResult(task, chance=0.1, curves={"scratch": [0.1, 0.3], "pretrained": [0.4, 0.7, 0.8]},
                       probes=probes, logmel=0.3) for task in ("events", "keywords")]


def test_learning_chart_draws_the_probes_against_minutes_above_the_log_mel_floor():
    figure = learning_chart(chart_results())
    assert [ax.get_title() for ax in figure.axes] == ["events", "keywords"]
    for ax in figure.axes:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("pretraining minutes", "test accuracy")
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["linear probe", "kNN", "log-mel statistics"]
        linear, knn, floor = ax.get_lines()
        assert list(linear.get_xdata()) == [0.0, 1.5] and list(knn.get_ydata()) == [0.1, 0.4]
        assert list(floor.get_ydata()) == [0.3, 0.3] and floor.get_linestyle() == "--"


def test_validation_chart_draws_each_finetune_by_epoch():
    figure = validation_chart(chart_results())
    for ax in figure.axes:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "validation accuracy")
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["scratch", "pretrained"]
        assert list(ax.get_lines()[1].get_xdata()) == [1, 2, 3]


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


def test_scratch_finetunes_build_the_pretrained_encoders_layout(tmp_path):
    save_encoder(tiny_encoder(), tmp_path / "plain.safetensors", Preprocessing(-5, 4, 96))
    save_encoder(tiny_encoder(**LAYOUTS["eat"]), tmp_path / "eat.safetensors", Preprocessing(-5, 4, 96))
    assert scratch_args(tmp_path / "plain.safetensors") == []
    assert scratch_args(tmp_path / "eat.safetensors") == ["--model.layout", "eat"]


def test_the_report_says_when_a_finetune_ends_below_its_own_probe(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tasks = {task: {"clips": {"train": 10}, "classes": 2} for task in ("events", "keywords", "speakers")}
    (corpus / "demo.json").write_text(json.dumps({"tasks": {**tasks, "unlabeled": {"clips": {"all": 20}}}}))
    probes = [{"seconds": 0.0, "linear": 0.5, "knn": 0.4}, {"seconds": 60.0, "linear": 0.9, "knn": 0.8}]
    results = [TaskResult(task, chance=0.5, test={"scratch": 0.7, "pretrained": pretrained}, probes=probes, logmel=0.6,
                          curves={"scratch": [0.6, 0.7], "pretrained": [0.5, pretrained]})
               for task, pretrained in (("events", 0.95), ("keywords", 0.9), ("speakers", 0.555))]
    text = write_report(results, tmp_path, Path("eat_demo.yaml"), corpus, {"finetuning": 60.0})
    below = [line for line in text.splitlines() if "below the linear probe" in line]
    assert len(below) == 1  # events and keywords ended at or above it
    assert below[0].startswith("**speakers: the finetune from the pretrained encoder ended 0.345 below")
    assert '"Few labels"' in below[0] and "--model.head_warmup_epochs=3" in below[0]
