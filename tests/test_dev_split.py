"""A dev set carved out of the training shards (s3prl's valid_ratio) and padding after the
normalization (SSAST's SUPERB upstream)."""

from __future__ import annotations

import pytest
import torch

from ssast.data.options import KeySplit
from ssast.train.datamodule import AudioDataModule


def test_a_key_split_parts_the_keys_in_two_the_same_way_every_time():
    keys = [f"set/clip{index}" for index in range(2000)]
    held_out = [key for key in keys if KeySplit(0.2, held_out=True).keeps(key)]
    rest = [key for key in keys if KeySplit(0.2, held_out=False).keeps(key)]
    assert sorted(held_out + rest) == sorted(keys) and not set(held_out) & set(rest)
    assert 0.17 < len(held_out) / len(keys) < 0.23
    assert held_out == [key for key in keys if KeySplit(0.2, held_out=True).keeps(key)]
    with pytest.raises(ValueError):
        KeySplit(1.0)


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_val_split_validates_on_training_clips_it_never_trains_on(tiny_corpus):
    data = AudioDataModule(train=str(tiny_corpus / "events/train"), val_split=0.5, batches_per_epoch=20,
                           target_length=32, batch_size=2, num_workers=0, classes="auto", stats="audioset")
    data.setup("fit")
    held_out = set(keys_of(data.val_dataloader()))
    trained = set(keys_of(data.train_dataloader()))
    every = {f"events/train/{index}" for index in range(8)}
    assert held_out and trained and held_out | trained == every and not held_out & trained
    with pytest.raises(ValueError, match="leave data.val unset"):
        AudioDataModule(train="x", val="y", val_split=0.2, batches_per_epoch=2)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        AudioDataModule(train="x", val_split=0.2)


def test_pad_normalized_puts_zeros_past_each_clip_after_normalizing(tiny_corpus):
    batches = {}
    for pad_normalized in (False, True):
        data = AudioDataModule(train=str(tiny_corpus / "events/train"), val=str(tiny_corpus / "events/val"),
                               target_length=100, batch_size=4, num_workers=0, classes="auto", stats="audioset",
                               pad_normalized=pad_normalized)
        data.setup("fit")
        batch = next(iter(data.val_dataloader()))
        batches[pad_normalized] = data.on_after_batch_transfer(batch, 0)["fbank"]
    valid = data.fbank.num_frames(16000 * 6 // 10)  # the 0.6 s clips: 58 frames of audio, 42 of padding
    before, after = batches[False], batches[True]
    assert torch.equal(before[:, :valid], after[:, :valid])
    assert torch.all(after[:, valid:] == 0)
    assert torch.allclose(before[:, valid:], torch.full_like(before[:, valid:], (0 + 4.2677393) / (2 * 4.5689974)))
