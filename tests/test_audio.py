import random

import numpy as np
import pytest
import torch

from helpers import encoded, tone
from ssast.audio import AudioDecodeError, AudioFile, decode_audio, encode_flac, pad_or_crop, random_crop


FORMATS = [(8000, 1, "WAV", None), (44100, 2, "WAV", None), (16000, 1, "FLAC", None), (22050, 1, "OGG", "VORBIS"),
           (48000, 2, "FLAC", None), (16000, 1, "MP3", "MPEG_LAYER_III")]


@pytest.mark.parametrize("rate,channels,format,subtype", FORMATS)
def test_decode_gives_16k_mono(rate, channels, format, subtype):
    waveform, out_rate = decode_audio(encoded(tone(1.0, rate, channels=channels), rate, format, subtype))
    assert out_rate == 16000
    assert waveform.dtype == torch.float32 and waveform.dim() == 1
    # Lossy codecs pad a little at the ends; the length stays about one second.
    assert abs(waveform.numel() - 16000) < 1200
    spectrum = torch.fft.rfft(waveform[2000:14000]).abs()
    assert abs(spectrum.argmax().item() / 12000 * 16000 - 440) < 3  # the tone survived resampling


@pytest.mark.parametrize("rate,channels,format,subtype", FORMATS)
def test_a_window_read_by_seeking_is_that_span_of_the_whole_clip(rate, channels, format, subtype):
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (3 * rate, channels)).astype(np.float32)
    data = encoded(noise, rate, format, subtype)
    whole, _ = decode_audio(data)
    with AudioFile(data) as audio:
        assert audio.num_samples == whole.numel()
        assert (audio.rate, audio.channels) == (rate, channels)
        for start in (0, 1234, 20000, whole.numel() - 3000):  # the last one runs past the end
            window = audio.read(start, 8000)
            assert torch.allclose(window, whole[start : start + 8000], atol=1e-6), start


def test_stereo_is_averaged():
    left_right = np.stack([np.full(1600, 0.2), np.full(1600, 0.6)], axis=1).astype(np.float32)
    waveform, _ = decode_audio(encoded(left_right, 16000, "WAV", "FLOAT"))
    assert torch.allclose(waveform, torch.full((1600,), 0.4))


def test_native_rate_is_kept_on_request():
    waveform, rate = decode_audio(encoded(tone(0.5, 8000), 8000), target_rate=None)
    assert rate == 8000 and waveform.numel() == 4000


@pytest.mark.parametrize(
    "data,reason",
    [(b"", "empty"), (b"RIFF1234WAVEjunkjunk", "cannot decode"),
     (encoded(np.zeros((0, 1), np.float32), 16000), "empty"),
     (encoded(np.array([0.1, np.nan, 0.2], np.float32), 16000, "WAV", "FLOAT"), "NaN or Inf"),
     (encoded(np.array([0.1, np.inf, 0.2], np.float32), 16000, "WAV", "FLOAT"), "NaN or Inf")],
    # Float WAVs carry a timestamp (PEAK chunk): ids from the bytes would differ between xdist workers.
    ids=["no-bytes", "garbage", "no-samples", "nan", "inf"],
)
def test_unusable_audio_raises_one_error_type(data, reason):
    with pytest.raises(AudioDecodeError, match=reason):
        decode_audio(data)


def test_flac_round_trip_is_16_bit_close():
    waveform = torch.from_numpy(tone(0.25))
    decoded, _ = decode_audio(encode_flac(waveform))
    assert (decoded - waveform).abs().max() < 1 / 2**15


def test_pad_or_crop():
    waveform = torch.arange(10.0)
    clip, valid = pad_or_crop(waveform, 4, start=3)
    assert clip.tolist() == [3, 4, 5, 6] and valid == 4
    clip, valid = pad_or_crop(waveform, 13)
    assert clip[:10].tolist() == waveform.tolist() and clip[10:].eq(0).all() and valid == 10


def test_random_crop_covers_the_clip_and_is_seeded():
    waveform = torch.arange(100.0)
    starts = {int(random_crop(waveform, 10, random.Random(seed))[0][0]) for seed in range(200)}
    assert min(starts) == 0 and max(starts) == 90 and len(starts) > 50
    first = random_crop(waveform, 10, random.Random(7))[0]
    assert torch.equal(first, random_crop(waveform, 10, random.Random(7))[0])
    clip, valid = random_crop(waveform[:5], 10, random.Random(0))
    assert valid == 5 and clip[5:].eq(0).all()
