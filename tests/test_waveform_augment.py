"""Waveform augmentations of training batches: EAT's roll and gain (``_roll_mag_aug``) and
s3prl's shorter training crops (``max_timestep``) in rows still as long as the model's input."""

import pytest
import torch

from helpers import flac_sample, write_shard
from ssast.audio import AudioFile
from ssast.augment import roll_and_gain
from ssast.data.stream import ShardStream
from ssast.train.datamodule import AudioDataModule


def recovered_shift_and_gain(row: torch.Tensor, original: torch.Tensor) -> tuple[int, float]:
    """A shift and positive gain for which ``row`` is ``original``, mean removed, rolled and
    scaled (a tone is its own negative half a period on: a negative gain is no answer)."""
    centered = original - original.mean()
    for shift in range(len(original)):
        rolled = centered.roll(shift)
        gain = (row @ rolled / (rolled @ rolled)).item()
        if gain > 0 and torch.allclose(row, gain * rolled, atol=1e-5):
            return shift, gain
    raise AssertionError("the row is no rolled, scaled copy of the clip")


def test_each_row_rolls_within_its_length_and_is_scaled():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([300, 180, 7])
    audio = torch.randn(3, 300, generator=generator) + 0.4
    audio[1, 180:] = audio[2, 7:] = 0
    out = roll_and_gain(audio, lengths, torch.Generator().manual_seed(1))
    shifts = []
    for row, length in enumerate(lengths.tolist()):
        shift, gain = recovered_shift_and_gain(out[row, :length], audio[row, :length])
        assert 0.5 <= gain <= 1.5 and out[row, length:].eq(0).all()
        shifts.append(shift)
    assert len(set(shifts)) > 1
    again = roll_and_gain(audio, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, roll_and_gain(audio, lengths))


def test_gains_are_half_plus_beta_10_10_and_shifts_uniform():
    count, length = 4000, 50
    audio = torch.zeros(count, length)
    audio[:, 0] = 1.0  # an impulse: where it lands is the shift, its height (less the mean) the gain
    out = roll_and_gain(audio, torch.full((count,), length), torch.Generator().manual_seed(2))
    gains = out.max(dim=1).values / (1 - 1 / length)
    shifts = out.argmax(dim=1)
    assert 0.5 <= gains.min() and gains.max() <= 1.5
    assert gains.mean().item() == pytest.approx(1.0, abs=0.01)
    assert gains.std().item() == pytest.approx((100 / (400 * 21)) ** 0.5, abs=0.01)  # Beta(10, 10)'s
    assert shifts.min() == 0 and shifts.max() == length - 1
    assert torch.bincount(shifts, minlength=length).float().std() < 0.25 * count / length


def shards(folder):
    """Clips of 0.2 s (3200 samples) and one of 0.03 s (480), in one shard."""
    samples = [flac_sample(f"k/{index}", 0.2, ["a"], freq=200 + 150 * index) for index in range(7)]
    write_shard(folder / "s.tar", [*samples, flac_sample("k/short", 0.03, ["a"])])
    (folder / "classes.txt").write_text("a\n")
    return [str(folder / "s.tar")], {sample["__key__"]: sample["flac"] for sample in samples}


def stream(urls, training, **options):
    return ShardStream(urls, clip_samples=1600, batch_size=4, training=training, classes=["a"], rank=0, world_size=1,
                       sizes=[8] if training else None, **options)


def test_training_crops_are_short_windows_in_full_rows(tmp_path):
    urls, encoded = shards(tmp_path)
    for seed in range(3):
        for batch in stream(urls, True, train_crop_samples=800, seed=seed):
            assert batch["audio"].shape == (4, 1600)
            for key, row, length in zip(batch["key"], batch["audio"], batch["lengths"].tolist()):
                assert length == (480 if key == "k/short" else 800) and row[length:].eq(0).all()
                if key != "k/short":
                    with AudioFile(encoded[key]) as audio:
                        whole = audio.read()
                    assert any(torch.equal(row[:length], whole[start:start + length]) for start in range(2401))
    plain = [batch["lengths"] for batch in stream(urls, True)]
    assert set(torch.cat(plain).tolist()) == {1600, 480}
    evaluated = [stream(urls, False, **options) for options in ({}, {"train_crop_samples": 800, "roll_gain": True})]
    for one, other in zip(*evaluated):
        assert torch.equal(one["audio"], other["audio"]) and torch.equal(one["lengths"], other["lengths"])
    for wrong in (0, -5, 1601):
        with pytest.raises(ValueError, match="train_crop_samples must be positive and at most the 1600"):
            stream(urls, True, train_crop_samples=wrong)


def test_roll_gain_changes_training_rows_only(tmp_path):
    urls, _ = shards(tmp_path)

    def rows(training, **options):  # by key; rows longer than the clips hold them whole, wherever they start
        batches = ShardStream(urls, clip_samples=4000, batch_size=4, training=training, classes=["a"], rank=0,
                              world_size=1, sizes=[8] if training else None, **options)
        return {key: (row, length) for batch in batches
                for key, row, length in zip(batch["key"], batch["audio"], batch["lengths"].tolist())}

    plain, rolled = rows(True), rows(True, roll_gain=True)
    assert rows(True, roll_gain=True).keys() == rolled.keys() == plain.keys()
    assert all(torch.equal(row, rows(True, roll_gain=True)[key][0]) for key, (row, _) in rolled.items())
    for key, (row, length) in rolled.items():
        _, gain = recovered_shift_and_gain(row[:length], plain[key][0][:length])
        assert 0.5 <= gain <= 1.5 and row[length:].eq(0).all()
    evaluated = rows(False, roll_gain=True)
    assert all(torch.equal(row, plain[key][0]) for key, (row, _) in evaluated.items())
    mixed = list(stream(urls, True, roll_gain=True, mixup=1.0))
    assert all("mix_lambda" in batch for batch in mixed)


def test_the_data_module_passes_the_options_to_training_only(tmp_path):
    shards(tmp_path)
    data = AudioDataModule(train=str(tmp_path), val=str(tmp_path), classes="auto", target_length=8, batch_size=4,
                           num_workers=0, stats="audioset", roll_gain=True, train_crop_samples=100)
    train, validation = data.train_dataloader().stream, data.val_dataloader().dataset
    assert train.roll_gain and train.train_crop_samples == 100
    assert not validation.roll_gain and validation.train_crop_samples is None
    with pytest.raises(ValueError, match="data.train_crop_samples must be positive"):
        AudioDataModule(train=str(tmp_path), target_length=8, stats="audioset", train_crop_samples=10**6)
