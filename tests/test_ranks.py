"""Two CPU ranks (gloo), one of them stopped or killed mid-run: the other ends within the
collective timeout with one line that names the rank it lost and how to go on (issue 37,
finding 2: a stopped rank held the other for good; a killed one ended it with a gloo
traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import recipe_args
from ssast.train.ranks import DEFAULT_COLLECTIVE_TIMEOUT_MINUTES, with_collective_timeout

REPO = Path(__file__).resolve().parents[1]

RANK_PIDS = '''
import os
from pathlib import Path

import lightning as L


class RankPids(L.Callback):
    """Writes rank<r>.pid once the rank has trained a step (so both are past their setup)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = self.folder / f"rank{trainer.global_rank}.pid"
        if not path.exists():
            path.write_text(str(os.getpid()))
'''


def test_the_ddp_strategies_are_built_with_the_timeout():
    from datetime import timedelta

    strategy = with_collective_timeout("ddp_find_unused_parameters_true", 0.5)
    assert strategy._timeout == timedelta(seconds=30) and strategy._ddp_kwargs["find_unused_parameters"]
    assert with_collective_timeout("auto", 0.5) == "auto"  # one device: nothing to wait for
    assert 4 <= DEFAULT_COLLECTIVE_TIMEOUT_MINUTES <= 30
    with pytest.raises(ValueError, match="collective_timeout_minutes must be positive"):
        with_collective_timeout("ddp", 0)


def two_ranks(corpus: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A two-rank pretraining run with a 6 s collective timeout, and rank 1's pid once both
    ranks train."""
    (tmp_path / "rank_pids.py").write_text(RANK_PIDS)
    callback = {"class_path": "rank_pids.RankPids", "init_args": {"folder": str(tmp_path)}}
    args = ["fit", *recipe_args("pretrain", "mspm_demo"), "--data.train", str(corpus / "unlabeled"),
            "--data.val", "null", "--data.batch_size", "2", "--data.num_workers", "0", "--data.stats", "audioset",
            "--trainer.max_epochs", "1000", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.callbacks+", json.dumps(callback),
            "--collective_timeout_minutes", "0.1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    # Output to a file: a stopped rank would hold a pipe open, and reading it would wait for good.
    with (tmp_path / "stderr.txt").open("w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "pretrain.cli", *args], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"rank{rank}.pid").exists() for rank in (0, 1)):
        assert run.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "the ranks did not start training"
        time.sleep(0.2)
    time.sleep(0.2)  # the pid file is written before its content: read it whole
    return run, int((tmp_path / "rank1.pid").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "state"), [(signal.SIGSTOP, "is stopped"), (signal.SIGKILL, "has exited")])
def test_a_lost_rank_ends_the_run_in_one_line_within_the_timeout(fault, state, tiny_corpus, tmp_path):
    run, rank1 = two_ranks(tiny_corpus, tmp_path)
    try:
        os.kill(rank1, fault)
        lost_at = time.monotonic()
        run.wait(timeout=120)
        waited = time.monotonic() - lost_at
    finally:
        run.kill()
        if fault == signal.SIGSTOP:
            try:
                os.kill(rank1, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stderr = (tmp_path / "stderr.txt").read_text()
    last = stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and last.startswith(f"ssast-pretrain: error: rank 0 lost rank 1 (pid {rank1}) {state}"), \
        stderr[-3000:]
    assert last.endswith("run the same command with --ckpt_path last to go on from the last checkpoint")
    assert "Traceback" not in stderr
    assert waited < 60  # the 6 s timeout and the teardown, not the 30 minutes of torch's default
