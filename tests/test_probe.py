"""Probes: kNN and linear-probe accuracy on synthetic embeddings, the log-mel statistics
against a hand computation, reading labeled shards, and the ProbeMonitor callback in a real
``Trainer.fit`` of a mini MSPM."""

import csv
import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from helpers import tiny_encoder
from pretrain.optimization import Optimization
from ssast.features import Normalize
from ssast.probe import (
    LabeledClips, embed, knn_accuracy, linear_probe_accuracy, load_clips, logmel_baseline, logmel_statistics, probe,
)
from ssast.train.probe_callbacks import ProbeMonitor, ProbePoint, ProbeTask, TrainingBudget


@pytest.fixture
def one_thread():
    """A mini model's ops are too small for threads; on a shared CPU threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clusters(per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random unit centres: ``[per_class * classes, dim]`` and labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    centres = torch.nn.functional.normalize(centres, dim=1)
    labels = torch.arange(classes).repeat(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_probes_separate_separable_embeddings():
    train, train_labels = clusters(20, 8, 32, spread=0.05, seed=0)
    test, test_labels = clusters(10, 8, 32, spread=0.05, seed=1)
    assert knn_accuracy(train, train_labels, test, test_labels) == 1.0
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == 1.0


def test_probes_are_at_chance_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(400, 16, generator=generator), torch.randn(2000, 16, generator=generator)
    train_labels = torch.randint(0, 4, (400,), generator=generator)
    test_labels = torch.randint(0, 4, (2000,), generator=generator)
    for accuracy in (knn_accuracy(train, train_labels, test, test_labels),
                     linear_probe_accuracy(train, train_labels, test, test_labels)):
        assert abs(accuracy - 0.25) < 0.05  # chance is 1/4; 2000 test clips: sd about 0.01


def test_linear_probe_is_deterministic_and_ignores_feature_scale():
    train, train_labels = clusters(6, 5, 40, spread=0.8, seed=2)
    test, test_labels = clusters(6, 5, 40, spread=0.8, seed=3)
    first = linear_probe_accuracy(train, train_labels, test, test_labels)
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == first
    scale = torch.logspace(-3, 3, 40)  # standardized first, so no feature dominates by its units
    assert linear_probe_accuracy(train * scale + 7, train_labels, test * scale + 7, test_labels) == pytest.approx(first)


def test_knn_weights_near_neighbours_more():
    # Test point at 0 degrees; one neighbour of class 1 right on it, two of class 0 further off.
    angles = torch.tensor([0.0, 0.6, -0.6])
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels, test = torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.0]])
    assert knn_accuracy(train, labels, test, torch.tensor([1]), k=3) == 1.0  # a plain majority would say 0
    assert knn_accuracy(train, labels, test, torch.tensor([0]), k=3, temperature=100.0) == 1.0  # flat weights: majority


def test_logmel_statistics_by_hand():
    fbank = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [5.0, 0.0], [0.0, 0.0]]])  # one clip, 4 frames, 2 bins
    everything = logmel_statistics(fbank)
    assert everything.shape == (1, 4)
    assert everything[0, :2].tolist() == pytest.approx([9 / 4, 2.0])
    assert everything[0, 2].item() == pytest.approx(math.sqrt(((1 - 2.25) ** 2 + 0.75**2 + 2.75**2 + 2.25**2) / 4))
    valid = logmel_statistics(fbank, torch.tensor([3]))  # the padding frame left out
    assert valid[0].tolist() == pytest.approx([3.0, 8 / 3, math.sqrt(8 / 3), math.sqrt(56 / 9)], rel=1e-5)
    batch = torch.randn(5, 7, 128)
    stats = logmel_statistics(batch)
    assert stats.shape == (5, 256)
    torch.testing.assert_close(stats[:, :128], batch.mean(dim=1))
    torch.testing.assert_close(stats[:, 128:], batch.std(dim=1, correction=0))


def test_load_clips_and_probe_an_encoder(tiny_corpus, one_thread):
    events = tiny_corpus / "events"
    train = load_clips(events / "train", classes=events / "classes.txt", stats="audioset", target_length=40)
    test = load_clips(events / "test", classes=train.classes, stats=train.normalize, target_length=40, max_clips=5)
    assert len(train) == 8 and len(test) == 5 and train.fbank.shape == (8, 40, 128)
    assert train.labels.tolist() == [0, 1] * 4 and train.keys[0] == "events/train/0"
    assert (train.frames == 40).all()  # 0.6 s clips: 58 frames, cut to 40
    encoder = tiny_encoder(input_tdim=64).train()
    assert train.features(64).shape == (8, 64, 128)  # padded to the encoder's input
    result = probe(encoder, train, test, k=3)
    assert set(result) == {"knn", "linear"} and all(0 <= value <= 1 for value in result.values())
    assert encoder.training  # put back in the mode it was in
    embeddings = embed(encoder, train.features(64), batch_size=3)
    assert embeddings.shape == (8, 128) and embeddings.dtype == torch.float32
    assert logmel_baseline(train, test) == 1.0  # a low and a high tone: the statistics separate them


def test_embed_and_probe_read_the_chosen_layers(tiny_corpus, one_thread):
    events = tiny_corpus / "events"
    train = load_clips(events / "train", classes=events / "classes.txt", stats="audioset", target_length=64)
    encoder = tiny_encoder(input_tdim=64, depth=3)
    features = train.features(64)
    states = encoder.hidden_states(features)
    by_hand = {"last": encoder.norm(states[-1]), "all": torch.stack(states).mean(dim=0), 1: states[0], 3: states[2]}
    for layers, tokens in by_hand.items():
        torch.testing.assert_close(embed(encoder, features, layers=layers, batch_size=3),
                                   tokens[:, encoder.num_lead_tokens :].mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embed(encoder, features), embed(encoder, features, layers="last"))
    assert not torch.allclose(embed(encoder, features, layers="all"), embed(encoder, features), atol=1e-3)
    # probe() passes them on, and with "all" its accuracies are those of the mean-of-blocks embeddings.
    test = load_clips(events / "test", classes=train.classes, stats=train.normalize, target_length=64)
    result = probe(encoder, train, test, k=3, layers="all")
    all_train, all_test = embed(encoder, features, layers="all"), embed(encoder, test.features(64), layers="all")
    assert result == {"knn": knn_accuracy(all_train, train.labels, all_test, test.labels, k=3),
                      "linear": linear_probe_accuracy(all_train, train.labels, all_test, test.labels)}
    for bad in (0, 4, "first", True):
        with pytest.raises(ValueError, match=r"^layers must be 'last', 'all' or a block from 1 to 3, got "):
            probe(encoder, train, test, layers=bad)
        with pytest.raises(ValueError, match=r"^layers must be 'last', 'all' or a block from 1 to 3, got "):
            embed(encoder, features, layers=bad)


def monitor_from_recipe(option: str) -> ProbeMonitor:
    """A ProbeMonitor as LightningCLI reads callbacks, as class_path/init_args, with one more option."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.Callback, "callback")
    recipe = (f"callback:\n  class_path: ssast.train.probe_callbacks.ProbeMonitor\n  init_args:\n    {option}\n"
              f"    tasks: [{{name: a, train: x, test: y}}]\n")
    return parser.instantiate(parser.parse_string(recipe)).callback


def test_probe_monitor_layers_parse_from_a_recipe():
    """LightningCLI reads callbacks as class_path/init_args: ``layers`` keeps its type."""

    def parse(value: str):
        return monitor_from_recipe(f"layers: {value}").layers

    assert parse("all") == "all" and parse("last") == "last"
    assert parse("3") == 3 and isinstance(parse("3"), int)
    assert ProbeMonitor([{"name": "a", "train": "x", "test": "y"}]).layers == "last"  # the default
    for bad in ("first", "true", "1.5"):
        with pytest.raises(Exception, match="layers"):
            parse(bad)
    with pytest.raises(ValueError, match=r"layers must be 'last', 'all' or a block number from 1, got 0"):
        parse("0")  # refused by ProbeMonitor itself, which jsonargparse reports


def test_precision_is_the_autocast_knob_and_bf16_is_refused_with_its_new_name():
    encoder = tiny_encoder(input_tdim=64)
    features = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(0))
    fp32 = embed(encoder, features, precision="fp32")
    torch.testing.assert_close(embed(encoder, features), fp32, rtol=0, atol=0)  # None: fp32 off CUDA
    bf16 = embed(encoder, features, precision="bf16")  # CPUs run bf16 autocast too
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match=r"^precision must be 'bf16', 'fp32' or None \(bf16 on CUDA only\), got "):
        embed(encoder, features, precision="bf16-mixed")
    # The knob's old name, in a call or a recipe: one line that names the new one.
    renamed = r": bf16 was renamed precision; set precision instead$"
    clips = LabeledClips(features, torch.full((3,), 64), torch.tensor([0, 1, 0]), ["a", "b"], Normalize(0.0, 1.0),
                         ["x", "y", "z"])
    tasks = [{"name": "a", "train": "x", "test": "y"}]
    with pytest.raises(TypeError, match="^ssast.probe.embed" + renamed):
        embed(encoder, features, bf16=True)
    with pytest.raises(TypeError, match="^ssast.probe.probe" + renamed):
        probe(encoder, clips, clips, bf16=False)
    with pytest.raises(TypeError, match="^ProbeMonitor" + renamed):
        ProbeMonitor(tasks, bf16=True)
    with pytest.raises(ValueError, match=r"- ProbeMonitor: bf16 was renamed precision; set precision instead"):
        monitor_from_recipe("bf16: true")  # refused by ProbeMonitor itself, which jsonargparse reports
    assert monitor_from_recipe("precision: fp32").precision == "fp32"
    assert ProbeMonitor(tasks).precision is None
    with pytest.raises(ValueError, match="precision must be"):
        ProbeMonitor(tasks, precision="bf16-mixed")


def test_probe_task_finds_classes_and_stats_beside_the_shards(tmp_path):
    (tmp_path / "kw/train").mkdir(parents=True)
    (tmp_path / "kw/classes.txt").write_text("a\nb\n")
    task = ProbeTask(name="kw", train=str(tmp_path / "kw/train"), test=str(tmp_path / "kw/test"))
    assert task.resolve("classes") == str(tmp_path / "kw/classes.txt")
    assert task.resolve("stats") is None  # -> the AudioSet stats, with a warning
    assert ProbeTask(name="x", train="t", test="t", stats="esc50").resolve("stats") == "esc50"
    with pytest.raises(ValueError, match="differ"):
        ProbeMonitor([task, task])


def test_probe_monitor_in_a_real_fit(tiny_corpus, tmp_path, one_thread):
    from pretrain.mspm import MSPM
    from ssast.train.datamodule import AudioDataModule

    L.seed_everything(0)
    model = MSPM(size="mini", fshape=128, tshape=2, input_tdim=32, mask_patches=8, passes=1,
                 optimization=Optimization(optimizer="adam", schedule="plateau", warmup_steps=1))
    data = AudioDataModule(train=str(tiny_corpus / "unlabeled"), target_length=32, batch_size=4, num_workers=0,
                           batches_per_epoch=2, stats="audioset")
    task = {"name": "events", "train": str(tiny_corpus / "events/train"), "test": str(tiny_corpus / "events/test")}
    monitor = ProbeMonitor([task], every_n_steps=2, k=3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(tmp_path, name="csv"),
                        default_root_dir=tmp_path,
                        callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(model, data)

    history = monitor.history["events"]
    assert [point.step for point in history] == [0, 2, 4]  # the start, every 2 steps, the end (once)
    assert all(isinstance(point, ProbePoint) and 0 <= point.knn <= 1 and 0 <= point.linear <= 1 for point in history)
    seconds = [point.seconds for point in history]
    assert seconds == sorted(seconds) and seconds[0] < 5
    assert monitor.probe_seconds > 0 and model.encoder.training  # train mode restored after each probe
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    logged = {int(row["step"]): float(row["probe/events/linear"]) for row in rows if row.get("probe/events/linear")}
    assert logged == {point.step: point.linear for point in history}
    assert any(row.get("probe/events/knn") for row in rows if int(row["step"]) == 0)
    minutes = [float(row["probe/minutes"]) for row in rows if row.get("probe/minutes")]
    assert minutes == pytest.approx([point.seconds / 60 for point in history])
    written = json.loads((tmp_path / "probes.json").read_text())["tasks"]["events"]
    assert written["train_clips"] == written["test_clips"] == 8
    assert [ProbePoint(**point) for point in written["probes"]] == history

    state = monitor.state_dict()  # a resumed run keeps the curve and the clock
    resumed = ProbeMonitor([task])
    resumed.load_state_dict(state)
    assert resumed.history == monitor.history and resumed._last_step == 4
    assert resumed.training_seconds() >= state["training_seconds"] - 1e-6


def test_probe_monitor_reads_all_layers_in_a_real_fit(tiny_corpus, tmp_path, monkeypatch, one_thread):
    import ssast.train.probe_callbacks
    from pretrain.mspm import MSPM
    from ssast.train.datamodule import AudioDataModule

    calls = []
    real_probe = ssast.train.probe_callbacks.probe

    def spy(encoder, train, test, **kwargs):
        calls.append(kwargs["layers"])
        return real_probe(encoder, train, test, **kwargs)

    monkeypatch.setattr(ssast.train.probe_callbacks, "probe", spy)
    L.seed_everything(0)
    model = MSPM(size="mini", fshape=128, tshape=2, input_tdim=32, mask_patches=8, passes=1,
                 optimization=Optimization(optimizer="adam", schedule="plateau", warmup_steps=1))
    data = AudioDataModule(train=str(tiny_corpus / "unlabeled"), target_length=32, batch_size=4, num_workers=0,
                           batches_per_epoch=2, stats="audioset")
    task = {"name": "events", "train": str(tiny_corpus / "events/train"), "test": str(tiny_corpus / "events/test")}
    monitor = ProbeMonitor([task], every_n_steps=0, k=3, layers="all", history_file=None)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=CSVLogger(tmp_path, name="csv"),
                        default_root_dir=tmp_path, callbacks=[monitor], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(model, data)
    assert calls == ["all", "all"]  # the start and the end
    history = monitor.history["events"]
    assert [point.step for point in history] == [0, 2]
    # The last point is the probe of the trained encoder's mean-of-blocks embeddings.
    train, test = monitor._clips["events"]
    expected = real_probe(model.exported_encoder, train, test, k=3, layers="all")
    assert (history[-1].knn, history[-1].linear) == (expected["knn"], expected["linear"])
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    logged = {int(row["step"]): float(row["probe/events/linear"]) for row in rows if row.get("probe/events/linear")}
    assert logged == {point.step: point.linear for point in history}  # the same names as with the last layer

    # A block the encoder does not have stops the fit before it trains.
    deep = ProbeMonitor([task], layers=model.exported_encoder.config.depth + 1, history_file=None)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, callbacks=[deep], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"^layers must be 'last', 'all' or a block from 1 to \d+, got \d+$"):
        trainer.fit(model, data)
    assert deep.history["events"] == []


def test_training_budget_leaves_probe_time_out(tiny_corpus, monkeypatch, one_thread):
    import ssast.train.probe_callbacks
    from pretrain.mspm import MSPM
    from ssast.train.datamodule import AudioDataModule

    now = [0.0]
    monitor = ProbeMonitor([{"name": "events", "train": str(tiny_corpus / "events/train"),
                             "test": str(tiny_corpus / "events/test")}], every_n_steps=0, k=3, history_file=None)
    budget = TrainingBudget(minutes=1.0)
    monitor.clock = budget.clock = lambda: now[0]
    real_probe = ssast.train.probe_callbacks.probe

    def slow_probe(*args, **kwargs):  # each probe "takes" 10 minutes
        now[0] += 600.0
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(ssast.train.probe_callbacks, "probe", slow_probe)

    class Tick(L.Callback):  # each step "takes" 40 s
        def on_train_batch_start(self, *args) -> None:
            now[0] += 40.0

    model = MSPM(size="mini", fshape=128, tshape=2, input_tdim=32, mask_patches=8, passes=1,
                 optimization=Optimization(optimizer="adam", schedule="plateau", warmup_steps=1))
    data = AudioDataModule(train=str(tiny_corpus / "unlabeled"), target_length=32, batch_size=4, num_workers=0,
                           batches_per_epoch=50, stats="audioset")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, callbacks=[Tick(), monitor, budget],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert trainer.global_step == 2  # 80 s >= 60 s of training; the 10-minute probe did not count
    assert [point.step for point in monitor.history["events"]] == [0, 2]
    assert [point.seconds for point in monitor.history["events"]] == [0.0, 80.0]


def test_training_budget_times_a_run_past_its_start():
    from types import SimpleNamespace

    budget, now = TrainingBudget(minutes=60.0), [0.0]
    budget.clock = lambda: now[0]
    trainer = SimpleNamespace(global_step=0, should_stop=False, callbacks=[],
                              strategy=SimpleNamespace(broadcast=lambda value, src: value))
    budget.on_fit_start(trainer, None)
    for step in range(1, 11):  # two slow steps (loading, warming up), then one a second
        now[0] += 30.0 if step <= 2 else 1.0
        trainer.global_step = step
        budget.on_train_batch_end(trainer, None, None, None, step)
        if step == 3:
            assert budget.steps_per_minute() is None  # too few steps to time
    assert budget.steps_per_minute() == pytest.approx(60.0)  # the run's own average would say 8.8
    assert not trainer.should_stop


def test_a_resumed_run_continues_its_training_budget(tmp_path, one_thread):
    """A run stopped at its checkpoint and resumed from it with ``ckpt_path`` spends what is
    left of its budget, not a new one."""
    from torch.utils.data import DataLoader

    from pretrain.mspm import MSPM
    from ssast.train.callbacks import LastCheckpoint

    now = [0.0]

    class Tick(L.Callback):  # each step "takes" 10 s
        def on_train_batch_start(self, *args) -> None:
            now[0] += 10.0

    def fit(budget: TrainingBudget, epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
        budget.clock = lambda: now[0]
        torch.manual_seed(0)
        model = MSPM(size="mini", fshape=128, tshape=2, input_tdim=16, mask_patches=4, passes=1,
                 optimization=Optimization(optimizer="adam", schedule="plateau", warmup_steps=1))
        clips = DataLoader([{"fbank": torch.randn(2, 16, 128)} for _ in range(3)], batch_size=None)
        trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, default_root_dir=tmp_path,
                            callbacks=[Tick(), budget, LastCheckpoint()], limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, train_dataloaders=clips, ckpt_path=ckpt_path)
        return trainer

    first = fit(TrainingBudget(minutes=1.0), epochs=1)  # 3 steps of a 60 s budget, then the run ends
    checkpoint = tmp_path / "checkpoints/last.ckpt"
    assert first.global_step == 3
    assert torch.load(checkpoint, weights_only=True)["callbacks"]["TrainingBudget"] == {"training_seconds": 30.0}

    now[0] = 5000.0  # another process, another clock
    budget = TrainingBudget(minutes=1.0)
    resumed = fit(budget, epochs=10, ckpt_path=checkpoint)
    assert budget.elapsed_seconds() == 60.0  # the 30 s before the checkpoint, 30 s after
    assert resumed.global_step == 6  # where a fresh budget would have gone on to step 9


@pytest.mark.slow
def test_probes_under_ddp_on_two_cpu_processes(tiny_corpus, tmp_path):
    """Rank 0 probes alone while rank 1 waits at the gradient all-reduce: no hang, one
    history, and the budget stops both ranks at the same step."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    probe_callback = {"class_path": "ssast.train.probe_callbacks.ProbeMonitor", "init_args": {
        "every_n_steps": 2, "k": 3, "tasks": [{"name": "events", "train": str(tiny_corpus / "events/train"),
                                               "test": str(tiny_corpus / "events/test")}]}}
    budget = {"class_path": "ssast.train.probe_callbacks.TrainingBudget", "init_args": {"minutes": 10}}
    args = [
        "fit", "--config", str(repo / "configs/pretrain/demo.yaml"), "--config", str(repo / "configs/pretrain/mspm_demo.yaml"),
        "--model.init_args.mask_patches", "8", "--model.init_args.optimization.warmup_steps", "1",
        "--data.train", str(tiny_corpus / "unlabeled"), "--data.val", "null",
        "--data.stats", "audioset", "--data.target_length", "32",
        "--data.batch_size", "2", "--data.batches_per_epoch", "3",
        "--data.num_workers", "0", "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", json.dumps([probe_callback, budget]),
    ]
    env = dict(os.environ, PYTHONPATH=str(repo), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probes = json.loads((tmp_path / "run/probes.json").read_text())["tasks"]["events"]["probes"]
    assert [point["step"] for point in probes] == [0, 2, 4, 6]


def learning_benchmark(module: str = "learning"):
    """A module of the learning benchmark, found as ``python benchmarks/learning.py`` finds it
    (``benchmarks/`` on ``sys.path``): the script or a module beside it (``learning_runs``,
    ``learning_probes``, ``learning_seeds``, ``learning_charts``)."""
    import importlib

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.append(benchmarks)
    return importlib.import_module(module)


def benchmark_result(tasks: Sequence[str], start: float, end: float) -> dict:
    """A learning.py run result whose linear probes read ``start`` then ``end`` on each of
    ``tasks`` (kNN at half of them), with the series of those two probes."""
    point = lambda accuracy: {"knn": accuracy / 2, "linear": accuracy}  # noqa: E731
    return {"tasks": {task: {"start": point(start), "end": point(end)} for task in tasks},
            "series": {task: [[0.0, start / 2, start], [1.0, end / 2, end]] for task in tasks}}


def test_learning_benchmark_chart_draws_each_probe_at_its_minute():
    charts, tasks = learning_benchmark("learning_charts"), learning_benchmark("learning_probes").TASKS
    series = [[0.0, 0.1, 0.2], [0.5, 0.3, 0.6], [1.0, 0.5, 0.4]]  # [minutes, knn, linear]
    result = {"series": {task: series for task in tasks}}
    figure = charts.learning_chart({"mspm": result, "asit": {"error": "failed"}}, {"keywords": 0.7}, 2.0)
    keywords_linear, *_, events_knn = figure.axes
    assert (keywords_linear.get_title(), events_knn.get_title()) == ("keywords: linear probe", "events: kNN probe")
    mspm_line, floor = keywords_linear.get_lines()
    assert list(mspm_line.get_xdata()) == [0.0, 0.5, 1.0] and list(mspm_line.get_ydata()) == [0.2, 0.6, 0.4]
    assert list(floor.get_xdata()) == [0.0, 2.0] and list(floor.get_ydata()) == [0.7, 0.7]
    assert list(events_knn.get_lines()[0].get_ydata()) == [0.1, 0.3, 0.5] and len(events_knn.get_lines()) == 1
    assert [text.get_text() for text in keywords_linear.get_legend().get_texts()] == ["mspm", charts.FLOOR]
    assert len(figure.axes) == 2 * len(tasks) and figure.get_suptitle().endswith("2 min per method")


def test_learning_benchmark_fits_a_recipe_to_its_budget():
    learning, runs = learning_benchmark(), learning_benchmark("learning_runs")
    args = learning.parse_args(["--minutes", "15,5,30", "--data", "demo_data,dev_data"])
    assert args.budgets == [5.0, 15.0, 30.0] and [path.name for path in args.corpora] == ["demo_data", "dev_data"]
    eat = runs.recipe_settings("eat", args)
    assert eat["steps"] == eat["max_epochs"] * eat["batches_per_epoch"]
    steps = 3 * eat["steps"] + 7  # three times the recipe: every run-length knob three times as long
    options = runs.stretched_options("eat", steps, args)
    given = dict(zip(options[::2], options[1::2]))
    assert given["--trainer.max_steps"] == str(steps)
    assert int(given["--trainer.max_epochs"]) * eat["batches_per_epoch"] >= steps
    anneal = eat["run_length_knobs"]["ema_anneal_end_step"]
    assert given["--model.init_args.ema_anneal_end_step"] == str(round(anneal * steps / eat["steps"]))
    command = runs.pretrain_args("eat", Path("dev_data"), Path("run"), args, runs.Budget(30.0, steps))
    assert command[-len(options):] == options
    assert "--trainer.max_steps" not in runs.pretrain_args("eat", Path("d"), Path("r"), args, runs.Budget(5.0))
    with pytest.raises(SystemExit):
        learning.parse_args(["--minutes", "5,0"])


def test_learning_benchmark_scores_the_choosing_corpus_on_its_validation_split():
    learning, probes = learning_benchmark(), learning_benchmark("learning_probes")
    assert learning.parse_args([]).probe_split == "test"
    tasks = probes.probe_tasks(Path("dev_data"), ["last", "all"], learning.parse_args(["--probe-split", "val"]).probe_split)
    assert {Path(task["test"]).name for task in tasks} == {"val"}
    assert {Path(task["train"]).name for task in tasks} == {"train"}
    assert [task["name"] for task in tasks][-1] == "events@all"
    with pytest.raises(SystemExit):
        learning.parse_args(["--probe-split", "train"])


def test_learning_benchmark_budgets_chart_draws_each_budgets_end_beside_the_untrained_encoder():
    charts = learning_benchmark("learning_charts")
    tasks = learning_benchmark("learning_probes").TASKS

    result = functools.partial(benchmark_result, tasks)
    runs = {"demo_data": {5.0: {"eat": result(0.4, 0.5)}, 15.0: {"eat": result(0.4, 0.6)}},
            "dev_data": {5.0: {"eat": result(0.2, 0.3), "mspm": {"error": "failed"}}, 15.0: {"eat": result(0.2, 0.1)}}}
    figure = charts.budgets_chart(runs, {"dev_data": {"events": 0.25}})
    assert len(figure.axes) == 2 * len(tasks)
    dev_events = next(ax for ax in figure.axes if ax.get_title() == "dev_data: events")
    eat, untrained, floor = dev_events.get_lines()
    assert list(eat.get_xdata()) == [5.0, 15.0] and list(eat.get_ydata()) == [0.3, 0.1]
    assert list(untrained.get_ydata()) == [pytest.approx(0.2)] * 2 and list(floor.get_ydata()) == [0.25, 0.25]


def test_learning_benchmark_reports_the_gain_over_seeds_each_against_its_own_untrained_encoder():
    learning, runs, probes, seeds, charts = (learning_benchmark(module) for module in (
        "learning", "learning_runs", "learning_probes", "learning_seeds", "learning_charts"))

    result = functools.partial(benchmark_result, probes.TASKS)
    combined = seeds.combine_seeds({0: result(0.5, 0.6), 1: result(0.3, 0.6), 2: {"error": "failed"}})
    keywords = combined["tasks"]["keywords"]
    assert keywords["start"] == {"knn": pytest.approx(0.2), "linear": pytest.approx(0.4)}
    assert keywords["end"]["linear"] == pytest.approx(0.6)
    # Paired: seed 0 gains 0.1 and seed 1 gains 0.3 over their own untrained encoders.
    assert keywords["gain"]["each"] == [pytest.approx(0.1), pytest.approx(0.3)]
    assert keywords["gain"]["mean"] == pytest.approx(0.2) and keywords["gain"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert combined["failed"] == 1 and set(combined["seeds"]) == {"0", "1", "2"}
    assert "error" in seeds.combine_seeds({0: {"error": "failed"}})
    lines = seeds.seed_lines({"mspm": combined, "eat": result(0.1, 0.2)})
    assert list(lines) == ["mspm seed 0", "mspm seed 1", "mspm seed 2", "eat"]
    figure = charts.learning_chart(lines, {}, 1.0)
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["mspm seed 0", "mspm seed 1", "eat"]

    args = learning.parse_args(["--seeds", "3,1"])
    assert args.seed_list == [3, 1] and learning.parse_args([]).seed_list == [None]
    command = runs.pretrain_args("mspm", Path("d"), Path("r"), args, runs.Budget(5.0), seed=3)
    assert command[command.index("--seed_everything") + 1] == "3"
    assert "--seed_everything" not in runs.pretrain_args("mspm", Path("d"), Path("r"), args, runs.Budget(5.0))
    for bad in (["--seeds", "1,x"], ["--seeds", "1,1"], ["--seeds", "1", "--cli-args", "--seed_everything 4"]):
        with pytest.raises(SystemExit):
            learning.parse_args(bad)


@pytest.mark.slow
def test_learning_benchmark_end_to_end(small_demo_corpus, tmp_path):
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "benchmarks/learning.py", "--data", str(small_demo_corpus), "--minutes", "0.05,0.1",
               "--pilot-minutes", "0.05", "--methods", "mspm", "--out", str(tmp_path), "--threads", "1",
               "--seeds", "0,1"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    corpus = small_demo_corpus.name
    rate = report["steps_per_minute"][corpus]["mspm"]
    assert report["seeds"] == [0, 1]
    for minutes in ("0.05", "0.1"):
        combined = report["runs"][corpus][minutes]["mspm"]
        assert combined["failed"] == 0 and set(combined["seeds"]) == {"0", "1"}
        assert set(combined["tasks"]) == set(report["logmel_stats"][corpus]) == {"keywords", "speakers", "events"}
        assert all(len(task["gain"]["each"]) == 2 for task in combined["tasks"].values())
        for seed, mspm in combined["seeds"].items():
            assert (tmp_path / corpus / f"mspm-{minutes}min-seed{seed}" / "probes.json").is_file()
            assert mspm["planned_steps"] == max(1, int(0.95 * rate * float(minutes)))  # the schedule fitted to the budget
            assert 0 < mspm["steps"] <= mspm["planned_steps"]
            assert all(len(series) >= 2 for series in mspm["series"].values())
    assert all(Path(path).is_file() for path in report["pictures"].values())
    assert set(report["pictures"]) == {corpus, "budgets"}
