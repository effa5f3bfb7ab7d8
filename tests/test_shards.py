"""Writing shards (folder, CSV), reading them back, and their stats."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import tone
from ssast.data.cli import main
from ssast.data.shards import list_shards, read_classes
from ssast.data.stats import compute_stats, read_stats
from ssast.data.stream import ShardStream
from ssast.data.writer import scan_folder, write_shards
from ssast.features import Fbank


def read_all(urls, classes=None, clip_samples=40000):
    stream = ShardStream(urls, clip_samples=clip_samples, batch_size=4, training=False, classes=classes,
                         multi_label=True, rank=0, world_size=1)
    batches = list(DataLoader(stream, batch_size=None, num_workers=0))
    return batches, stream.skips


def test_folder_to_shards_to_reader(audio_folder, tmp_path):
    files, ignored = scan_folder(audio_folder)
    summary = write_shards(files, tmp_path / "shards", shard_size=2, workers=2, progress=False)
    assert ignored == 1
    assert summary.clips[None] == 5 and summary.shards[None] == 3
    failed = sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in (tmp_path / "shards/errors.txt").read_text().splitlines())
    assert failed == ["corrupt.wav", "empty.flac"] and len(summary.errors) == 2
    assert "5 clips" in str(summary) and "2 failed" in str(summary)
    classes = read_classes(tmp_path / "shards/classes.txt")
    assert classes == ["cat", "dog"]

    batches, skips = read_all(list_shards(tmp_path / "shards"), classes)
    assert skips.samples == 0
    clips = {key: (audio, int(length), labels) for batch in batches
             for key, audio, length, labels in zip(batch["key"], batch["audio"], batch["lengths"], batch["labels"])}
    expected = {  # key -> (seconds, labels, frequency)
        "audio/dog/low_rate": (1.0, [0, 1], 440), "audio/cat/stereo": (1.5, [1, 0], 440),
        "audio/cat/lossless": (0.8, [1, 0], 880), "audio/dog/vorbis": (1.2, [0, 1], 440),
        "audio/unlabeled": (0.5, [0, 0], 440),
    }
    assert sorted(clips) == sorted(expected)
    for key, (seconds, labels, freq) in expected.items():
        audio, length, multi_hot = clips[key]
        assert abs(length - seconds * 16000) < 800, key  # 16 kHz whatever the source rate
        assert multi_hot.tolist() == labels, key
        spectrum = torch.fft.rfft(audio[1000:7000]).abs()
        assert abs(spectrum.argmax().item() * 16000 / 6000 - freq) < 5, key


def test_shards_are_not_overwritten_by_accident(audio_folder, tmp_path):
    files, _ = scan_folder(audio_folder)
    write_shards(files, tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(files, tmp_path / "out", progress=False)
    decodable = [file for file in files if file.path.stat().st_size > 100]
    summary = write_shards(decodable[:2], tmp_path / "out", overwrite=True, progress=False)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1 and summary.clips[None] == 2


def test_from_csv_with_splits_multi_labels_and_extra_columns(tmp_path, capsys):
    import soundfile

    (tmp_path / "wav").mkdir()
    rows = []
    for index in range(6):
        soundfile.write(tmp_path / "wav" / f"clip.{index}.wav", tone(0.3, 8000, freq=300 + 100 * index), 8000)
        rows.append({"path": f"wav/clip.{index}.wav", "labels": "speech;music" if index % 2 else "dog",
                     "split": "train" if index < 4 else "test", "fold": index % 3})
    rows.append({"path": "wav/missing.wav", "labels": "dog", "split": "train", "fold": 0})
    with (tmp_path / "list.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "labels", "split", "fold"])
        writer.writeheader()
        writer.writerows(rows)

    code = main(["from-csv", str(tmp_path / "list.csv"), str(tmp_path / "out"), "--workers", "2", "--shard-size", "3"])
    assert code == 0
    assert "train: 4 clips in 2 shards" in capsys.readouterr().out
    assert read_classes(tmp_path / "out/classes.txt") == ["dog", "music", "speech"]
    assert "missing.wav" in (tmp_path / "out/errors.txt").read_text()

    batches, skips = read_all(list_shards(tmp_path / "out", "test"), read_classes(tmp_path / "out/classes.txt"))
    assert skips.samples == 0 and sum(len(b["key"]) for b in batches) == 2
    import webdataset as wds

    samples = list(wds.WebDataset(list_shards(tmp_path / "out", "train"), shardshuffle=False))
    metadata = {s["__key__"]: json.loads(s["json"]) for s in samples}
    assert metadata["list/wav/clip_1"] == {
        "labels": ["speech", "music"], "source": "list", "path": "wav/clip.1.wav", "fold": 1, "split": "train",
        "sr": 16000, "duration": 0.3,
    }


def test_from_folder_cli_errors_are_clear(tmp_path, capsys):
    assert main(["from-folder", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["from-folder", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2


def test_stats_match_a_direct_computation(tmp_path):
    import soundfile

    generator = torch.Generator().manual_seed(0)
    (tmp_path / "in").mkdir()
    clips = []
    for index in range(5):
        clip = torch.randn(8000 + 3000 * index, generator=generator) * 0.1 * (index + 1)
        soundfile.write(tmp_path / "in" / f"{index}.wav", clip.numpy(), 16000, subtype="FLOAT")
        clips.append(clip)
    files, _ = scan_folder(tmp_path / "in")
    write_shards(files, tmp_path / "set", progress=False)
    stats = compute_stats(list_shards(tmp_path / "set"), target_length=60, batch_size=2, progress=False)

    fbank = Fbank()
    values = torch.cat([fbank(clip)[:60].flatten() for clip in clips]).double()
    # The shards hold 16-bit FLAC, hence the tolerance.
    assert stats["count"] == 5 and stats["frames"] == sum(min(60, fbank.num_frames(c.numel())) for c in clips)
    assert stats["mean"] == pytest.approx(values.mean().item(), abs=0.02)
    assert stats["std"] == pytest.approx(values.std().item(), abs=0.02)

    assert main(["stats", str(tmp_path / "set"), "--target-length", "60", "--workers", "0"]) == 0
    assert read_stats(tmp_path / "set/stats.json") == pytest.approx((stats["mean"], stats["std"]))


def test_console_entry_points_answer():
    result = subprocess.run([sys.executable, "-m", "ssast.data.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "from-folder" in result.stdout and "demo" in result.stdout
    for module in ("pretrain.cli", "finetune.cli"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "fit" in result.stdout
