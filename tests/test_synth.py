"""Tests for the dry-sound synthesizers (ssast.demo.events, ssast.demo.speech)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from ssast.demo.dsp import SAMPLE_RATE
from ssast.demo.events import EVENT_CLASSES, synth_event
from ssast.demo.phonemes import KEYWORDS, PHONEMES
from ssast.demo.speech import synth_utterance, synth_word
from ssast.demo.voice import Voice

CORE_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    """Synthesis works on small tensors: one thread is fastest, and intra-op threads stall
    badly when the (small) test machine is busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_clean(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32
    assert x.ndim == 1
    assert torch.isfinite(x).all()
    assert x.abs().max().item() == 1.0


def band_matrix(bands: int = 24, n_fft: int = 512) -> torch.Tensor:
    """Rectangular log-spaced bands from 100 Hz to 7.8 kHz: [bands, n_fft // 2 + 1]."""
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    edges = torch.logspace(2.0, torch.log10(torch.tensor(7800.0)).item(), bands + 1)
    return ((freqs >= edges[:-1, None]) & (freqs < edges[1:, None])).float()


BANDS = band_matrix()


def log_band_spectrogram(x: torch.Tensor) -> torch.Tensor:
    power = torch.stft(x, 512, 128, window=torch.hann_window(512), return_complex=True).abs() ** 2
    return torch.log10(BANDS @ power + 1e-8)  # [bands, frames]


def estimate_f0(x: torch.Tensor, low: float = 60.0, high: float = 400.0) -> float:
    """Median autocorrelation F0 over the loud (voiced) 40 ms frames."""
    frames = x.double().unfold(0, 640, 160)
    energy = frames.pow(2).mean(1)
    frames = frames[energy > 0.3 * energy.max()]
    frames = frames - frames.mean(1, keepdim=True)
    spectrum = torch.fft.rfft(frames, n=1280)
    acf = torch.fft.irfft(spectrum.abs() ** 2, n=1280)[:, :640]
    lags = torch.arange(640)
    acf[:, (lags < SAMPLE_RATE / high) | (lags > SAMPLE_RATE / low)] = -float("inf")
    return float((SAMPLE_RATE / acf.argmax(1).double()).median())


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


def test_event_inventory() -> None:
    assert len(EVENT_CLASSES) >= 10
    assert len(set(EVENT_CLASSES)) == len(EVENT_CLASSES)


@pytest.mark.parametrize("name", EVENT_CLASSES)
def test_event_length_range_and_peak(name: str) -> None:
    g = gen(0)
    for duration in (0.25, 1.0, 1.3371):
        x = synth_event(name, duration, g)
        assert x.numel() == round(duration * SAMPLE_RATE)
        assert_clean(x)
        # Not a degenerate spike: some energy beyond the loudest sample.
        assert x.pow(2).sum() > 5.0


@pytest.mark.parametrize("samples", [1, 2, 17, 100])
def test_event_tiny_durations(samples: int) -> None:
    g = gen(1)
    for name in EVENT_CLASSES:
        x = synth_event(name, samples / SAMPLE_RATE, g)
        assert x.numel() == samples
        assert_clean(x)


def test_event_determinism_and_variety() -> None:
    for name in EVENT_CLASSES:
        a = synth_event(name, 0.5, gen(7))
        b = synth_event(name, 0.5, gen(7))
        c = synth_event(name, 0.5, gen(8))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
        g = gen(9)
        assert not torch.equal(synth_event(name, 0.5, g), synth_event(name, 0.5, g)), name


def test_output_independent_of_thread_count() -> None:
    """Bit-identical audio whether torch runs on one thread or several (long FFTs and
    reductions are split across threads, which would change the last bits)."""

    def render() -> list[torch.Tensor]:
        g = gen(31)
        sounds = [synth_event(name, 2.5, g) for name in EVENT_CLASSES]
        return sounds + [synth_utterance(["forward", "backward", "seven"], Voice.random(g), g)]

    single = render()
    torch.set_num_threads(2)
    try:
        multi = render()
    finally:
        torch.set_num_threads(1)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a, b)


def test_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    for name in EVENT_CLASSES:
        synth_event(name, 0.2, gen(0))
    synth_word("yes", Voice.random(gen(0)), gen(0))
    synth_utterance(["no", "go"], Voice(), gen(0))
    assert torch.equal(state, torch.get_rng_state())


def test_event_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tone"):
        synth_event("not_a_class", 1.0, gen(0))
    for duration in (0.0, -1.0, 1e-6, float("nan")):
        with pytest.raises(ValueError):
            synth_event("tone", duration, gen(0))


def test_tone_is_a_single_frequency() -> None:
    for seed in range(5):
        x = synth_event("tone", 1.0, gen(seed)).double()
        power = torch.fft.rfft(x).abs() ** 2
        peak = int(power.argmax())
        assert 190 <= peak <= 4010  # 1 Hz bins for a 1 s clip
        assert power[max(peak - 30, 0) : peak + 31].sum() > 0.95 * power.sum()


def test_chirps_sweep_in_their_direction() -> None:
    freqs = torch.fft.rfftfreq(512, 1.0 / SAMPLE_RATE)

    def centroid(x: torch.Tensor) -> torch.Tensor:
        power = torch.stft(x, 512, 128, window=torch.hann_window(512), return_complex=True).abs() ** 2
        return (freqs[:, None] * power).sum(0) / power.sum(0)

    for seed in range(5):
        up = centroid(synth_event("chirp_up", 1.0, gen(seed)))
        down = centroid(synth_event("chirp_down", 1.0, gen(seed)))
        assert up[-20:].mean() > 1.8 * up[:20].mean()
        assert down[:20].mean() > 1.8 * down[-20:].mean()


def test_event_classes_have_distinct_spectra() -> None:
    """Nearest-centroid on time-averaged log band power (+ its spread) beats chance widely."""

    def features(x: torch.Tensor) -> torch.Tensor:
        spec = log_band_spectrogram(x)
        mean = spec.mean(1)
        return torch.cat([mean - mean.mean(), spec.std(1)])

    g = gen(2024)
    centroids = torch.stack(
        [torch.stack([features(synth_event(name, 0.5, g)) for _ in range(6)]).mean(0) for name in EVENT_CLASSES]
    )
    hits = 0
    trials = 0
    for label, name in enumerate(EVENT_CLASSES):
        for _ in range(4):
            guess = (centroids - features(synth_event(name, 0.5, g))).norm(dim=1).argmin()
            hits += int(guess == label)
            trials += 1
    chance = 1.0 / len(EVENT_CLASSES)
    assert hits / trials > 3 * chance


# --------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------


def test_keyword_inventory() -> None:
    assert len(KEYWORDS) >= 10
    assert set(CORE_WORDS) <= set(KEYWORDS)
    for word, phones in KEYWORDS.items():
        assert phones, word
        assert all(p in PHONEMES for p in phones), word
    assert len({phones for phones in KEYWORDS.values()}) == len(KEYWORDS)


@pytest.mark.parametrize("word", list(KEYWORDS))
def test_every_keyword(word: str) -> None:
    x = synth_word(word, Voice.random(gen(3)), gen(4))
    assert_clean(x)
    assert 0.2 * SAMPLE_RATE < x.numel() < 1.3 * SAMPLE_RATE


def test_word_determinism_and_variation() -> None:
    voice = Voice.random(gen(5))
    assert torch.equal(synth_word("left", voice, gen(6)), synth_word("left", voice, gen(6)))
    g = gen(6)
    takes = [synth_word("left", voice, g) for _ in range(5)]
    assert len({t.numel() for t in takes}) >= 3  # timing jitter
    for a, b in zip(takes, takes[1:], strict=False):
        assert not (a.numel() == b.numel() and torch.equal(a, b))


def test_unknown_words_raise() -> None:
    with pytest.raises(ValueError, match="yes"):
        synth_word("banana", Voice(), gen(0))
    with pytest.raises(ValueError):
        synth_utterance(["yes", "banana"], Voice(), gen(0))
    with pytest.raises(ValueError):
        synth_utterance([], Voice(), gen(0))


def test_voice_validation_and_random_ranges() -> None:
    with pytest.raises(ValueError):
        Voice(f0_hz=-1.0)
    assert Voice.random(gen(11)) == Voice.random(gen(11))
    g = gen(12)
    voices = [Voice.random(g) for _ in range(300)]
    f0 = torch.tensor([v.f0_hz for v in voices])
    vtl = torch.tensor([v.vtl_factor for v in voices])
    assert f0.min() >= 80 and f0.max() <= 300
    assert vtl.min() >= 0.8 and vtl.max() <= 1.25
    # Male-, female- and child-like voices all occur.
    assert (f0 < 120).any() and ((f0 > 170) & (f0 < 230)).any() and (f0 > 250).any()
    assert (vtl < 0.9).any() and (vtl > 1.18).any()


@pytest.mark.parametrize("f0", [90.0, 140.0, 200.0, 280.0])
def test_f0_tracks_voice(f0: float) -> None:
    voice = Voice(f0_hz=f0, vtl_factor=1.0, intonation_st=1.0)
    g = gen(int(f0))
    for word in ("on", "no", "one"):
        estimate = estimate_f0(synth_word(word, voice, g))
        assert abs(estimate / f0 - 1.0) < 0.1, (word, estimate)


def test_vocal_tract_length_scales_formants() -> None:
    freqs = torch.fft.rfftfreq(512, 1.0 / SAMPLE_RATE)
    low_band = freqs < 4000

    def voiced_centroid(voice: Voice, seed: int) -> float:
        x = synth_word("yes", voice, gen(seed))
        power = torch.stft(x, 512, 128, window=torch.hann_window(512), return_complex=True).abs() ** 2
        low = power[low_band]
        loud = low.sum(0) > 0.1 * low.sum(0).max()  # vowel frames, not the /s/
        low = low[:, loud].sum(1)
        return float((freqs[low_band] * low).sum() / low.sum())

    for seed in range(3):
        short = voiced_centroid(Voice(f0_hz=150.0, vtl_factor=1.2), seed)
        long = voiced_centroid(Voice(f0_hz=150.0, vtl_factor=0.85), seed)
        assert short > 1.15 * long


def test_words_are_distinguishable_across_voices() -> None:
    """1-nearest-neighbour on time-normalized log spectrograms, leaving each voice out."""

    def features(x: torch.Tensor) -> torch.Tensor:
        spec = log_band_spectrogram(x)
        loudest = spec.max(0).values
        active = (loudest > loudest.max() - 4).nonzero().squeeze(1)
        spec = spec[:, int(active.min()) : int(active.max()) + 1]
        spec = F.interpolate(spec[None], size=20, mode="linear", align_corners=True)[0]
        return (spec - spec.mean()).flatten()

    g = gen(99)
    voices = [Voice.random(g) for _ in range(3)]
    feats = torch.stack([features(synth_word(w, v, g)) for v in voices for w in CORE_WORDS])
    labels = torch.arange(len(CORE_WORDS)).repeat(len(voices))
    speaker = torch.arange(len(voices)).repeat_interleave(len(CORE_WORDS))
    distances = torch.cdist(feats, feats)
    distances[speaker[:, None] == speaker[None, :]] = float("inf")
    accuracy = (labels[distances.argmin(1)] == labels).float().mean()
    assert accuracy >= 0.7


def test_utterance() -> None:
    voice = Voice.random(gen(21))
    words = ["yes", "stop", "go"]
    a = synth_utterance(words, voice, gen(22))
    assert torch.equal(a, synth_utterance(words, voice, gen(22)))
    assert_clean(a)
    single = sum(synth_word(w, voice, gen(22)).numel() for w in words)
    assert a.numel() > 0.8 * single + 2 * 0.05 * SAMPLE_RATE
    # Words are separated by silence: several silent stretches of >= 40 ms.
    silent = (a.abs().unfold(0, 640, 320).max(1).values < 1e-6).int()
    gaps = int(((silent[1:] - silent[:-1]) == 1).sum())
    assert gaps >= 2


def test_sample_rate_matches_framework() -> None:
    audio = pytest.importorskip("ssast.audio")
    assert SAMPLE_RATE == audio.SAMPLE_RATE == 16000


def test_a_word_lasts_about_half_a_second() -> None:
    """(The synthesizer's speed is benchmarks/costs.py's to report.)"""
    voice = Voice(f0_hz=120.0, speaking_rate=0.9)
    assert synth_word("stop", voice, gen(0)).numel() > 0.45 * SAMPLE_RATE
