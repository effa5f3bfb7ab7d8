"""ssast-finetune end to end on a small demo corpus: fit, test, predict, cross-validation."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.cli import cross_validate, main
from ssast import EncoderConfig, save_encoder
from ssast.checkpoints import Preprocessing
from ssast.encoder import ASTEncoder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(small_demo_corpus):
    return small_demo_corpus


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder") / "encoder.safetensors"
    torch.manual_seed(0)
    config = EncoderConfig.from_size("mini", fshape=128, tshape=2, fstride=128, tstride=2, input_tdim=256)
    save_encoder(ASTEncoder(config), path, Preprocessing(-5.3, 3.5, 256))  # what the demo recipes expect
    return path


def args(corpus: Path, run: Path, *extra: str) -> list[str]:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    return [
        "--config", str(REPO / "configs/finetune/demo.yaml"), "--config", str(REPO / "configs/finetune/demo_events.yaml"),
        "--data.train", str(corpus / "events/train"),
        "--data.val", str(corpus / "events/val"), "--data.test", str(corpus / "events/test"),
        "--data.batches_per_epoch", "4", "--data.num_workers", "1", "--data.batch_size", "8",
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false", *extra,
    ]


def test_fit_test_predict(corpus, encoder_file, tmp_path, capsys):
    run = tmp_path / "run"
    main(["fit", *args(corpus, run, "--model.init_from", str(encoder_file))])
    best = run / "checkpoints/best.ckpt"
    assert best.exists()
    main(["test", *args(corpus, run, "--model.init_from", str(encoder_file)), "--ckpt_path", str(best)])
    assert "test/acc" in capsys.readouterr().out

    main(["predict", *args(corpus, run, "--model.init_from", str(encoder_file)), "--ckpt_path", str(best),
          "--data.predict", str(corpus / "events/test")])
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    classes = (corpus / "events/classes.txt").read_text().split()
    test_clips = json.loads((corpus / "demo.json").read_text())["tasks"]["events"]["clips"]["test"]
    assert len(rows) == test_clips and len({row["key"] for row in rows}) == test_clips
    assert all(len(row["labels"].split(";")) == 5 and set(row["labels"].split(";")) <= set(classes) for row in rows)

    callback = {"class_path": "finetune.callbacks.WritePredictions",
                "init_args": {"path": "embeddings/test.npy", "embeddings": True}}
    main(["predict", *args(corpus, run, "--model.init_from", str(encoder_file)), "--ckpt_path", str(best),
          "--data.predict", str(corpus / "events/test"), "--trainer.callbacks+", json.dumps(callback)])
    vectors = np.load(run / "embeddings/test.npy")
    assert vectors.shape == (test_clips, 192)
    assert len((run / "embeddings/test.keys.txt").read_text().split()) == test_clips


def test_from_scratch_and_cross_validation(corpus, tmp_path, capsys):
    folds = tmp_path / "folds"
    for index, split in enumerate(["train", "val", "test"], start=1):
        shutil.copytree(corpus / "events" / split, folds / f"fold{index}")
    for name in ("classes.txt", "stats.json"):
        shutil.copy(corpus / "events" / name, folds / name)
    run = tmp_path / "cv"
    summary = cross_validate([*args(corpus, run, "--model.init_from", "null", "--trainer.max_epochs", "2"),
                              "--data.train", str(folds)])
    assert set(summary["folds"]) == {"fold1", "fold2", "fold3"} and summary["epoch"] in (1, 2)
    assert all(0 <= fold["at_epoch"] <= 1 and len(fold["curve"]) == 2 for fold in summary["folds"].values())
    assert "3-fold val/acc at epoch" in capsys.readouterr().out
    assert json.loads((run / "cv.json").read_text()) == summary
    for fold in ("fold1", "fold2", "fold3"):
        assert (run / fold / "history.csv").exists() and (run / fold / "result.json").exists()
