"""Class-balanced training draws: with replacement, each clip in proportion to the sum over
its labels of 1 / count (s3prl's WeightedRandomSampler for single labels, AST/EAT's AudioSet
weights for several), by rejection from the resampled stream, before any audio is decoded."""

import logging
from collections import Counter

import pytest

from helpers import flac_sample, write_shard
from ssast.data.label_counts import shard_label_counts
from ssast.data.loaders import EpochLoader
from ssast.data.options import ReaderOptions
from ssast.data.skips import SkipCounter
from ssast.data.stream import ShardStream
from ssast.train.datamodule import AudioDataModule

CLIP = 400


def skewed_shards(folder):
    """Six shards of five clips of class a and one of class b: 30 a, 6 b."""
    urls = []
    for shard in range(6):
        path = folder / f"part-{shard:06d}.tar"
        write_shard(path, [flac_sample(f"s{shard}/{index}", 0.02, ["b" if index == 5 else "a"]) for index in range(6)])
        urls.append(str(path))
    (folder / "classes.txt").write_text("a\nb\n")
    return urls


def multi_label_shard(folder):
    """Eight clips [a], two [a, b], one [c]: counts a 10, b 2, c 1; weights 0.1, 0.6, 1."""
    labels = [["a"]] * 8 + [["a", "b"]] * 2 + [["c"]]
    path = folder / "multi.tar"
    write_shard(path, [flac_sample(f"m/{index}/{'+'.join(names)}", 0.02, names) for index, names in enumerate(labels)])
    return [str(path)]


def drawn(urls, balanced, classes=("a", "b"), batches=40, seed=0, skips=None, multi_label=False):
    stream = ShardStream(urls, clip_samples=CLIP, batch_size=8, training=True, classes=list(classes), seed=seed,
                         rank=0, world_size=1, skips=skips, balanced=balanced, multi_label=multi_label,
                         options=ReaderOptions(shuffle_buffer=8))
    return [key for batch in EpochLoader(stream, batches) for key in batch["key"]]


def test_a_skewed_set_is_drawn_about_evenly(tmp_path):
    urls = skewed_shards(tmp_path)
    skips = SkipCounter()
    keys = drawn(urls, True, skips=skips)
    share_b = sum(key.endswith("/5") for key in keys) / len(keys)
    assert len(keys) == 320 and 0.42 < share_b < 0.58
    # the clips left out (about 640 here) are neither counted as read (decoded) nor as skipped
    assert 320 <= skips.read <= 328 and skips.samples == 0
    assert len(set(keys)) == 36  # with replacement, every clip has its chance
    plain = drawn(urls, False)
    assert sum(key.endswith("/5") for key in plain) / len(plain) < 0.3  # 1 in 6 without weights
    assert drawn(urls, True) == keys and drawn(urls, True, seed=1) != keys  # deterministic per seed


def test_multi_label_weights_sum_over_the_labels(tmp_path):
    urls = multi_label_shard(tmp_path)
    counts = shard_label_counts(urls, progress=False)
    assert counts.counts == {"a": 10, "b": 2, "c": 1} and counts.clips == 11
    assert counts.weight(["a"]) == pytest.approx(0.1) and counts.weight(["a", "b"]) == pytest.approx(0.6)
    assert counts.max_weight == pytest.approx(1.0) and counts.mean_weight == pytest.approx(3 / 11)
    keys = drawn(urls, True, classes=("a", "b", "c"), batches=50, multi_label=True)
    shares = Counter(key.rsplit("/", 1)[1] for key in keys)
    total = len(keys)  # expected: [a] 0.8 / 3, [a, b] 1.2 / 3, [c] 1 / 3 of the weight
    assert shares["a"] / total == pytest.approx(0.8 / 3, abs=0.07)
    assert shares["a+b"] / total == pytest.approx(1.2 / 3, abs=0.07)
    assert shares["c"] / total == pytest.approx(1 / 3, abs=0.07)


def test_label_counts_read_the_json_only(tmp_path, caplog):
    samples = [flac_sample(f"k/{index}", 0.02, ["a"]) for index in range(3)]
    samples += [{"__key__": "k/noise", "flac": b"not audio", "json": {"labels": ["b"]}},  # never decoded: counted
                {"__key__": "k/bad", "flac": samples[0]["flac"], "json": b"{not json"},
                {"__key__": "k/other", "flac": samples[0]["flac"], "json": {"labels": ["z"]}}]
    write_shard(tmp_path / "0.tar", samples)
    urls = [str(tmp_path / "0.tar"), f"pipe:cat {tmp_path / '0.tar'}"]
    with caplog.at_level(logging.WARNING, logger="ssast.data.label_counts"):
        counts = shard_label_counts(urls, ["a", "b"], progress=False)
    assert counts.counts == {"a": 6, "b": 2} and counts.clips == 8 and counts.max_weight == pytest.approx(0.5)
    assert "counted the labels of 8 clips in 2 shards (4 left out): 2 labels of 2 to 6 clips" in caplog.text
    assert "balanced sampling keeps 50.0% of the clips streamed" in caplog.text
    assert shard_label_counts(urls[:1], progress=False).counts == {"a": 3, "b": 1, "z": 1}
    write_shard(tmp_path / "none.tar", [flac_sample("n/0", 0.02)])
    with pytest.raises(ValueError, match="no clip of the 1 shards"):
        shard_label_counts([str(tmp_path / "none.tar")], progress=False)


def test_balanced_sampling_needs_draws_with_replacement_and_labels(tmp_path):
    urls = skewed_shards(tmp_path)
    with pytest.raises(ValueError, match="balanced sampling draws clips with replacement, which exact passes"):
        ShardStream(urls, clip_samples=CLIP, batch_size=4, training=True, classes=["a", "b"], rank=0, world_size=1,
                    sizes=[6] * 6, balanced=True)
    with pytest.raises(ValueError, match="it needs classes, and an unlabeled stream has none"):
        ShardStream(urls, clip_samples=CLIP, batch_size=4, training=True, rank=0, world_size=1, balanced=True)
    stream = ShardStream(urls, clip_samples=CLIP, batch_size=4, training=True, classes=["a", "b"], rank=0,
                         world_size=1, balanced=True)
    with pytest.raises(ValueError, match="no exact passes: give batches_per_epoch"):
        EpochLoader(stream, None)
    evaluation = ShardStream(urls, clip_samples=CLIP, batch_size=4, training=False, classes=["a", "b"], rank=0,
                             world_size=1, balanced=True)
    assert not evaluation.balanced and len([key for batch in evaluation for key in batch["key"]]) == 36
    with pytest.raises(ValueError, match="set data.batches_per_epoch"):
        AudioDataModule(train=str(tmp_path), classes="auto", balanced=True, stats="audioset")
    with pytest.raises(ValueError, match="needs data.classes"):
        AudioDataModule(train=str(tmp_path), batches_per_epoch=4, balanced=True, stats="audioset")


def test_the_data_module_counts_labels_once_and_balances_training_only(tmp_path, monkeypatch):
    skewed_shards(tmp_path)
    data = AudioDataModule(train=str(tmp_path), val=str(tmp_path), classes="auto", target_length=8, batch_size=8,
                           num_workers=0, batches_per_epoch=30, balanced=True, stats="audioset",
                           fbank_in_workers=False)
    train = data.train_dataloader()
    assert train.stream.label_counts.counts == {"a": 30, "b": 6}
    monkeypatch.setattr("ssast.train.datamodule.shard_label_counts", lambda *args, **kwargs: pytest.fail("again"))
    keys = [key for batch in data.train_dataloader() for key in batch["key"]]
    assert 0.4 < sum(key.endswith("/5") for key in keys) / len(keys) < 0.6
    validation = data.val_dataloader().dataset
    assert not validation.balanced and validation.label_counts is None
