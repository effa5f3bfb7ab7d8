"""Faults injected for real into the data path: broken samples and shards, unreachable
shards (missing files, failing commands, HTTP errors and dropped connections), and a shard
writer killed with SIGKILL. A run keeps going, counts what it skipped by reason, and stops
with a clear error only when the data is mostly or entirely unusable."""

import csv
import errno
import dataclasses
import io
import json
import logging
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from lightning.pytorch.loggers import CSVLogger

from helpers import QuietHandler, encoded, flac_sample, http_server, tone, write_shard
from finetune.module import Finetune
from ssast.train.datamodule import AudioDataModule
from ssast.audio import AudioFile
from ssast.data.cli import main as data_cli
from ssast.data.loaders import EpochLoader, EvalLoader
from ssast.data.options import ReaderOptions
from ssast.data.shards import list_shards
from ssast.data.skips import NoReadableShards, SkipCounter, TooManySkipped
from ssast.data.stream import ShardStream
from ssast.data.shard_sets import SHARD_INDEX, interrupted_output

REPO = Path(__file__).resolve().parents[1]
CLIP = 1600  # 0.1 s rows keep every test fast


def reader(**options) -> ReaderOptions:
    """ReaderOptions with retries 100 times faster than the default's."""
    return ReaderOptions(**{"retry_delay": 0.01, **options})


def stream(urls, training=False, **options):
    """A ShardStream of 0.1 s rows; ReaderOptions fields among ``options`` go to its options."""
    names = {field.name for field in dataclasses.fields(ReaderOptions)}
    reading = {name: options.pop(name) for name in list(options) if name in names}
    defaults = {"clip_samples": CLIP, "batch_size": 2, "rank": 0, "world_size": 1}
    return ShardStream(urls, training=training, options=reader(**reading), **{**defaults, **options})


def eval_batches(shard_stream, workers=0):
    return list(EvalLoader(shard_stream, batch_size=None, num_workers=workers))


def keys_of(batches):
    return sorted(key for batch in batches for key in batch["key"])


def nonzero(counts):
    return {name: count for name, count in counts.items() if count}


def truncated(path: Path, keep: float = 0.6) -> Path:
    """Cut a shard file short, mid-member, as a crashed copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --------------------------------------------------------------------------- bad samples


@pytest.fixture
def bad_shards(tmp_path):
    """Two shards of labeled samples (classes a, b): 6 good, 8 unusable, 2 off-contract
    but fixable, and a third shard truncated after its first samples."""
    good = [flac_sample(f"good/{index}", 0.2, ["a" if index % 2 else "b"]) for index in range(6)]
    bad = [
        {"__key__": "bad/text_as_flac", "flac": b"this is a caption, not audio", "json": {"labels": ["a"]}},
        {"__key__": "bad/png_as_wav", "wav": b"\x89PNG\r\n\x1a\n" + bytes(200), "json": {"labels": ["a"]}},
        {"__key__": "bad/zero_bytes", "flac": b"", "json": {"labels": ["a"]}},
        {"__key__": "bad/zero_frames", "wav": encoded(np.zeros(0, np.float32), 16000), "json": {"labels": ["a"]}},
        {"__key__": "bad/nan", "wav": encoded(np.array([0.1, np.nan] * 800, np.float32), 16000, "WAV", "FLOAT"),
         "json": {"labels": ["a"]}},
        {"__key__": "bad/inf", "wav": encoded(np.array([0.1, np.inf] * 800, np.float32), 16000, "WAV", "FLOAT"),
         "json": {"labels": ["b"]}},
        {"__key__": "bad/caption_only", "txt": b"a dog barks", "json": {"labels": ["a"]}},
        {"__key__": "bad/zebra", "flac": good[0]["flac"], "json": {"labels": ["zebra"]}},
    ]
    broken_json = {"__key__": "bad/broken_json", "flac": good[0]["flac"], "json": b'{"labels": ["a"'}
    fixable = [
        {"__key__": "fix/8k_mono", "wav": encoded(tone(0.2, 8000), 8000), "json": {"labels": ["a"]}},
        {"__key__": "fix/48k_stereo", "flac": encoded(tone(0.2, 48000, channels=2), 48000, "FLAC"),
         "json": {"labels": ["b"]}},
    ]
    write_shard(tmp_path / "0.tar", good[:3] + bad[:4] + fixable[:1])
    write_shard(tmp_path / "1.tar", bad[4:] + good[3:] + fixable[1:] + [broken_json])
    write_shard(tmp_path / "2.tar", [flac_sample(f"cut/{index}", 0.5, ["a"]) for index in range(8)])
    truncated(tmp_path / "2.tar")
    return tmp_path


def test_bad_samples_are_skipped_or_fixed_and_counted_per_reason_across_workers(bad_shards, caplog):
    urls = list_shards(bad_shards)
    skips = SkipCounter()
    shard_stream = stream(urls, classes=["a", "b"], skips=skips, max_skip_ratio=None)
    keys = keys_of(eval_batches(shard_stream, workers=2))
    cut = [key for key in keys if key.startswith("cut/")]
    assert [key for key in keys if not key.startswith("cut/")] == sorted(
        [f"good/{index}" for index in range(6)] + ["fix/48k_stereo", "fix/8k_mono"])
    assert 1 <= len(cut) < 8  # the samples before the cut, each once; the rest is lost
    assert nonzero(skips.counts()) == {
        "read": 6 + 8 + 1 + 2 + len(cut),
        "undecodable": 2, "empty": 2, "not_finite": 2, "no_audio": 1, "unknown_label": 1, "bad_json": 1,
        "resampled": 2, "downmixed": 1,
        "shard_retries": 3, "failed_shards": 1,
    }
    assert skips.summary().startswith(f"skipped 9 of {17 + len(cut)} samples (2 undecodable, 2 empty")
    assert "fixed 2 resampled, 1 downmixed" in skips.summary()

    # The same in this process, to read the warnings: each names the sample or the shard.
    with caplog.at_level(logging.WARNING, logger="ssast.data"):
        eval_batches(stream(urls, classes=["a", "b"], max_skip_ratio=None, shard_retries=1))
    for name in ("bad/text_as_flac", "bad/broken_json", "bad/zebra", "bad/caption_only", "bad/nan"):
        assert name in caplog.text
    assert f"skipped shard {bad_shards / '2.tar'} after 2 attempts" in caplog.text


def test_fixed_audio_is_the_same_signal_at_16k_mono(bad_shards):
    batches = eval_batches(stream(list_shards(bad_shards), classes=["a", "b"], max_skip_ratio=None))
    clips = {key: (audio, int(length)) for batch in batches
             for key, audio, length in zip(batch["key"], batch["audio"], batch["lengths"])}
    for key in ("fix/8k_mono", "fix/48k_stereo"):
        audio, length = clips[key]
        assert length == CLIP  # 0.2 s at 16 kHz, cut to the row
        spectrum = torch.fft.rfft(audio).abs()
        assert abs(spectrum.argmax().item() * 16000 / CLIP - 440) <= 10, key


def test_training_keeps_going_through_bad_data(bad_shards):
    skips = SkipCounter()
    shard_stream = stream(list_shards(bad_shards), training=True, classes=["a", "b"], skips=skips,
                          shuffle_buffer=4, max_skip_ratio=None)
    loader = EpochLoader(shard_stream, batches_per_epoch=12, num_workers=2)
    batches = list(loader)
    assert len(batches) == 12 and all(len(batch["key"]) == 2 for batch in batches)
    assert not any(key.startswith("bad/") for batch in batches for key in batch["key"])
    counts = skips.counts()
    assert counts["read"] > 24 and counts["undecodable"] and counts["resampled"]


@pytest.mark.parametrize("damage", ["cut_at_a_header", "garbled_header"])
def test_a_damaged_shard_is_not_taken_for_a_shorter_one(tmp_path, damage):
    # Python's tarfile quietly ends an archive at a missing or garbled header.
    path = tmp_path / "damaged.tar"
    write_shard(path, [flac_sample(f"k/{index}", 0.1) for index in range(6)])
    with tarfile.open(path) as archive:
        offset = next(member.offset for member in archive.getmembers() if member.name == "k/3.flac")
    data = path.read_bytes()
    garbled = data[:offset] + bytes(range(1, 256)) + data[offset + 255 :]
    path.write_bytes(data[:offset] if damage == "cut_at_a_header" else garbled)
    skips = SkipCounter()
    # What comes before the damage is read; the sample right before it goes too (it may be incomplete).
    assert keys_of(eval_batches(stream([str(path)], skips=skips, shard_retries=1))) == ["k/0", "k/1"]
    assert skips.counts()["failed_shards"] == 1


def test_an_hour_long_clip_costs_only_its_window(tmp_path):
    rate, hour = 16000, 3600
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as sink:
        for second in range(hour):  # silence, with a tone in minute 30
            sink.write(tone(1.0) if 1800 <= second < 1810 else np.zeros(rate, np.float32))
    write_shard(tmp_path / "long.tar", [{"__key__": "long/hour", "flac": buffer.getvalue(), "json": {"labels": []}},
                                        flac_sample("short/one", 0.5)])
    with AudioFile(buffer.getvalue()) as audio:
        assert audio.num_samples == hour * rate
        middle = audio.read(1805 * rate, rate)  # seeks: the tone is there, whole
        assert middle.shape == (rate,) and abs(torch.fft.rfft(middle).abs().argmax().item() - 440) <= 1

    for training in (False, True):  # (its time is benchmarks/costs.py's to report)
        tracemalloc.start()
        batch = next(iter(stream([str(tmp_path / "long.tar")], training=training, clip_samples=10 * rate,
                                 shuffle_buffer=2)))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert sorted(batch["key"]) == ["long/hour", "short/one"]
        # Decoding the whole hour would take 230 MB of float32 at the least.
        assert peak < 20e6, f"peak {peak / 1e6:.0f} MB"


def test_too_many_skipped_samples_stop_the_run_with_the_counts(tmp_path):
    good = [flac_sample(f"good/{index}", 0.1) for index in range(16)]
    bad = [{"__key__": f"bad/{index}", "flac": b"garbage", "json": {"labels": []}} for index in range(4)]
    # Every fifth sample is bad: 20 %, above a 10 % limit and below a 25 % one.
    write_shard(tmp_path / "mixed.tar", [sample for index in range(4) for sample in [*good[4 * index : 4 * index + 4], bad[index]]])
    urls = [str(tmp_path / "mixed.tar")]
    advice = r"skipped 1 of 5 samples \(1 undecodable\).*max_skip_ratio=0.1 allows.*--data.reader.max_skip_ratio"
    with pytest.raises(TooManySkipped, match=advice):
        eval_batches(stream(urls, max_skip_ratio=0.1, skip_ratio_after=5), workers=1)
    assert len(keys_of(eval_batches(stream(urls, max_skip_ratio=0.1, skip_ratio_after=100)))) == 16
    assert len(keys_of(eval_batches(stream(urls, max_skip_ratio=0.25, skip_ratio_after=5)))) == 16
    training = EpochLoader(stream(urls, training=True, max_skip_ratio=0.1, skip_ratio_after=5), 10)
    with pytest.raises(TooManySkipped):
        list(training)


# --------------------------------------------------------------------------- unreachable shards


class FlakyHandler(QuietHandler):
    """Drops the connection halfway through the first request for each file, and answers
    404 for files that are not there (as SimpleHTTPRequestHandler does)."""

    served: set[str] = set()

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_file() and self.path not in self.served:
            self.served.add(self.path)
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def shards(tmp_path):
    """Three good shards of 4 samples each in tmp_path/ok."""
    folder = tmp_path / "ok"
    folder.mkdir()
    for shard in range(3):
        write_shard(folder / f"{shard}.tar", [flac_sample(f"s{shard}/{index}", 0.1) for index in range(4)])
    return folder


def test_unreachable_shards_are_retried_then_skipped_naming_each(shards, tmp_path, caplog):
    with http_server(shards) as base:
        failing = [str(tmp_path / "missing.tar"), "pipe:exit 3", f"pipe:cat {tmp_path / 'nowhere.tar'}",
                   f"{base}/absent.tar"]
        urls = [str(shards / "0.tar"), f"pipe:cat {shards / '1.tar'}", f"{base}/2.tar", *failing]
        skips = SkipCounter()
        with caplog.at_level(logging.WARNING, logger="ssast.data.retries"):
            keys = keys_of(eval_batches(stream(urls, skips=skips, shard_retries=2)))
    assert keys == sorted(f"s{shard}/{index}" for shard in range(3) for index in range(4))
    assert skips.counts()["failed_shards"] == 4 and skips.counts()["shard_retries"] == 8
    for url in failing:
        assert f"skipped shard {url} after 3 attempts" in caplog.text
        assert f"shard {url} failed" in caplog.text and "retry 2 of 2" in caplog.text


def test_a_retry_resumes_a_shard_after_what_it_already_gave(shards, tmp_path):
    flag = tmp_path / "failed_once"
    FlakyHandler.served.clear()
    whole = shards / "1.tar"
    # Fails after half the shard, once: the retry must neither repeat nor lose a sample.
    half = whole.stat().st_size // 2  # a tar block boundary, where tarfile alone would see a shorter shard
    command = f"pipe:if [ -e {flag} ]; then cat {whole}; else touch {flag}; head -c {half} {whole}; exit 1; fi"
    with http_server(shards, FlakyHandler) as base:
        urls = [command, f"{base}/2.tar"]  # the server drops the first download halfway
        skips = SkipCounter()
        keys = keys_of(eval_batches(stream(urls, skips=skips), workers=2))
    assert keys == sorted(f"s{shard}/{index}" for shard in (1, 2) for index in range(4))
    assert skips.counts()["shard_retries"] == 2 and skips.counts()["failed_shards"] == 0


def test_when_every_shard_fails_the_run_stops_instead_of_hanging(tmp_path):
    with http_server(tmp_path) as base:
        urls = [str(tmp_path / "missing.tar"), "pipe:false", f"{base}/absent.tar"]
        training = EpochLoader(stream(urls, training=True, shard_retries=1), 5, num_workers=2)
        with pytest.raises(NoReadableShards, match="every one of the 3 training shards failed"):
            list(training)
        with pytest.raises(NoReadableShards, match=r"read nothing: 3 shard\(s\) failed"):
            eval_batches(stream(urls, shard_retries=1), workers=2)
        # A pass that reads some of its shards is no error.
        write_shard(tmp_path / "ok.tar", [flac_sample("ok/0", 0.1)])
        assert keys_of(eval_batches(stream([*urls, str(tmp_path / "ok.tar")], shard_retries=0))) == ["ok/0"]


# --------------------------------------------------------------------------- in a Lightning run


def labeled_set(folder: Path, bad: int) -> Path:
    folder.mkdir()
    samples = [flac_sample(f"good/{index}", 0.4, ["a" if index % 2 else "b"], freq=300 + 50 * index)
               for index in range(8)]
    samples += [{"__key__": f"bad/{index}", "flac": b"garbage", "json": {"labels": ["a"]}} for index in range(bad)]
    samples.append({"__key__": "fix/8k", "wav": encoded(tone(0.4, 8000), 8000), "json": {"labels": ["a"]}})
    write_shard(folder / "part-0.tar", samples)
    (folder / "classes.txt").write_text("a\nb\n")
    return folder


def fit(tmp_path: Path, data: Path, **reader_options) -> Path:
    model = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=32, warmup_steps=1)
    datamodule = AudioDataModule(train=str(data), val=str(data), target_length=32, batch_size=2, num_workers=0,
                                 batches_per_epoch=3, stats="audioset", classes="auto", reader=reader(**reader_options))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return Path(trainer.logger.log_dir) / "metrics.csv"


def test_a_training_run_logs_and_prints_the_counts(tmp_path, capsys):
    metrics = fit(tmp_path, labeled_set(tmp_path / "data", bad=2), max_skip_ratio=None)
    rows = list(csv.DictReader(metrics.open()))
    last = {name: float(value) for row in rows for name, value in row.items() if name.startswith("data/") and value}
    assert last["data/skipped/undecodable"] > 0 and last["data/fixed/resampled"] > 0
    assert last["data/skipped_samples"] == last["data/skipped/undecodable"]
    assert {f"data/skipped/{name}" for name in ("empty", "bad_json", "unknown_label")} <= set(last)
    printed = capsys.readouterr().out
    assert "training data: skipped" in printed and "undecodable" in printed and "resampled" in printed
    assert "evaluation data: skipped 4 of 22 samples (4 undecodable); fixed 2 resampled" in printed


def test_a_training_run_on_garbage_stops_with_the_counts(tmp_path):
    data = labeled_set(tmp_path / "data", bad=12)
    with pytest.raises(TooManySkipped, match="undecodable"):
        fit(tmp_path, data, max_skip_ratio=0.2, skip_ratio_after=10)


def test_a_validation_whose_shards_all_fail_stops_the_run(tmp_path):
    data = labeled_set(tmp_path / "data", bad=0)
    model = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=32, warmup_steps=1)
    datamodule = AudioDataModule(train=str(data), val=f"pipe:cat {tmp_path}/gone-{{0..1}}.tar", target_length=32,
                                 batch_size=2, num_workers=0, batches_per_epoch=2, stats="audioset",
                                 classes="auto", reader=reader(shard_retries=1))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(NoReadableShards, match=r"2 shard\(s\) failed"):
        trainer.fit(model, datamodule=datamodule)


# --------------------------------------------------------------------------- interrupted writing


@pytest.fixture
def many_files(tmp_path):
    """Enough files that writing them takes a few seconds with one worker."""
    root = tmp_path / "audio"
    for label in ("low", "high"):
        (root / label).mkdir(parents=True)
        for index in range(100):
            freq = (300 if label == "low" else 2000) + 7 * index
            soundfile.write(root / label / f"{index:03d}.wav", tone(0.5, 44100, freq=freq, channels=2), 44100)
    return root


def shard_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def indexed_shards(folder: Path) -> dict[str, int]:
    try:
        return json.loads((folder / SHARD_INDEX).read_text()).get("shards", {})
    except (OSError, ValueError):
        return {}


def test_a_killed_writer_leaves_only_complete_shards_and_a_rerun_finishes_the_job(many_files, tmp_path, caplog):
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [str(many_files), "--shard-size", "4", "--workers", "1", "--split", "train"]
    writer = subprocess.Popen([sys.executable, "-m", "ssast.data.cli", "from-folder", args[0], str(out), *args[1:]],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not indexed_shards(out / "train") and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert writer.poll() is None, "the writer finished before it could be killed: give it more files"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    folder = out / "train"
    assert interrupted_output(folder)
    index = json.loads((folder / SHARD_INDEX).read_text())
    assert index["complete"] is False and index["fingerprint"]  # and the shards complete when it was killed
    assert set(index["shards"]) <= {path.name for path in folder.glob("*.tar")}
    listed = list_shards(out, "train")
    assert listed == sorted(str(path) for path in folder.glob("*.tar")) and listed
    assert not any(".partial" in url for url in listed)
    for url in listed:  # every shard under its final name is whole: 4 samples of 2 members
        with tarfile.open(url) as archive:
            assert len(archive.getmembers()) == 8, url
    with caplog.at_level(logging.WARNING):
        list_shards(out, "train")
    assert "interrupted" in caplog.text

    assert data_cli(["from-folder", str(many_files), str(clean), *args[1:]]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):  # no --overwrite needed: it goes on from the complete shards
        assert data_cli(["from-folder", str(many_files), str(out), *args[1:]]) == 0
    assert f"going on from the {len(index['shards'])} complete shards of an interrupted writing" in caplog.text
    assert shard_files(out / "train") == shard_files(clean / "train")  # as if it had never stopped
    assert not interrupted_output(out / "train")
    index = json.loads((out / "train" / SHARD_INDEX).read_text())
    assert index["complete"] and index["samples"] == 200 and len(index["shards"]) == 50
    assert data_cli(["from-folder", str(many_files), str(out), *args[1:]]) == 2  # complete: refused


def test_reader_lists_no_temporary_files(shards):
    (shards / "3.tar.partial").write_bytes(b"half a shard")
    (shards / "classes.txt.partial").write_text("a\n")
    assert [Path(url).name for url in list_shards(shards)] == ["0.tar", "1.tar", "2.tar"]
    assert interrupted_output(shards)


@pytest.mark.slow
def test_a_killed_demo_build_is_built_again_without_overwrite(tmp_path):
    from ssast.demo.corpus import build_demo

    out = tmp_path / "demo"
    code = f"from ssast.demo.corpus import build_demo; build_demo({str(out)!r}, scale=0.1, seed=3, progress=False)"
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not list(out.rglob("*.tar")) and builder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert builder.poll() is None, "the build finished before it could be killed"
        builder.send_signal(signal.SIGKILL)
    finally:
        builder.wait()
    assert not (out / "demo.json").exists()
    build_demo(out, scale=0.1, seed=3, progress=False)  # no overwrite needed: it was never finished
    assert (out / "demo.json").exists()
    assert not any(interrupted_output(folder) for folder in out.rglob("*") if folder.is_dir())
    assert "already there" in str(build_demo(out, scale=0.1, seed=3, progress=False))  # finished: kept
    with pytest.raises(FileExistsError, match="overwrite"):
        build_demo(out, scale=0.1, seed=4, progress=False)


# --------------------------------------------------------------------------- input gaps (issue 37, finding 6)


def cut_wav(samples: np.ndarray, keep: float) -> bytes:
    """A WAV whose header promises every sample but whose file stops after ``keep`` of them."""
    data = encoded(samples, 16000, "WAV", "PCM_16")
    return data[: 44 + int(2 * len(samples) * keep)]


def test_a_quoted_glob_lists_its_shards_and_one_that_matches_nothing_says_so(tmp_path):
    for index in (2, 0, 1):
        write_shard(tmp_path / f"pool-{index}.tar", [flac_sample(f"k{index}", 0.1)])
    (tmp_path / "notes.txt").write_text("not a shard")
    assert list_shards(f"{tmp_path}/pool-*.tar") == [str(tmp_path / f"pool-{index}.tar") for index in range(3)]
    assert list_shards(f"{tmp_path}/pool-[01].tar::{tmp_path}/pool-2.tar") == [
        str(tmp_path / f"pool-{index}.tar") for index in range(3)]
    with pytest.raises(FileNotFoundError, match=r"^no shards match .*/nowhere-\*\.tar$"):
        list_shards(f"{tmp_path}/nowhere-*.tar")


def test_a_truncated_wav_is_counted_as_truncated_wherever_it_is_read(tmp_path, caplog):
    samples = tone(2.0, 16000)
    short = cut_wav(samples, 1 / 3)  # 2 s promised, 0.67 s there
    assert len(soundfile.read(io.BytesIO(short))[0]) < len(samples)  # libsndfile reads the rest as the whole clip
    write_shard(tmp_path / "0.tar", [flac_sample("good", 0.2), {"__key__": "cut", "wav": short, "json": {}}])
    skips = SkipCounter()
    assert keys_of(eval_batches(stream([str(tmp_path / "0.tar")], skips=skips, max_skip_ratio=None))) == ["good"]
    assert nonzero(skips.counts()) == {"read": 2, "truncated": 1}

    # ssast-data: listed in errors.txt with the reason, counted in the summary, the rest written.
    folder = tmp_path / "audio"
    folder.mkdir()
    (folder / "cut.wav").write_bytes(short)
    (folder / "whole.wav").write_bytes(encoded(samples, 16000))
    assert data_cli(["from-folder", str(folder), str(tmp_path / "shards"), "--workers", "1"]) == 0
    errors = (tmp_path / "shards/errors.txt").read_text()
    assert "cut.wav\ttruncated: its header promises 64000 bytes of samples, the file holds 21333 (0.67 s)" in errors
    assert json.loads((tmp_path / "shards" / SHARD_INDEX).read_text())["samples"] == 1


def test_nan_outside_the_training_crop_still_skips_the_clip(tmp_path):
    clip = tone(0.5, 16000)
    clip[-10] = np.nan  # in the last samples: a 0.1 s crop from the start misses it
    write_shard(tmp_path / "0.tar", [{"__key__": "nan", "wav": encoded(clip, 16000, "WAV", "FLOAT"), "json": {}},
                                     flac_sample("good", 0.5)])
    skips = SkipCounter()
    training = stream([str(tmp_path / "0.tar")], training=True, skips=skips, max_skip_ratio=None, seed=0)
    keys = [key for batch in EpochLoader(training, batches_per_epoch=2, num_workers=0) for key in batch["key"]]
    assert set(keys) == {"good"} and skips.counts()["not_finite"] >= 1


def test_a_manifest_row_without_a_split_is_left_out_and_counted(tmp_path, capsys):
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        (tmp_path / name).write_bytes(encoded(tone(0.2, 16000), 16000))
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,labels,split\na.wav,dog,train\nb.wav,,train\nc.wav,dog,\nd.wav,rain,val\n")
    assert data_cli(["from-csv", str(manifest), str(tmp_path / "out"), "--workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 3 clips" in summary and "1 of them unlabeled" in summary and "1 failed" in summary
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.is_dir()) == ["train", "val"]
    assert (f"{tmp_path / 'c.wav'}\tno split, though other rows of the manifest name one"
            in (tmp_path / "out/errors.txt").read_text())


def test_a_full_disk_leaves_no_partial_shard_and_the_same_command_goes_on(many_files, tmp_path, monkeypatch, caplog):
    """Issue 37, finding 3: a full disk left a 61 MB .tar.partial behind, keeping the disk full."""
    from ssast.data.shard_sets import _AtomicShardWriter

    out, clean = tmp_path / "out", tmp_path / "clean"
    args = ["--shard-size", "4", "--workers", "1", "--split", "train"]
    real_write, written = _AtomicShardWriter.write, []

    def fills_the_disk(self, sample):
        if len(written) == 30:  # mid-shard: 7 complete shards and 2 samples of the 8th
            raise OSError(errno.ENOSPC, "No space left on device", self.fname)
        written.append(sample["__key__"])
        real_write(self, sample)

    monkeypatch.setattr(_AtomicShardWriter, "write", fills_the_disk)
    with caplog.at_level(logging.ERROR):
        assert data_cli(["from-folder", str(many_files), str(out), *args]) == 2
    assert "no space left on device" in caplog.text and "run the same command again" in caplog.text
    folder = out / "train"
    assert not list(folder.glob("*.partial")) and len(list(folder.glob("*.tar"))) == 7
    monkeypatch.setattr(_AtomicShardWriter, "write", real_write)
    assert data_cli(["from-folder", str(many_files), str(clean), *args]) == 0
    assert data_cli(["from-folder", str(many_files), str(out), *args]) == 0
    assert shard_files(folder) == shard_files(clean / "train")
