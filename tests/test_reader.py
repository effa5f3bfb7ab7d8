"""The reader's distributed rules: exactly-once evaluation, equal training steps, skips."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import encoded, flac_sample, http_server, write_shard
from ssast.audio import encode_flac
from ssast.data.loaders import EpochLoader, EvalLoader
from ssast.data.options import ReaderOptions
from ssast.data.shards import list_shards
from ssast.data.skips import SkipCounter
from ssast.data.stream import ShardStream


@pytest.fixture
def uneven_shards(tmp_path):
    """Five shards of 3, 1, 4, 1 and 5 clips (14 in all)."""
    urls = []
    for shard, size in enumerate([3, 1, 4, 1, 5]):
        path = tmp_path / f"part-{shard:06d}.tar"
        write_shard(path, [flac_sample(f"s{shard}/c{index}", 0.1, ["a" if index % 2 else "b"]) for index in range(size)])
        urls.append(str(path))
    return urls


def eval_keys(urls, rank, world_size, workers, batch_size=2):
    stream = ShardStream(urls, clip_samples=1600, batch_size=batch_size, training=False, rank=rank, world_size=world_size)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [key for batch in loader for key in batch["key"]]


@pytest.mark.parametrize("num_shards", [5, 1])  # more shards than readers, and fewer
def test_evaluation_sees_every_sample_exactly_once_across_ranks_and_workers(uneven_shards, num_shards):
    urls = uneven_shards[:num_shards]
    expected = [key for url in urls for key in eval_keys([url], 0, 1, 0)]
    seen = Counter(key for rank in range(2) for key in eval_keys(urls, rank, 2, workers=2))
    assert sorted(seen) == sorted(expected)
    assert set(seen.values()) == {1}


def test_pattern_and_folder_name_the_same_shards(uneven_shards, tmp_path):
    pattern = str(tmp_path / "part-{000000..000004}.tar")
    assert list_shards(pattern) == list_shards(tmp_path) == uneven_shards
    assert list_shards(f"pipe:cat {uneven_shards[0]}") == [f"pipe:cat {uneven_shards[0]}"]
    assert len(eval_keys([f"pipe:cat {uneven_shards[4]}"], 0, 1, 0)) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(tmp_path / "empty")


def test_a_local_path_that_names_no_shard_fails_at_once(uneven_shards, tmp_path):
    """Retrying a missing file would not make it appear: listing the shards says so, naming it."""
    for missing in (tmp_path / "nowhere", tmp_path / "nope-{000000..000004}.tar", f"file:{tmp_path}/gone.tar"):
        with pytest.raises(FileNotFoundError, match=f"no shards at {missing}: no such file or folder"):
            list_shards(missing)
    with pytest.raises(FileNotFoundError, match=r"1 of the 6 shards of .* do not exist, e.g. .*part-000005.tar"):
        list_shards(str(tmp_path / "part-{000000..000005}.tar"))
    # Remote and pipe: sources are listed as they are: their readers retry them.
    assert list_shards("pipe:cat /nowhere.tar::http://127.0.0.1:9/a.tar") == ["pipe:cat /nowhere.tar",
                                                                              "http://127.0.0.1:9/a.tar"]


@pytest.mark.parametrize("classes", [None, ["a", "b"]])
def test_a_rank_without_evaluation_data_gets_one_padding_batch(uneven_shards, classes):
    """Under DDP a rank with no clip must still join the collectives that end an evaluation."""
    def batches(rank, world_size, padding=True, workers=2):
        stream = ShardStream(uneven_shards[1:2], clip_samples=1600, batch_size=2, training=False, rank=rank,
                             world_size=world_size, classes=classes, multi_label=True)  # one clip in all
        return list(EvalLoader(stream, num_workers=workers, padding=padding))

    (real,) = batches(0, 2)
    (padding,) = batches(1, 2)
    assert "padding" not in real and padding["padding"] is True
    assert padding["key"] == [""] and padding["audio"].shape == real["audio"].shape and not padding["audio"].any()
    if classes:
        assert padding["labels"].shape == real["labels"].shape
    assert batches(1, 2, padding=False) == []  # prediction goes without
    assert batches(0, 1, workers=0)[0]["key"] == real["key"]  # one process: nothing to pad


def train_loader(urls, rank, batches, workers=2, persistent=False, seed=0):
    stream = ShardStream(urls, clip_samples=1600, batch_size=3, training=True, rank=rank, world_size=2,
                         seed=seed, options=ReaderOptions(shuffle_buffer=8))
    return EpochLoader(stream, batches, num_workers=workers, persistent_workers=persistent)


@pytest.mark.parametrize("persistent", [False, True])
def test_training_gives_every_rank_the_same_number_of_full_batches(uneven_shards, persistent):
    loaders = [train_loader(uneven_shards[rank::2], rank, batches=7, persistent=persistent) for rank in range(2)]
    epochs = {rank: [[batch["key"] for batch in loader] for _ in range(2)] for rank, loader in enumerate(loaders)}
    for rank, loader in enumerate(loaders):
        assert len(loader) == 7
        for epoch in epochs[rank]:
            assert len(epoch) == 7 and all(len(keys) == 3 for keys in epoch)
        assert epochs[rank][0] != epochs[rank][1]  # a new epoch draws new shards and crops
    assert epochs[0][0] != epochs[1][0]  # ranks draw differently


def test_a_loader_given_anothers_state_draws_its_next_epoch(uneven_shards):
    """EpochLoader's state (its passes) is what a checkpoint keeps for a resumed run."""
    first = train_loader(uneven_shards, 0, batches=4, workers=0)
    epochs = [[batch["key"] for batch in first] for _ in range(2)]
    resumed = train_loader(uneven_shards, 0, batches=4, workers=0)
    resumed.load_state_dict({"passes": 1})
    assert [batch["key"] for batch in resumed] == epochs[1] != epochs[0]
    assert first.state_dict() == {"passes": 2} and resumed.state_dict() == {"passes": 2}
    iter(resumed)  # Lightning checks that a loader iterates: no pass begins until a batch is asked for
    assert resumed.state_dict() == {"passes": 2}


def test_training_is_reproducible_per_seed(uneven_shards):
    def first_epoch(seed):
        return [batch["key"] for batch in train_loader(uneven_shards, 0, batches=5, seed=seed)]

    assert first_epoch(1) == first_epoch(1)
    assert first_epoch(1) != first_epoch(2)


def test_training_shuffles_across_shard_order(tmp_path):
    path = tmp_path / "one.tar"
    write_shard(path, [flac_sample(f"k/{index:03d}", 0.05) for index in range(60)])
    stream = ShardStream([str(path)], clip_samples=800, batch_size=20, training=True, rank=0, world_size=1,
                         options=ReaderOptions(shuffle_buffer=30))
    keys = next(iter(stream))["key"]
    assert keys != sorted(keys)


def ramp_sample(key, num_samples):
    ramp = torch.linspace(-0.9, 0.9, num_samples)
    return {"__key__": key, "flac": encode_flac(ramp), "json": {"labels": []}}


def test_training_crops_at_random_and_evaluation_from_the_start(tmp_path):
    write_shard(tmp_path / "ramp.tar", [ramp_sample("ramp", 16000)])
    urls = [str(tmp_path / "ramp.tar")]
    first_values = set()
    for seed in range(12):
        stream = ShardStream(urls, clip_samples=4000, batch_size=1, training=True, seed=seed, rank=0, world_size=1)
        batch = next(iter(stream))
        assert batch["audio"].shape == (1, 4000) and batch["lengths"].tolist() == [4000]
        first_values.add(round(batch["audio"][0, 0].item(), 2))
    assert len(first_values) > 6
    stream = ShardStream(urls, clip_samples=20000, batch_size=1, training=False, rank=0, world_size=1)
    batch = next(iter(stream))
    assert batch["audio"][0, 0].item() == pytest.approx(-0.9, abs=1e-3)
    assert batch["lengths"].tolist() == [16000] and batch["audio"][0, 16000:].eq(0).all()


def test_labels_as_indices_and_multi_hot(tmp_path):
    write_shard(tmp_path / "l.tar", [flac_sample("x/0", 0.1, ["dog"]), flac_sample("x/1", 0.1, ["cat"])])
    urls = [str(tmp_path / "l.tar")]
    single = ShardStream(urls, clip_samples=1600, batch_size=2, training=False, classes=["cat", "dog"], rank=0, world_size=1)
    assert next(iter(single))["labels"].tolist() == [1, 0]
    multi = ShardStream(urls, clip_samples=1600, batch_size=2, training=False, classes=["bird", "cat", "dog"],
                        multi_label=True, rank=0, world_size=1)
    assert next(iter(multi))["labels"].tolist() == [[0, 0, 1], [0, 1, 0]]


def wav_bytes(samples):
    return encoded(np.asarray(samples, np.float32), 16000, "WAV", "FLOAT")


def test_bad_samples_are_skipped_counted_and_logged_across_workers(tmp_path, caplog):
    good = [flac_sample(f"good/{index}", 0.1, ["a"]) for index in range(4)]
    bad = [
        {"__key__": "bad/corrupt", "flac": b"fLaC not really", "json": {"labels": ["a"]}},
        {"__key__": "bad/empty", "wav": wav_bytes([]), "json": {"labels": ["a"]}},
        {"__key__": "bad/nan", "wav": wav_bytes([0.1, float("nan")] * 800), "json": {"labels": ["a"]}},
        {"__key__": "bad/no_audio", "json": {"labels": ["a"]}},
        {"__key__": "bad/unknown_label", "flac": good[0]["flac"], "json": {"labels": ["zebra"]}},
    ]
    write_shard(tmp_path / "0.tar", good[:2] + bad[:3])
    write_shard(tmp_path / "1.tar", bad[3:] + good[2:])
    urls = [str(tmp_path / "0.tar"), str(tmp_path / "1.tar"), str(tmp_path / "missing.tar")]
    skips = SkipCounter()
    stream = ShardStream(urls, clip_samples=1600, batch_size=3, training=False, classes=["a"], skips=skips,
                         rank=0, world_size=1, options=ReaderOptions(retry_delay=0))
    with caplog.at_level(logging.WARNING, logger="ssast.data"):
        keys = [key for batch in DataLoader(stream, batch_size=None, num_workers=2) for key in batch["key"]]
    assert sorted(keys) == [f"good/{index}" for index in range(4)]
    assert skips.samples == 5 and skips.shards == 1
    counts = skips.counts()
    assert {reason: counts[reason] for reason in ("undecodable", "empty", "not_finite", "no_audio", "unknown_label")} \
        == {"undecodable": 1, "empty": 1, "not_finite": 1, "no_audio": 1, "unknown_label": 1}
    # Worker processes log through their own handlers; the counts above crossed processes.
    keys = [key for batch in DataLoader(stream, batch_size=None, num_workers=0) for key in batch["key"]]
    assert skips.samples == 10
    assert "bad/nan" in caplog.text and "NaN or Inf" in caplog.text and "zebra" in caplog.text


def test_epoch_loader_rejects_empty_epochs(uneven_shards):
    stream = ShardStream(uneven_shards, clip_samples=1600, batch_size=2, training=True, rank=0, world_size=1)
    with pytest.raises(ValueError, match="at least 1"):
        EpochLoader(stream, 0)


def test_shards_over_http(uneven_shards, tmp_path):
    with http_server(tmp_path) as base:
        urls = list_shards(f"{base}/part-{{000000..000004}}.tar")
        assert len(urls) == 5
        assert sorted(eval_keys(urls, 0, 1, workers=2)) == sorted(eval_keys(uneven_shards, 0, 1, workers=0))
