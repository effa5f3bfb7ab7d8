"""X-ARES (arXiv 2505.16369): ``ssast.xares.CheckpointEncoder`` passes xares's own encoder
check, is the one attribute ``xares.run`` can find in ``ssast/xares.py``, gives HEAR's
timestamp embeddings as frames, and runs a clip task end to end through xares's task code
on local WebDataset tars of demo-corpus clips (nothing downloaded)."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from ssast import save_encoder
from ssast.audio import decode_audio, encode_flac
from ssast.checkpoints import Preprocessing

from helpers import tiny_encoder, write_shard


@pytest.fixture
def checkpoint(tmp_path) -> str:
    path = tmp_path / "enc.pt"
    save_encoder(tiny_encoder(), path, Preprocessing(-5.0, 4.0, 96))  # 16x16 patches at stride 16
    return str(path)


def test_the_encoder_passes_xares_check_and_is_the_one_xares_run_finds(checkpoint):
    from xares.audio_encoder_checker import check_audio_encoder
    from xares.utils import attr_from_py_path

    from ssast.xares import CheckpointEncoder

    encoder = CheckpointEncoder(checkpoint)
    assert check_audio_encoder(encoder) is True
    assert (encoder.sampling_rate, encoder.output_dim, encoder.hop_size_in_ms) == (16000, 128, 40.0)
    assert attr_from_py_path("ssast/xares.py", endswith="Encoder") is CheckpointEncoder


def test_built_without_arguments_it_reads_the_environment(checkpoint, monkeypatch):
    from ssast.xares import CheckpointEncoder

    monkeypatch.delenv("SSAST_CHECKPOINT", raising=False)
    monkeypatch.delenv("SSAST_OPTIONS", raising=False)
    with pytest.raises(ValueError, match="SSAST_CHECKPOINT"):
        CheckpointEncoder()
    monkeypatch.setenv("SSAST_CHECKPOINT", checkpoint)
    assert CheckpointEncoder().hop_size_in_ms == 40.0
    monkeypatch.setenv("SSAST_OPTIONS", json.dumps({"timestamp_hop_ms": None, "layers": "all"}))
    encoder = CheckpointEncoder()
    assert (encoder.hop_size_in_ms, encoder.embedder.layers) == (160.0, "all")
    assert CheckpointEncoder(timestamp_hop_ms=100).hop_size_in_ms == 80.0  # given options win
    assert CheckpointEncoder(checkpoint).hop_size_in_ms == 40.0  # a path given: the environment is not read


def test_frames_are_hears_timestamp_embeddings(checkpoint):
    from ssast import hear
    from ssast.xares import CheckpointEncoder

    audio = torch.rand(3, 37_000) * 2 - 1
    frames = CheckpointEncoder(checkpoint)(audio)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, hear.load_model(checkpoint))
    assert frames.dtype == torch.float32 and torch.equal(frames, embeddings)
    assert timestamps[0, -1] <= 37_000 / 16 < timestamps[0, -1] + 40.0


def test_ten_minutes_run_one_batch_of_windows_at_a_time(checkpoint, monkeypatch):
    """X-ARES hands encoders up to 10 minutes at once: the encoder sees at most a batch of
    windows at a time, and the frames reach the end."""
    from ssast.xares import CheckpointEncoder

    encoder = CheckpointEncoder(checkpoint, timestamp_hop_ms=None)  # one phase: a quarter of the work
    batches = []
    run = encoder.embedder._encode
    monkeypatch.setattr(encoder.embedder, "_encode", lambda windows: batches.append(len(windows)) or run(windows))
    samples = 600 * 16000
    frames = encoder(torch.zeros(1, samples))
    assert frames.shape == (1, math.floor((samples / 16 - 87.5) / 160) + 1, 128)
    assert sum(batches) == encoder.columns.count(samples) == 625  # 0.96 s windows
    assert max(batches) == encoder.embedder.batch_size


# --- one X-ARES task, end to end ------------------------------------------------------------


CLASSES = ("click_train", "noise_burst", "tone")
# Clips per class and split; kNN takes its 10 nearest, so at least 10 training clips.
SPLIT_CLIPS = {"train": 4, "valid": 2, "test": 3}


def write_task_tars(env_dir: Path) -> None:
    """Demo-corpus event clips (2 s each) as X-ARES audio tars: ``<split>-000000.tar`` with
    ``flac`` and ``json`` ({"label": class index}) members, marked as downloaded."""
    from ssast.demo.corpus import ClipSpec, make_clip

    env_dir.mkdir(parents=True)
    for split, per_class in SPLIT_CLIPS.items():
        samples = []
        for index in range(per_class * len(CLASSES)):
            label = index % len(CLASSES)
            waveform = make_clip(ClipSpec("events", split, index, CLASSES[label], seed=0))
            samples.append({"__key__": f"{split}_{index:03d}", "flac": encode_flac(waveform), "json": {"label": label}})
        write_shard(env_dir / f"{split}-000000.tar", samples)
    (env_dir / ".audio_tar_ready").touch()


def soundfile_load(path: str) -> tuple[torch.Tensor, int]:
    """``torchaudio.load`` by libsndfile: ``([channels, samples], rate)``."""
    waveform, rate = decode_audio(Path(path).read_bytes(), target_rate=None)
    return waveform[None], rate


@pytest.fixture
def restore_warnings():
    """xares's settings route Python warnings into logging; undo that for the tests after."""
    yield
    logging.captureWarnings(False)


@pytest.mark.slow
def test_an_xares_clip_task_runs_end_to_end_on_local_tars(checkpoint, tmp_path, monkeypatch, restore_warnings):
    import torchaudio
    from xares.task import TaskConfig, XaresTask

    from ssast.xares import CheckpointEncoder

    # xares decodes audio through webdataset's torch_audio, which calls torchaudio.load; from
    # torchaudio 2.9 that needs torchcodec and a system FFmpeg, which this machine lacks.
    # Only the decoder is swapped: xares's tar reading, encoding, MLP and kNN run as shipped.
    monkeypatch.setattr(torchaudio, "load", soundfile_load)
    write_task_tars(tmp_path / "env" / "demo_events")
    config = TaskConfig(
        name="demo_events", task_type="clip", env_root=tmp_path / "env", encoder=CheckpointEncoder(checkpoint),
        output_dim=len(CLASSES), label_processor=lambda sample: sample["label"], epochs=3, batch_size_train=4,
        num_encoder_workers=0, torch_num_threads=torch.get_num_threads(),
    )
    task = XaresTask(config)
    (mlp_score, _), (knn_score, _) = task.run()
    print(f"X-ARES demo_events: MLP {mlp_score:.3f}, kNN {knn_score:.3f}")
    for score in (mlp_score, knn_score):
        assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert task.encoded_ready_path.exists()
    tars = {split: sorted(task.encoded_tar_dir.glob(f"wds-encoded-{split}*.tar")) for split in SPLIT_CLIPS}
    assert all(tars.values())
    encoded = wds.WebDataset([str(path) for path in tars["test"]], shardshuffle=False)
    shapes = [np.load(io.BytesIO(sample["npy"])).shape for sample in encoded]
    # Each 2 s clip: frames 40 ms apart, up to the last column middle inside it (the first is 87.5 ms in).
    assert shapes == [(math.floor((2000 - 87.5) / 40) + 1, 128)] * (SPLIT_CLIPS["test"] * len(CLASSES))
