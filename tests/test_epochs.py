"""Exact training passes: each clip once per epoch, shuffled anew, the same number of
batches on every DDP rank (a DataLoader's ``shuffle=True, drop_last=True``), whatever the
loader workers and the bad data."""

import logging
import os
import time
from collections import Counter

import pytest
import torch

from helpers import flac_sample, write_shard
from ssast.data.loaders import EpochLoader
from ssast.data.options import ReaderOptions
from ssast.data.shards import shard_sizes
from ssast.data.skips import NoReadableShards, SkipCounter
from ssast.data.stream import ShardStream
from ssast.data.tar import shard_samples
from ssast.data.shard_sets import ShardSetWriter
from ssast.data.writer import encode_clip
from ssast.train.datamodule import AudioDataModule

CLIP = 800  # 0.05 s rows keep every test fast


def one_shard(folder, clips, seconds=0.05):
    folder.mkdir(exist_ok=True)
    path = folder / "one.tar"
    write_shard(path, [flac_sample(f"c/{index:03d}", seconds) for index in range(clips)])
    return [str(path)]


def uneven_shards(folder):
    """Five shards of 7, 2, 9, 1 and 6 clips (25 in all)."""
    urls = []
    for shard, size in enumerate([7, 2, 9, 1, 6]):
        path = folder / f"part-{shard:06d}.tar"
        write_shard(path, [flac_sample(f"s{shard}/c{index}", 0.05) for index in range(size)])
        urls.append(str(path))
    return urls


def loader(urls, batch_size, rank=0, world_size=1, workers=0, skips=None, **options):
    stream = ShardStream(urls, clip_samples=CLIP, batch_size=batch_size, training=True, rank=rank,
                         world_size=world_size, skips=skips, sizes=shard_sizes(urls, progress=False),
                         options=ReaderOptions(**{"shuffle_buffer": 8, "retry_delay": 0, **options}))
    return EpochLoader(stream, None, num_workers=workers)


def epoch_keys(epoch_loader):
    return [key for batch in epoch_loader for key in batch["key"]]


def test_an_epoch_is_every_clip_once_in_a_new_order(tmp_path):
    urls = one_shard(tmp_path, 12)
    train = loader(urls, batch_size=4)
    assert len(train) == 3
    epochs = [epoch_keys(train) for _ in range(3)]
    for keys in epochs:
        assert sorted(keys) == [f"c/{index:03d}" for index in range(12)]
    assert len({tuple(keys) for keys in epochs}) == 3


def test_the_clips_past_the_last_full_batch_sit_out_and_others_each_epoch(tmp_path):
    urls = one_shard(tmp_path, 14)
    train = loader(urls, batch_size=4)
    left_out = []
    for _ in range(4):
        batches = list(train)
        assert len(batches) == len(train) == 3 and all(len(batch["key"]) == 4 for batch in batches)
        keys = [key for batch in batches for key in batch["key"]]
        assert len(set(keys)) == len(keys) == 12
        left_out.append(frozenset(f"c/{index:03d}" for index in range(14)) - set(keys))
    assert len(set(left_out)) > 1


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_an_epoch_into_equal_disjoint_shares(tmp_path, world_size, workers):
    urls, batch_size = uneven_shards(tmp_path), 3
    counters = [SkipCounter() for _ in range(world_size)]
    loaders = [loader(urls, batch_size, rank, world_size, workers, counters[rank]) for rank in range(world_size)]
    for epoch in range(1, 3):
        batches = {rank: list(rank_loader) for rank, rank_loader in enumerate(loaders)}
        per_rank = 25 // (world_size * batch_size)
        assert {len(rank_batches) for rank_batches in batches.values()} == {per_rank}
        assert all(len(batch["key"]) == batch_size for rank_batches in batches.values() for batch in rank_batches)
        seen = Counter(key for rank_batches in batches.values() for batch in rank_batches for key in batch["key"])
        assert set(seen.values()) == {1}
        assert len(seen) == world_size * per_rank * batch_size > 25 - world_size * batch_size
        assert sum(counter.read for counter in counters) == epoch * len(seen)  # nothing else was decoded


def test_shard_sizes_come_from_the_index_or_by_counting(tmp_path, caplog):
    with ShardSetWriter(tmp_path / "set", shard_size=3) as writer:
        for index in range(7):
            writer.write(encode_clip(f"w/{index}", torch.zeros(400), {"labels": []}, "train"))
    written = sorted(str(path) for path in (tmp_path / "set/train").glob("*.tar"))
    loose = one_shard(tmp_path / "loose", 5)
    with caplog.at_level(logging.WARNING, logger="ssast.data.shards"):
        assert shard_sizes(written, progress=False) == [3, 3, 1]
    assert "counting" not in caplog.text  # the index said it all
    with caplog.at_level(logging.WARNING, logger="ssast.data.shards"):
        urls = [*written, f"pipe:cat {written[0]}", *loose]
        assert shard_sizes(urls, progress=False) == [3, 3, 1, 3, 5]
    assert "counting the samples of 2 of 5 training shards by reading them: no shards.json lists them" in caplog.text


def test_bad_data_costs_repeated_clips_not_batches(tmp_path, caplog):
    good = [flac_sample(f"good/{index}", 0.05) for index in range(8)]
    write_shard(tmp_path / "0.tar", [*good[:4], {"__key__": "bad/0", "flac": b"not audio", "json": {"labels": []}}])
    write_shard(tmp_path / "1.tar", good[4:])
    urls = [str(tmp_path / "0.tar"), str(tmp_path / "1.tar")]
    skips = SkipCounter()
    train = loader(urls, batch_size=3, skips=skips, max_skip_ratio=None)
    with caplog.at_level(logging.WARNING, logger="ssast.data"):
        keys = epoch_keys(train)
    assert len(keys) == 9 and set(keys) == {f"good/{index}" for index in range(8)}
    assert skips.counts()["undecodable"] == 1 and skips.counts()["repeated"] == 1
    assert "got 8 of the 9 clips planned" in caplog.text and "repeated 1 clips" in skips.summary()

    (tmp_path / "1.tar").unlink()  # a shard gone after its size was taken: its clips are made up for
    assert len(list(train)) == 3 and skips.counts()["repeated"] == 6 and skips.shards == 1
    (tmp_path / "0.tar").unlink()
    with pytest.raises(NoReadableShards, match="got no usable clip in this pass"):
        list(train)


def test_an_epoch_loader_given_anothers_state_reads_its_next_pass(tmp_path):
    urls = uneven_shards(tmp_path)
    first = loader(urls, batch_size=4)
    epochs = [epoch_keys(first) for _ in range(2)]
    resumed = loader(urls, batch_size=4)
    resumed.load_state_dict(first.state_dict() | {"passes": 1})
    assert epoch_keys(resumed) == epochs[1] != epochs[0]
    assert resumed.state_dict() == first.state_dict() == {"passes": 2}


def test_what_cannot_make_an_exact_pass_says_so(tmp_path):
    urls = one_shard(tmp_path, 5)
    stream = ShardStream(urls, clip_samples=CLIP, batch_size=3, training=True, rank=0, world_size=2, sizes=[5])
    with pytest.raises(ValueError, match=r"5 training clips \(N\) cannot give each of 2 ranks \(world size\) one "
                                         r"batch of 3 \(batch size\)"):
        EpochLoader(stream, None)
    with pytest.raises(ValueError, match="exact passes"):
        EpochLoader(stream, 4)
    endless = ShardStream(urls, clip_samples=CLIP, batch_size=3, training=True, rank=0, world_size=1)
    with pytest.raises(ValueError, match="sizes"):
        EpochLoader(endless, None)


def test_a_shard_left_mid_way_is_closed_at_once(tmp_path):
    """A segment that ends inside a shard read by a command stops the command, even one that
    would not end on a broken pipe; its exit status is no error."""
    url = one_shard(tmp_path, 40, seconds=0.5)[0]
    assert os.path.getsize(url) > 1 << 17  # more than a pipe holds: the command is still writing
    pid_file = tmp_path / "pid"
    samples = shard_samples(f"pipe:echo $$ > {pid_file}; cat {url}; sleep 20")
    assert next(samples)["__key__"] == "c/000"
    began = time.monotonic()
    samples.close()
    assert time.monotonic() - began < 5
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_pipe_shards_read_in_parts_give_exact_passes(tmp_path):
    path = one_shard(tmp_path, 10)[0]
    skips = SkipCounter()
    train = loader([f"pipe:cat {path}"], batch_size=3, world_size=1, workers=2, skips=skips)
    for _ in range(3):  # the used 9 of 10 start anywhere: some passes stop a worker mid-shard
        keys = epoch_keys(train)
        assert len(set(keys)) == len(keys) == 9
    assert skips.counts()["shard_retries"] == skips.shards == skips.counts()["repeated"] == 0


def test_the_data_module_reads_exact_passes_by_default(tmp_path):
    urls = uneven_shards(tmp_path)
    data = AudioDataModule(train=str(tmp_path), target_length=8, batch_size=4, num_workers=0, stats="audioset",
                           mixup=0.5)
    train = data.train_dataloader()
    assert train.stream.sizes == [7, 2, 9, 1, 6] and len(train) == 6
    batches = list(train)
    assert len(batches) == 6 and all("mix_lambda" in batch and "mix_partner" in batch for batch in batches)
    assert len({key for batch in batches for key in batch["key"]}) == 24
    endless = AudioDataModule(train=urls, batch_size=4, num_workers=0, batches_per_epoch=2, stats="audioset")
    assert len(endless.train_dataloader()) == 2
