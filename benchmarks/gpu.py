"""The figures a lent GPU must give on its first run (``make bench-gpu``): one JSON line each,
in about 8 minutes on one H100 or H200. Without CUDA the same lines come out at CPU size (the
mini model, short clips, eager only), with ``null`` where a figure needs CUDA; a test runs
that form.

* ``gpu_step``, one per method: ``benchmarks/pretrain_step.py --alone`` at ViT-B, 1,024
  frames and the papers' per-GPU batches (MSPM 6, SSAST's 24 over 4 GPUs, one and two
  passes; ASiT 32; EAT 12 with its 16 clones), bf16 autocast with PyTorch's fused attention,
  eager and compiled: step time, clips/s, counted TFLOP per step, MFU against the GPU's
  dense bf16 peak, peak memory, and each step's FLOP/s over a matmul's on the same device.
* ``gpu_largest_batch``, one per method: the largest per-GPU batch whose eager bf16 step
  fits, doubling from the paper's until the GPU runs out of memory (CUDA only).
* ``gpu_fbank``: the batched fbank on the device, clips/s.
* ``gpu_input``: the training reader (random crops, mixup 0.5, EAT's roll and gain) from FLAC
  shards of 10.24 s clips, with the machine's cores as workers: clips/s, and per worker.
* ``gpu_fit``: a short real ``ssast-pretrain fit`` (EAT's recipe at the step's size and batch,
  bf16 on a GPU) from those shards with :class:`ssast.train.callbacks.DataWait`: the share of
  step-to-step time the run waits between steps (for data, and for the host), and the host
  synchronizations inside each step (CUDA only; the goal is none).

* ``gpu_ddp``: two ranks (NCCL on two GPUs; gloo without CUDA): a short fit whose validation
  splits uneven shards over the ranks ends with the same step count on both, and with one
  rank stopped (``SIGSTOP``) the other ends within the collective timeout in the one line that
  names the lost rank. NCCL runs one rank per GPU, so on a one-GPU machine the line says so
  and holds nulls.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
# The papers' per-GPU batches, what else each method's step is run with, and its CPU-sized form.
METHODS: dict[str, dict[str, Any]] = {
    "mspm": {"batch": 6, "args": ["--passes", "1,2", "--mask-patches", "400"],  # SSAST: 24 over 4 GPUs
             "cpu_args": ["--passes", "1,2", "--mask-patches", "10"]},
    "asit": {"batch": 32, "args": [], "cpu_args": ["--view-frames", "48"]},  # 256 over 8 GPUs
    "eat": {"batch": 12, "args": ["--clone-batch", "16"], "cpu_args": ["--clone-batch", "2"]},  # 48 over 4 GPUs
}


def load_benchmark(name: str) -> Any:
    """A script of ``benchmarks/`` as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def last_json_line(command: list[str], timeout: float) -> dict[str, Any]:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} … failed ({result.returncode}): {result.stderr[-1500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def step_line(method: str, settings: dict[str, Any], cuda: bool) -> dict[str, Any]:
    size, frames, batch = ("base", 1024, settings["batch"]) if cuda else ("mini", 64, 2)
    extra = settings["args"] if cuda else [*settings["cpu_args"], "--warmup", "0", "--steps", "1"]
    command = [sys.executable, "benchmarks/pretrain_step.py", "--method", method, "--alone", "--size", size,
               "--batch", str(batch), "--frames", str(frames), "--precision", "bf16" if cuda else "fp32",
               "--compile", "eager,compiled" if cuda else "eager", *extra]
    report = last_json_line(command, timeout=900)
    line: dict[str, Any] = {"benchmark": "gpu_step", "method": method, "device_name": report["device_name"],
                            "size": size, "frames": frames, "batch": batch, "matmul": report["matmul"]}
    for combo, results in report["variants"].items():
        for name, figures in results.items():
            figures = dict(figures)
            figures["clips_per_s"] = round(batch / figures["step_s"], 2)
            figures.setdefault("mfu", None)
            line[f"{name}/{combo}"] = figures
    return line


def largest_batch(method: str, start: int, cuda: bool) -> int | None:
    """The largest batch, doubling from ``start``, whose eager bf16 step at ViT-B fits."""
    if not cuda:
        return None
    pretrain_step = load_benchmark("pretrain_step")
    from pretrain.base import optimization_step

    builders = {
        "mspm": lambda: pretrain_step.build_mspm("base", "patch", 1024, 400, 2),
        "asit": lambda: pretrain_step.build_asit("base", "patch", 1024, 592, 1),
        "eat": lambda: pretrain_step.build_eat("base", "patch", 1024, 16),
    }
    fits, batch = None, start
    while batch <= 4096:
        try:
            model = builders[method]().cuda().train()
            optimizer = pretrain_step.method_optimizer(model)
            fbank = torch.randn(batch, 1024, 128, device="cuda")
            optimization_step(model, optimizer, fbank, autocast=True)
            torch.cuda.synchronize()
            fits, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            model = optimizer = fbank = None
            gc.collect()
            torch.cuda.empty_cache()
    return fits


def eat_fit(shards: Path, out: Path, cuda: bool, *options: str) -> list[str]:
    """An EAT ``ssast-pretrain fit`` command from ``shards`` into ``out`` (ViT-B, bf16 on a GPU;
    the mini model at CPU size), with ``options`` after the recipe's."""
    sizing = ([] if cuda else ["--model.init_args.size", "mini", "--model.init_args.clone_batch", "2",
                               "--data.target_length", "128"])
    return [
        str(Path(sys.executable).with_name("ssast-pretrain")), "fit", "--config", "configs/pretrain/eat.yaml",
        "--data.train", str(shards), "--data.val", str(shards), "--data.stats", "null",
        "--trainer.accelerator", "gpu" if cuda else "cpu", "--trainer.precision", "bf16-mixed" if cuda else "32-true",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
        *sizing, *options,
    ]


def data_wait(every_n_steps: int, count_syncs: bool) -> str:
    return json.dumps({"class_path": "ssast.train.callbacks.DataWait",
                       "init_args": {"every_n_steps": every_n_steps, "count_syncs": count_syncs}})


def fit_line(shards: Path, out: Path, cuda: bool, workers: int) -> dict[str, Any]:
    """A short EAT ``ssast-pretrain fit`` from ``shards`` with DataWait; its summary."""
    steps = 60 if cuda else 6
    batch = METHODS["eat"]["batch"] if cuda else 2
    command = eat_fit(shards, out, cuda, "--data.num_workers", str(workers), "--global_batch_size", str(batch),
                      "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                      "--trainer.num_sanity_val_steps", "0", "--trainer.devices", "1",
                      "--trainer.callbacks+", data_wait(10 if cuda else 2, cuda))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"ssast-pretrain fit failed ({result.returncode}): {result.stderr[-1500:]}")
    summary = json.loads((out / "data_wait.json").read_text())
    return {"benchmark": "gpu_fit", "method": "eat", "size": "base" if cuda else "mini", "batch": batch,
            "workers": workers, "max_steps": steps, "seconds": round(time.perf_counter() - start, 1), **summary}


class RankPids(L.Callback):
    """Writes ``rank<r>.pid`` into ``folder`` once the rank has trained a step (both ranks are
    then past their setup)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        path = self.folder / f"rank{trainer.global_rank}.pid"
        if not path.exists():
            partial = path.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.rename(path)


def ddp_line(shards: Path, out: Path, cuda: bool) -> dict[str, Any]:
    """Two ranks: equal steps over uneven shards, and a stopped rank that ends the run."""
    line: dict[str, Any] = {"benchmark": "gpu_ddp", "backend": "nccl" if cuda else "gloo", "ranks": 2}
    if cuda and torch.cuda.device_count() < 2:
        return line | {"steps_per_rank": None, "lost_rank_ended_run_s": None, "lost_rank_line": None,
                       "why_null": "NCCL runs one rank per GPU and one GPU is lent"}
    batch = 2 * (METHODS["eat"]["batch"] if cuda else 2)
    two_ranks = ["--data.num_workers", "0", "--global_batch_size", str(batch), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp", "--collective_timeout_minutes", "0.1"]
    # Equal steps: every rank trains max_steps and validates its share of the uneven shards (16, 16, 8 clips).
    run = out / "equal"
    command = eat_fit(shards, run, cuda, *two_ranks, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                      "--trainer.num_sanity_val_steps", "0", "--trainer.callbacks+", data_wait(2, False))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the two-rank fit failed ({result.returncode}): {result.stderr[-1500:]}")
    line["steps_per_rank"] = [json.loads((run / name).read_text())["steps"]
                              for name in ("data_wait.json", "data_wait.rank1.json")]
    # No hang: rank 1 stopped once both train; rank 0 must end within the 6 s collective timeout.
    run = out / "lost"
    run.mkdir(parents=True)
    pids = json.dumps({"class_path": "gpu.RankPids", "init_args": {"folder": str(run)}})
    command = eat_fit(shards, run, cuda, *two_ranks, "--trainer.max_steps", "100000",
                      "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                      "--trainer.callbacks+", pids)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCHMARKS), str(REPO)]))
    with (run / "stderr.txt").open("w") as stderr:  # a file: a stopped rank would hold a pipe open
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 600
    try:
        while not all((run / f"rank{rank}.pid").exists() for rank in (0, 1)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the two ranks did not start training: {(run / 'stderr.txt').read_text()[-1500:]}")
            time.sleep(0.2)
        lost = int((run / "rank1.pid").read_text())
        os.kill(lost, signal.SIGSTOP)
        stopped = time.monotonic()
        process.wait(timeout=300)
        line["lost_rank_ended_run_s"] = round(time.monotonic() - stopped, 1)
    finally:  # nothing of the run outlives the benchmark, the stopped rank least of all
        process.kill()
        if (run / "rank1.pid").exists():
            try:
                os.kill(int((run / "rank1.pid").read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    last = (run / "stderr.txt").read_text().strip().splitlines()[-1]
    line["lost_rank_line"] = last if last.startswith("ssast-pretrain: error: rank 0 lost rank 1") else None
    line["lost_rank_exit_code"] = process.returncode
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="mspm,asit,eat", help="a comma list of mspm, asit and eat")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="input workers (default: every core)")
    parser.add_argument("--skip", default="", help="a comma list of lines to leave out: step, largest_batch, "
                                                   "fbank, input, fit, ddp")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if set(methods) - set(METHODS) or skip - {"step", "largest_batch", "fbank", "input", "fit", "ddp"}:
        parser.error("--methods takes mspm, asit and eat; --skip step, largest_batch, fbank, input, fit and ddp")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    for method in methods:
        if "step" not in skip:
            emit(step_line(method, METHODS[method], cuda))
        if "largest_batch" not in skip:
            emit({"benchmark": "gpu_largest_batch", "method": method, "size": "base", "frames": 1024,
                  "precision": "bf16", "largest_batch": largest_batch(method, METHODS[method]["batch"], cuda)})

    features = load_benchmark("features")
    with tempfile.TemporaryDirectory() as folder:
        clips = 256 if cuda else 16
        clips = clips if "ddp" in skip else max(clips, 40)  # shards of 16, 16, 8 ...: uneven over two ranks
        shards = features.make_shards(Path(folder) / "shards", clips, features.Fbank().num_samples(1024) / 16000)
        if "fbank" not in skip:
            waveforms = torch.stack([features.decode_audio(sample["flac"])[0]
                                     for sample in features.islice(features.wds.WebDataset(shards, shardshuffle=False), 64 if cuda else 8)])
            batched, _, _ = features.time_fbank_only(waveforms, device, repeats=5 if cuda else 1)
            emit({"benchmark": "gpu_fbank", "device": str(device), "clips": len(waveforms),
                  "clip_seconds": round(waveforms.shape[1] / 16000, 3), "clips_per_s": round(len(waveforms) / batched, 1)})
        if "input" not in skip:
            batch = 32 if cuda else 4
            elapsed, count = features.time_training_reader(shards, batch, args.workers, 40 if cuda else 2, 0.5, True)
            emit({"benchmark": "gpu_input", "format": "flac", "workers": args.workers, "batch": batch,
                  "mixup": 0.5, "roll_gain": True, "clips_per_s": round(count / elapsed, 1),
                  "clips_per_s_per_worker": round(count / elapsed / max(1, args.workers), 1)})
        if "fit" not in skip:
            emit(fit_line(Path(folder) / "shards", Path(folder) / "fit", cuda, args.workers))
        if "ddp" not in skip:
            emit(ddp_line(Path(folder) / "shards", Path(folder) / "ddp", cuda))
    emit({"benchmark": "gpu_done", "device_name": torch.cuda.get_device_name() if cuda else "cpu",
          "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
