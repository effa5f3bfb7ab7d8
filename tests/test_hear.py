"""The HEAR 2021 API (ssast.hear), checked by the rules of hearvalidator.

hearvalidator itself imports tensorflow and cannot be installed here, so :func:`validate`
applies its checks (hearvalidator/validate.py, 2021.0.6) as written: the model is a
``torch.nn.Module`` moved with ``.to(device)``; ``sample_rate`` is one it accepts; the sizes
are ``int``; timestamp embeddings of white noise in [-1, 1] for 2 clips of 1.07, 1.98 and
4.0 s are float32 ``[n, T, D]`` with timestamps ``[n, T]`` whose spacing deviates by at most
1 ms from the mean and which never pass the end of the audio; scene embeddings of 4 clips
of 2.74 s are float32 ``[n, D]``. Its warnings (hop above 50 ms, a late first or an early
last timestamp) are not errors there; the end is checked here by a rule of our own: the
last timestamp is within one hop of the end.
"""

from __future__ import annotations

import math
from importlib import import_module

import pytest
import torch
from einops import rearrange

from ssast import save_encoder
from ssast.checkpoints import Preprocessing
from ssast.embed import Embedder
from ssast.features import Fbank, Normalize, fit_frames

from helpers import tiny_encoder

ACCEPTABLE_SAMPLE_RATES = [16000, 22050, 32000, 44100, 48000]
# hearvalidator's clips, then a batch of 16 and one of 8 (a batch larger than the embedder's).
TIMESTAMP_CLIPS = [(2, 1.07), (2, 1.98), (2, 4.0), (16, 2.0)]
SCENE_CLIPS = [(4, 2.74), (8, 3.74)]
GEOMETRIES = {
    "patch": {},  # 16x16 at stride 16: 160 ms
    "patch-stride-10": {"fstride": 10, "tstride": 10},  # 100 ms
    "frame": {"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 2},  # 20 ms
}


def noise(num_audio: int, seconds: float, sample_rate: int, device: str = "cpu") -> torch.Tensor:
    return torch.rand(num_audio, int(seconds * sample_rate), device=device) * 2 - 1.0


def validate(module_name: str, model_file_path: str, device: str = "cpu") -> None:
    module = import_module(module_name)
    model = module.load_model(model_file_path)
    assert isinstance(model, torch.nn.Module)
    model.to(device)
    assert model.sample_rate in ACCEPTABLE_SAMPLE_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    for num_audio, length in TIMESTAMP_CLIPS:
        embeddings, timestamps = module.get_timestamp_embeddings(noise(num_audio, length, model.sample_rate, device),
                                                                 model)
        assert embeddings.dtype == torch.float32
        assert embeddings.ndim == 3 and timestamps.ndim == 2
        assert embeddings.shape[0] == num_audio
        assert embeddings.shape[:2] == timestamps.shape
        assert embeddings.shape[2] == model.timestamp_embedding_size
        assert timestamps.shape[1] > 1
        diff = torch.diff(timestamps.detach().cpu().double())
        assert (diff - diff.mean()).abs().max() <= 1e-3  # hearvalidator allows 1 ms
        assert timestamps.max() <= 1000 * length
        assert timestamps.max() >= 1000 * length - diff.mean()  # ours: within one hop of the end
    for num_audio, length in SCENE_CLIPS:
        embeddings = module.get_scene_embeddings(noise(num_audio, length, model.sample_rate, device), model)
        assert embeddings.dtype == torch.float32
        assert embeddings.ndim == 2 and embeddings.shape == (num_audio, model.scene_embedding_size)


def save_tiny(tmp_path, **geometry) -> str:
    path = tmp_path / "enc.pt"
    save_encoder(tiny_encoder(**geometry), path, Preprocessing(-5.0, 4.0, 96))
    return str(path)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_ssast_hear_passes_the_validator(tmp_path, geometry):
    validate("ssast.hear", save_tiny(tmp_path, **GEOMETRIES[geometry]))


def test_hop_is_the_time_stride_and_longer_clips_give_more_timestamps(tmp_path):
    from ssast import hear

    model = hear.load_model(save_tiny(tmp_path))
    assert model.hop_ms == 160.0 and type(model.scene_embedding_size) is int
    assert hear.load_model(save_tiny(tmp_path, **GEOMETRIES["frame"])).hop_ms == 20.0
    assert hear.load_model(save_tiny(tmp_path), tstride=8).hop_ms == 80.0  # a finer stride, adapted at load
    short, _ = hear.get_timestamp_embeddings(noise(1, 2.0, 16000), model)
    long, timestamps = hear.get_timestamp_embeddings(noise(1, 9.5, 16000), model)
    assert long.shape[1] > short.shape[1]
    assert timestamps[0, 0] == 87.5  # the middle of the first 16 frames: 15 * 10 ms + 25 ms, halved
    with pytest.raises(ValueError, match="no default weights"):
        hear.load_model()


@pytest.mark.parametrize("geometry", ["patch-stride-10", "frame"])
def test_timestamp_embeddings_are_the_columns_of_consecutive_windows(tmp_path, geometry):
    """By hand: windows ``n_time * tstride`` frames apart; per window the patch tokens
    averaged over frequency, one vector per column; the columns of all windows in a row,
    up to the last one whose middle is inside the audio."""
    from ssast import hear

    changes = GEOMETRIES[geometry]
    encoder = tiny_encoder(**changes)
    model = hear.load_model(save_tiny(tmp_path, **changes))
    audio = noise(1, 2.33, 16000)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    config = encoder.config
    n_freq, n_time = config.grid
    hop, window = n_time * config.tstride * 160, Fbank().num_samples(96)
    columns = []
    for start in range(0, audio.shape[1], hop):
        features = Normalize(-5.0, 4.0)(fit_frames(Fbank()(audio[0, start : start + window]), 96))
        tokens = encoder.patch_tokens(encoder(features[None]))[0]
        columns.append(rearrange(tokens, "(f t) d -> t f d", f=n_freq).mean(dim=1))
    columns = torch.cat(columns)
    middles = [(g * config.tstride * 160 + ((config.tshape - 1) * 160 + 400) / 2) / 16 for g in range(len(columns))]
    kept = sum(middle <= 2330 for middle in middles)
    assert timestamps[0].tolist() == middles[:kept]
    assert torch.allclose(embeddings[0], columns[:kept], atol=1e-5)


def test_scene_embeddings_are_the_clip_embeddings_of_the_embedder(tmp_path):
    from ssast import hear

    model = hear.load_model(save_tiny(tmp_path))
    audio = noise(3, 3.74, 16000)
    embedder = Embedder(save_tiny(tmp_path))
    expected = torch.stack([embedder.embed_long(clip).clip for clip in audio])
    assert torch.allclose(hear.get_scene_embeddings(audio, model), expected, atol=1e-6)
    assert torch.allclose(model(audio), expected, atol=1e-6)
    assert math.isclose(model.embedder.windowing.hop / 16000, 0.48)  # half the 96-frame window
