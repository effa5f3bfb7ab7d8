"""ssast-pretrain end to end on a small demo corpus: loss falls, exports load, resume
continues, and DDP over two CPU processes neither hangs nor drifts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ssast
from pretrain.cli import main

from helpers import logged, recipe_args

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(small_demo_corpus):
    return small_demo_corpus


def cli_args(corpus: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    return [
        "fit", *recipe_args("pretrain", "mspm_demo"),
        "--data.train", str(corpus / "unlabeled"), "--data.val", str(corpus / "events/val"),
        "--data.batch_size", "8", "--data.batches_per_epoch", "10",
        "--data.num_workers", "1",
        "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false", *extra,
    ]


def test_demo_recipe_learns_exports_and_resumes(corpus, tmp_path):
    run = tmp_path / "run"
    main(cli_args(corpus, run, epochs=3))
    losses, accuracies = logged(run, "train/loss"), logged(run, "val/acc")
    assert len(losses) >= 5 and len(accuracies) == 3
    assert sum(losses[-2:]) / 2 < 0.95 * sum(losses[:2]) / 2  # the loss falls on the demo corpus (seen: 6.4 -> 5.8)
    assert logged(run, "data/skipped_samples")[-1] == 0

    exported = ssast.load_checkpoint(run / "encoder.safetensors")
    assert exported.encoder.config.input_tdim == 256 and exported.preprocessing.target_length == 256
    stats = json.loads((corpus / "unlabeled/stats.json").read_text())
    assert exported.preprocessing.mean == pytest.approx(stats["mean"])
    last = run / "checkpoints/last.ckpt"
    from_lightning = ssast.load_encoder(last)
    for name, tensor in exported.encoder.state_dict().items():
        assert torch.equal(tensor, from_lightning.state_dict()[name]), name

    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 30
    main(cli_args(corpus, run, 4, "--ckpt_path", str(last)))
    resumed = torch.load(last, weights_only=False)  # the resumed run saves at the same path
    assert resumed["global_step"] == 40
    scheduler = resumed["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 40  # the schedule continued rather than restarting


def test_ddp_on_two_cpu_processes_with_uneven_shards(corpus, tmp_path):
    import webdataset as wds

    # Uneven shards: 2, 9 and 5 clips, so ranks see different shard sizes.
    samples = list(wds.WebDataset(str(next((corpus / "unlabeled").glob("*.tar"))), shardshuffle=False))
    shards = tmp_path / "shards"
    shards.mkdir()
    start = 0
    for index, size in enumerate([2, 9, 5]):
        with wds.TarWriter(str(shards / f"part-{index}.tar")) as sink:
            for sample in samples[start : start + size]:
                sink.write({k: v for k, v in sample.items() if not k.startswith("__url")})
        start += size
    (tmp_path / "steps").mkdir()
    callback = {"class_path": "rank_steps.RankSteps", "init_args": {"folder": str(tmp_path / "steps")}}
    (tmp_path / "rank_steps.py").write_text(RANK_STEPS)
    args = cli_args(corpus, tmp_path / "run", 2,
                    "--data.train", str(shards), "--data.val", str(shards),
                    "--data.stats", "audioset", "--data.batches_per_epoch", "4",
                    "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                    "--trainer.callbacks+", json.dumps(callback))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), WANDB_MODE="offline")
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = [json.loads((tmp_path / "steps" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert counts[0] == counts[1] == {"global_step": 8, "train_batches": 8}


RANK_STEPS = '''
import json
from pathlib import Path

import lightning as L


class RankSteps(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder, self.batches = Path(folder), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        counts = {"global_step": trainer.global_step, "train_batches": self.batches}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(counts))
'''
