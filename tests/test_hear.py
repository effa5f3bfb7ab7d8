"""The HEAR 2021 API (ssast.hear), checked by the rules of hearvalidator.

hearvalidator itself imports tensorflow and cannot be installed here, so :func:`validate`
applies its checks (hearvalidator/validate.py, 2021.0.6) as written: the model is a
``torch.nn.Module`` moved with ``.to(device)``; ``sample_rate`` is one it accepts; the sizes
are ``int``; timestamp embeddings of white noise in [-1, 1] for 2 clips of 1.07, 1.98 and
4.0 s are float32 ``[n, T, D]`` with timestamps ``[n, T]`` whose spacing deviates by at most
1 ms from the mean and which never pass the end of the audio; scene embeddings of 4 clips
of 2.74 s are float32 ``[n, D]``. Two of its warnings are errors here: a hop above 50 ms
(every geometry's default hop is at most that) and a last timestamp more than one hop (or
50 ms) before the end. Its third, a first timestamp later than one hop, prints for patch
models: the middle of a 16-frame column is 87.5 ms in, past their 40 ms hop.
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
    "patch": {},  # 16x16 at stride 16: columns 160 ms apart, 4 phases 40 ms apart
    "patch-stride-10": {"fstride": 10, "tstride": 10},  # 100 ms, 2 phases 50 ms apart
    "frame": {"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 2},  # 20 ms, one phase
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
        assert diff.max() <= 50.0  # else hearvalidator warns
        assert (diff - diff.mean()).abs().max() <= 1e-3  # hearvalidator allows 1 ms
        assert timestamps.max() <= 1000 * length
        assert timestamps.max() >= 1000 * length - min(diff.mean(), 50.0)  # else hearvalidator warns
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


def test_the_default_hop_is_the_fewest_phases_within_50_ms(tmp_path):
    from ssast import hear
    from ssast.timestamps import count_passes

    model = hear.load_model(save_tiny(tmp_path))
    assert (model.hop_ms, model.passes) == (40.0, 4) and type(model.scene_embedding_size) is int
    for geometry, hop, passes in (("patch-stride-10", 50.0, 2), ("frame", 20.0, 1)):
        model = hear.load_model(save_tiny(tmp_path, **GEOMETRIES[geometry]))
        assert (model.hop_ms, model.passes) == (hop, passes)
    assert hear.load_model(save_tiny(tmp_path), timestamp_hop_ms=None).hop_ms == 160.0  # the column hop
    assert hear.load_model(save_tiny(tmp_path), timestamp_hop_ms=100).hop_ms == 80.0
    assert hear.load_model(save_tiny(tmp_path), tstride=8).hop_ms == 40.0  # a stride adapted at load: 2 phases
    # Strides of 10 ms frames (160 samples) -> phases: the smallest divisor of the stride that is enough.
    assert [count_passes(stride, 160, 50) for stride in (1, 2, 5, 6, 7, 10, 15, 16)] == [1, 1, 1, 2, 7, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one fbank frame shift"):
        count_passes(16, 160, 5)
    with pytest.raises(ValueError, match="no default weights"):
        hear.load_model()


def columns_by_hand(encoder, audio: torch.Tensor) -> torch.Tensor:
    """The patch columns of ``audio [samples]``, window after window: windows ``n_time *
    tstride`` frames apart; per window the patch tokens averaged over frequency."""
    config = encoder.config
    n_freq, n_time = config.grid
    hop, window = n_time * config.tstride * 160, Fbank().num_samples(96)
    columns = []
    for start in range(0, len(audio) - 400 + 1, hop):
        features = Normalize(-5.0, 4.0)(fit_frames(Fbank()(audio[start : start + window]), 96))
        tokens = encoder.patch_tokens(encoder(features[None]))[0]
        columns.append(rearrange(tokens, "(f t) d -> t f d", f=n_freq).mean(dim=1))
    return torch.cat(columns)


@pytest.mark.parametrize(("geometry", "hop_ms"), [("patch", 50), ("patch", None), ("patch-stride-10", 50),
                                                  ("frame", 50)])
def test_timestamp_embeddings_interleave_the_columns_of_shifted_audio(tmp_path, geometry, hop_ms):
    """By hand: phase ``k`` is the columns of the audio from ``k * sub_hop`` on, and the
    result is every phase's column ``c`` at ``c * phases + k``, up to the last column whose
    middle is inside the audio."""
    from ssast import hear

    changes = GEOMETRIES[geometry]
    encoder = tiny_encoder(**changes)
    model = hear.load_model(save_tiny(tmp_path, **changes), timestamp_hop_ms=hop_ms)
    audio = noise(1, 2.33, 16000)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    config, phases = encoder.config, model.passes
    sub_hop = config.tstride * 160 // phases
    assert phases == {"patch": 4 if hop_ms else 1, "patch-stride-10": 2, "frame": 1}[geometry]
    middles = [(j * sub_hop + ((config.tshape - 1) * 160 + 400) / 2) / 16 for j in range(2330 * 16 // sub_hop + 1)]
    assert timestamps[0].tolist() == [middle for middle in middles if middle <= 2330]
    for k in range(phases):
        interleaved = embeddings[0, k::phases]
        shifted = columns_by_hand(encoder, audio[0, k * sub_hop :])
        assert torch.allclose(interleaved, shifted[: len(interleaved)], atol=1e-5)


def test_a_phase_runs_only_when_it_adds_a_column_and_holds_a_frame(tmp_path, monkeypatch):
    """Phases start 640 samples apart for the patch model, the first column's middle 1400
    samples in: 2680 samples hold three columns, so the fourth phase is not run. A patch 2
    frames wide has its first middle (280 samples) before the end of its first 25 ms frame
    (400): of 700 samples, the second phase would hold less than a frame, so the columns stop
    before it."""
    from ssast import hear

    def encoded_lengths(model) -> list[list[int]]:
        batches, encode = [], model.embedder._encode
        monkeypatch.setattr(model.embedder, "_encode", lambda windows: batches.append([len(w) for w in windows])
                            or encode(windows))
        return batches

    model = hear.load_model(save_tiny(tmp_path))
    batches = encoded_lengths(model)
    _, timestamps = hear.get_timestamp_embeddings(torch.rand(1, 2680) * 2 - 1, model)
    assert timestamps[0].tolist() == [87.5, 127.5, 167.5] and batches == [[2680, 2040, 1400]]
    narrow = hear.load_model(save_tiny(tmp_path, fshape=128, tshape=2, fstride=128, tstride=8), timestamp_hop_ms=20)
    assert (narrow.passes, narrow.sub_hop) == (4, 320)
    batches = encoded_lengths(narrow)
    _, timestamps = hear.get_timestamp_embeddings(torch.rand(1, 700) * 2 - 1, narrow)
    assert timestamps[0].tolist() == [17.5] and batches == [[700]]


def test_scene_embeddings_are_the_clip_embeddings_of_the_embedder(tmp_path):
    from ssast import hear

    model = hear.load_model(save_tiny(tmp_path))
    audio = noise(3, 3.74, 16000)
    embedder = Embedder(save_tiny(tmp_path))
    expected = torch.stack([embedder.embed_long(clip).clip for clip in audio])
    assert torch.allclose(hear.get_scene_embeddings(audio, model), expected, atol=1e-6)
    assert torch.allclose(model(audio), expected, atol=1e-6)
    assert math.isclose(model.embedder.windowing.hop / 16000, 0.48)  # half the 96-frame window
