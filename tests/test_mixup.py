"""Mixup of waveforms before the fbank, as AST/SSAST's dataloader does it
(``src/dataloader.py``: ``_wav2fbank`` with a second file, λ ~ Beta(10, 10))."""

import pytest
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from helpers import flac_sample, write_shard
from ssast.augment import mix_waveforms
from ssast.data.stream import ShardStream
from ssast.features import Fbank, fit_frames


def official_mixed_fbank(wave1: torch.Tensor, wave2: torch.Tensor, lam: float, target_length: int) -> torch.Tensor:
    """``AudioDataset._wav2fbank(filename, filename2)`` with the mix weight given."""
    wave1, wave2 = wave1[None] - wave1.mean(), wave2[None] - wave2.mean()
    if wave1.shape[1] > wave2.shape[1]:
        wave2 = F.pad(wave2, (0, wave1.shape[1] - wave2.shape[1]))
    else:
        wave2 = wave2[:, : wave1.shape[1]]
    mix = lam * wave1 + (1 - lam) * wave2
    fbank = kaldi.fbank(mix - mix.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    return F.pad(fbank, (0, 0, 0, target_length - fbank.shape[0]))


def test_the_mixed_fbank_is_the_official_one():
    lengths = torch.tensor([8000, 12000])
    generator = torch.Generator().manual_seed(0)
    waves = [0.3 * torch.randn(int(n), generator=generator) + torch.sin(torch.arange(int(n)) * f) + offset
             for n, f, offset in zip(lengths, (0.07, 0.31), (0.2, -0.5))]
    audio = torch.stack([F.pad(waves[0], (0, 4000)), waves[1]])
    seed = next(seed for seed in range(100)  # a draw that pairs the two clips, so both are cut and padded
                if mix_waveforms(audio, lengths, 1.0, torch.Generator().manual_seed(seed))[1].tolist() == [1, 0])
    mixed, partner, lam = mix_waveforms(audio, lengths, 1.0, torch.Generator().manual_seed(seed))
    assert mixed.shape == audio.shape and mixed[0, 8000:].eq(0).all()
    target = 80
    ours = fit_frames(Fbank()(mixed, lengths), target)
    for row in range(2):
        expected = official_mixed_fbank(waves[row], waves[1 - row], lam[row].item(), target)
        assert (ours[row] - expected).abs().max() <= 1e-3


def test_lambda_is_beta_10_10_and_drawn_with_the_probability():
    audio, lengths = torch.randn(4000, 16), torch.full((4000,), 16)
    _, partner, lam = mix_waveforms(audio, lengths, 1.0, torch.Generator().manual_seed(1))
    assert 0 < lam.min() and lam.max() < 1
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.std().item() == pytest.approx((100 / (400 * 21)) ** 0.5, abs=0.01)  # Beta(10, 10)'s
    assert sorted(partner.tolist()) == list(range(4000))

    mixed, _, lam = mix_waveforms(audio, lengths, 0.3, torch.Generator().manual_seed(2))
    kept = lam == 1
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert torch.equal(mixed[kept], audio[kept])  # clips not drawn are left as they are

    untouched, partner, lam = mix_waveforms(audio, lengths, 0.0)
    assert untouched is audio and partner.tolist() == list(range(4000)) and lam.eq(1).all()


def test_training_batches_carry_the_mix_and_evaluation_never_mixes(tmp_path):
    write_shard(tmp_path / "s.tar", [flac_sample(f"k/{index}", 0.1, ["a"], freq=200 + 100 * index)
                                     for index in range(8)])
    urls = [str(tmp_path / "s.tar")]

    def batches(training, mixup, seed=0):
        stream = ShardStream(urls, clip_samples=1200, batch_size=4, training=training, classes=["a"], seed=seed,
                             rank=0, world_size=1, sizes=[8], mixup=mixup)
        return list(stream)

    mixed = batches(True, 1.0)
    assert len(mixed) == 2
    for batch in mixed:
        assert batch["mix_partner"].shape == batch["mix_lambda"].shape == (4,)
        assert sorted(batch["mix_partner"].tolist()) == [0, 1, 2, 3] and (batch["mix_lambda"] < 1).all()
    again = batches(True, 1.0)  # the same seed, epoch, rank and worker mix alike
    assert all(torch.equal(a["mix_lambda"], b["mix_lambda"]) and torch.equal(a["audio"], b["audio"])
               for a, b in zip(mixed, again))
    assert "mix_lambda" not in batches(True, 0.0)[0]
    plain, evaluated = batches(False, 0.0), batches(False, 1.0)
    assert "mix_lambda" not in evaluated[0] and "mix_partner" not in evaluated[0]
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(plain, evaluated))
