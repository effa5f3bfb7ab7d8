import pytest
import torch
from torchaudio.compliance import kaldi

from ssast.features import PUBLISHED_STATS, Fbank, Normalize, fit_frames


def kaldi_reference(waveform: torch.Tensor) -> torch.Tensor:
    """The per-clip path of the AST/SSAST loaders."""
    waveform = waveform - waveform.mean()
    return kaldi.fbank(
        waveform[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )


def random_clip(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Noise (white and brown), tones and a DC offset at a random level."""
    t = torch.arange(num_samples) / 16000
    white = torch.randn(num_samples, generator=generator)
    brown = torch.randn(num_samples, generator=generator).cumsum(0) / 50
    freqs = torch.rand(3, 1, generator=generator) * 6000 + 50
    tones = torch.sin(2 * torch.pi * freqs * t).sum(0)
    mix = white * torch.rand((), generator=generator) + brown + tones + torch.randn((), generator=generator)
    return mix * 10 ** (-3 * torch.rand((), generator=generator))


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 16000, 16123, 48000, 164080])
def test_matches_kaldi_per_clip(num_samples):
    generator = torch.Generator().manual_seed(num_samples)
    for _ in range(3):
        clip = random_clip(num_samples, generator)
        expected = kaldi_reference(clip)
        actual = Fbank()(clip)
        assert actual.shape == expected.shape == (Fbank().num_frames(num_samples), 128)
        assert (actual - expected).abs().max() <= 1e-3


def test_matches_kaldi_in_a_batch_with_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([32000, 20000, 400, 31999])
    clips = [random_clip(int(n), generator) for n in lengths]
    batch = torch.zeros(len(clips), 32000)
    for row, clip in enumerate(clips):
        batch[row, : clip.numel()] = clip
    fbank = Fbank()
    features = fbank(batch, lengths)
    assert features.shape == (4, fbank.num_frames(32000), 128)
    for row, clip in enumerate(clips):
        valid = fbank.num_frames(clip.numel())
        assert (features[row, :valid] - kaldi_reference(clip)).abs().max() <= 1e-3
        assert features[row, valid:].eq(0).all()  # AST's zero padding of the fbank


def test_batch_without_lengths_is_each_clip():
    generator = torch.Generator().manual_seed(1)
    batch = torch.stack([random_clip(16000, generator) for _ in range(5)])
    features = Fbank()(batch)
    for row in range(5):
        assert (features[row] - kaldi_reference(batch[row])).abs().max() <= 1e-3


def test_autocast_keeps_float32_parity():
    clip = random_clip(16000, torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = Fbank()(clip[None])
    assert features.dtype == torch.float32
    assert (features[0] - kaldi_reference(clip)).abs().max() <= 1e-3


def test_frame_arithmetic():
    fbank = Fbank()
    assert fbank.num_samples(1024) == 164080 and fbank.num_frames(164080) == 1024
    assert fbank.num_frames(164079) == 1023 and fbank.num_frames(399) == 0
    assert fbank.num_frames(torch.tensor([399, 400, 560])).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="shorter than one"):
        fbank(torch.zeros(2, 100))


def test_fit_frames_pads_with_zeros_or_cuts_the_end():
    fbank = torch.randn(2, 10, 128)
    assert torch.equal(fit_frames(fbank, 6), fbank[:, :6])
    padded = fit_frames(fbank, 13)
    assert padded.shape == (2, 13, 128) and torch.equal(padded[:, :10], fbank) and padded[:, 10:].eq(0).all()


def test_normalize():
    mean, std = PUBLISHED_STATS["audioset"]
    x = torch.randn(3, 5, 128) * std + mean
    assert torch.allclose(Normalize.published("audioset")(x), (x - mean) / (2 * std))
    with pytest.raises(KeyError, match="known"):
        Normalize.published("nope")
    with pytest.raises(ValueError):
        Normalize(0.0, 0.0)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_fbank_runs_on_the_batch_device_in_float32(device):
    fbank = Fbank().to(torch.bfloat16)  # as a bf16 parent module would: its tables must not be rounded
    waveforms = torch.randn(2, 1000)
    logmel = fbank(waveforms.to(device))
    assert logmel.dtype == torch.float32 and logmel.device.type == device
    assert torch.allclose(logmel.cpu(), Fbank()(waveforms), atol=1e-4)
    assert len(fbank.state_dict()) == 0 and not list(fbank.buffers())  # a function of the settings: nothing to save
