"""Embeddings of clips and long recordings (ssast.embed) and the ssast-embed program (ssast.embed_cli)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from ssast import Embedder, save_encoder
from ssast.audio import AudioFile, resample
from ssast.checkpoints import Preprocessing
from ssast.windows import Windowing
from ssast.embed_cli import main
from ssast.features import Fbank, Normalize, fit_frames

from helpers import SAMPLE_RATE, flac_sample, tiny_encoder, write_shard

MEAN, STD = -5.0, 4.0


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny encoder of 96 frames: windows of 15600 samples (0.975 s), 48 frames (0.48 s) apart."""
    save_encoder(tiny_encoder(), tmp_path / "enc.pt", Preprocessing(MEAN, STD, 96))
    return tmp_path / "enc.pt"


def noise(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> torch.Tensor:
    return 0.1 * torch.randn(int(seconds * rate), generator=torch.Generator().manual_seed(seed))


def by_hand(encoder, waveform: torch.Tensor, starts, window: int, pooling: str = "mean") -> torch.Tensor:
    """Window embeddings computed step by step: the fbank of each window's audio, AST's
    zero-padding of the fbank, the normalization, the encoder, the pooling."""
    rows = []
    for start in starts:
        features = Normalize(MEAN, STD)(fit_frames(Fbank()(waveform[start : start + window]), 96))
        rows.append(encoder.pool(encoder(features[None]), pooling)[0])
    return torch.stack(rows)


def write_flac(path: Path, seconds: float, rate: int = SAMPLE_RATE, chunk_seconds: int = 10) -> None:
    """A 16-bit FLAC of a sweeping tone with a little noise, written a chunk at a time so that
    even a long one costs little memory."""
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as sink:
        for first in range(0, int(seconds * rate), chunk_seconds * rate):
            t = np.arange(first, min(first + chunk_seconds * rate, int(seconds * rate))) / rate
            sink.write(0.3 * np.sin(2 * np.pi * (300 + 20 * (t % 30)) * t) + 0.01 * rng.standard_normal(len(t)))


# --- the Python API --------------------------------------------------------------------


def test_embedder_from_waveforms_and_files(tmp_path):
    encoder = tiny_encoder()
    save_encoder(encoder, tmp_path / "enc.pt", Preprocessing(-5.0, 4.0, 96))
    generator = torch.Generator().manual_seed(0)
    waveforms = [0.1 * torch.randn(n, generator=generator) for n in (16000, 9000)]
    for index, waveform in enumerate(waveforms):
        soundfile.write(tmp_path / f"{index}.wav", waveform.numpy(), 16000, subtype="FLOAT")
    embedder = Embedder(tmp_path / "enc.pt")
    from_files = embedder([tmp_path / "0.wav", str(tmp_path / "1.wav")])
    from_tensors = embedder(waveforms)
    assert from_files.clip.shape == (2, 128) and from_files.tokens.shape == (2, 48, 128)
    assert torch.allclose(from_files.clip, from_tensors.clip, atol=1e-6)
    # What it computes: Kaldi fbank, padding in the fbank, the checkpoint's normalization.
    features = Normalize(-5.0, 4.0)(fit_frames(Fbank()(waveforms[1]), 96))
    expected = encoder.pool(encoder(features[None]), "mean")
    assert torch.allclose(from_tensors.clip[1], expected[0], atol=1e-5)
    assert torch.allclose(Embedder(tmp_path / "enc.pt", batch_size=1)(waveforms).clip, from_tensors.clip, atol=1e-5)
    assert torch.allclose(Embedder(tmp_path / "enc.pt", pooling="cls")(waveforms[:1]).clip,
                          encoder.pool(encoder(Normalize(-5.0, 4.0)(fit_frames(Fbank()(waveforms[0]), 96))[None]), "cls"),
                          atol=1e-5)


def test_windowing_reaches_the_end_and_never_leaves_a_gap():
    windowing = Windowing(length=100, hop=40)
    assert [windowing.count(n) for n in (1, 100, 101, 140, 141)] == [1, 1, 2, 2, 3]
    for n in range(1, 400):
        starts = list(windowing.starts(n))
        assert starts[-1] + 100 >= n and (len(starts) == 1 or starts[-1] - 40 + 100 < n)  # no window more than needed
        assert n - starts[-1] > 100 - 40 or len(starts) == 1  # the last window holds more than window - hop
    assert windowing.centres(250).tolist() == [c / 16000 for c in (50, 90, 130, 170, 205)]
    with pytest.raises(ValueError, match="hop"):
        Windowing(length=100, hop=101)


def test_long_waveform_is_the_mean_of_its_windows_computed_by_hand(checkpoint):
    encoder = tiny_encoder()
    waveform = noise(3.3)
    embedder = Embedder(checkpoint, batch_size=3)  # batches that straddle clips and windows
    out = embedder.embed_long(waveform)
    window, hop = 15600, 48 * 160
    starts = list(range(0, len(waveform) - window + hop, hop))
    assert starts[-1] + window >= len(waveform) > starts[-2] + window
    expected = by_hand(encoder, waveform, starts, window)
    assert out.windows.shape == (len(starts), 128) and out.windows.dtype == torch.float32
    assert torch.allclose(out.windows, expected, atol=1e-5)
    assert torch.allclose(out.clip, expected.mean(dim=0), atol=1e-5)
    # Timestamps: the middle of each window's audio, the first at half a window, the last reaching the end.
    assert out.timestamps[0].item() == pytest.approx(window / 2 / SAMPLE_RATE)
    assert torch.allclose(torch.diff(out.timestamps[:-1]), torch.tensor(hop / SAMPLE_RATE, dtype=torch.float64))
    assert out.timestamps[-1].item() == pytest.approx((starts[-1] + len(waveform)) / 2 / SAMPLE_RATE)
    # Another hop, in seconds.
    other = Embedder(checkpoint, hop=0.25).embed_long(waveform)
    assert len(other.windows) == 1 + -(-(len(waveform) - window) // 4000)


def test_a_clip_of_one_window_gets_the_same_embedding_both_ways(checkpoint):
    embedder = Embedder(checkpoint)
    for samples in (15600, 9000):  # exactly one window, and shorter
        waveform = noise(samples / SAMPLE_RATE, seed=samples)
        long = embedder.embed_long(waveform)
        assert long.windows.shape == (1, 128)
        assert torch.allclose(long.clip, embedder(waveform[None]).clip[0], atol=1e-6)
    with pytest.warns(UserWarning, match="cut to it; Embedder.embed_long"):
        embedder(noise(2.0)[None])
    with pytest.raises(ValueError, match="shorter than one 400-sample"):
        embedder.embed_long(torch.zeros(399))


def test_a_file_gives_what_its_waveform_gives_at_any_rate(checkpoint, tmp_path):
    embedder = Embedder(checkpoint, batch_size=4)
    write_flac(tmp_path / "16k.flac", 4.2)
    waveform = torch.from_numpy(soundfile.read(tmp_path / "16k.flac", dtype="float32")[0])
    from_file, from_memory = embedder.embed_long(tmp_path / "16k.flac"), embedder.embed_long(waveform)
    assert torch.allclose(from_file.windows, from_memory.windows, atol=1e-6)
    assert torch.equal(from_file.timestamps, from_memory.timestamps)
    # 44.1 kHz: each window is resampled on its own, and equals that span of the whole file resampled.
    write_flac(tmp_path / "44k.flac", 4.2, rate=44100)
    waveform = resample(torch.from_numpy(soundfile.read(tmp_path / "44k.flac", dtype="float32")[0]), 44100, SAMPLE_RATE)
    from_file, from_memory = embedder.embed_long(str(tmp_path / "44k.flac")), embedder.embed_long(waveform)
    assert from_file.windows.shape == from_memory.windows.shape
    assert torch.allclose(from_file.windows, from_memory.windows, atol=1e-4)


def test_a_long_file_is_read_one_window_at_a_time(tmp_path, monkeypatch):
    """Memory stays flat as the file grows: no read of a 10-minute file asks for more than
    one window (the resampling margin AudioFile adds inside a read is its own)."""
    save_encoder(tiny_encoder(input_tdim=512), tmp_path / "enc.pt", Preprocessing(MEAN, STD, 512))
    write_flac(tmp_path / "long.flac", 600, chunk_seconds=60)
    reads = []
    original = AudioFile.read

    def spy(self, start=0, num_samples=None):
        reads.append((start, num_samples))
        return original(self, start, num_samples)

    monkeypatch.setattr(AudioFile, "read", spy)
    embedder = Embedder(tmp_path / "enc.pt", batch_size=32)
    out = embedder.embed_long(tmp_path / "long.flac")
    window = embedder.window_samples
    assert len(reads) == len(out.windows) == embedder.windowing.count(600 * SAMPLE_RATE)
    assert all(count is not None and count <= window for _, count in reads)
    assert reads[0][0] == 0 and reads[-1][0] + window >= 600 * SAMPLE_RATE
    assert out.timestamps[-1] > 600 - window / SAMPLE_RATE


@pytest.mark.slow
def test_peak_memory_of_ssast_embed_does_not_grow_with_the_file(tmp_path):
    """Peak RSS of ssast-embed on a 1-minute and a 30-minute file, each in its own process.
    30 minutes rather than 10: a 10-minute file decoded whole (38 MB of float32) would hide
    in the ~550 MB that torch itself takes; 30 minutes whole would add 115 MB."""
    save_encoder(tiny_encoder(input_tdim=128), tmp_path / "enc.pt", Preprocessing(MEAN, STD, 128))
    report = ("import resource, sys; from ssast.embed_cli import main; code = main(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    peaks = {}
    for minutes in (1, 30):
        write_flac(tmp_path / f"{minutes}.flac", 60 * minutes, chunk_seconds=60)
        command = [sys.executable, "-c", report, str(tmp_path / "enc.pt"), str(tmp_path / f"{minutes}.flac"),
                   "--out", str(tmp_path / f"out{minutes}"), "--frames", "--device", "cpu"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[minutes] = int(result.stdout.strip().splitlines()[-1]) / 1024  # MiB
        frames = np.load(tmp_path / f"out{minutes}/frames/0.npy")
        assert len(frames) > 90 * minutes  # windows of 1.28 s, 0.64 s apart
    assert peaks[30] < 1.25 * peaks[1] and peaks[30] - peaks[1] < 60, peaks


# --- ssast-embed -----------------------------------------------------------------------


def run_cli(*args: str | Path, capsys) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """A folder with nested audio, a non-audio file and a corrupt .wav; a CSV listing files
    relative to itself and one that is missing; two shards with a sample without audio."""
    folder = tmp_path / "sounds"
    (folder / "dogs" / "big").mkdir(parents=True)
    soundfile.write(folder / "a.wav", noise(0.5).numpy(), SAMPLE_RATE)
    soundfile.write(folder / "dogs" / "b.flac", noise(2.5, seed=1).numpy(), SAMPLE_RATE)
    soundfile.write(folder / "dogs" / "big" / "c.wav", noise(0.7, seed=2).numpy(), 22050)
    (folder / "dogs" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (folder / "notes.txt").write_text("not audio")
    listed = tmp_path / "listed"
    listed.mkdir()
    soundfile.write(listed / "d.wav", noise(1.2, seed=3).numpy(), SAMPLE_RATE)
    (listed / "list.csv").write_text("path,labels\nd.wav,dog\n../sounds/a.wav,\ngone.wav,cat\n")
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "part-0.tar", [flac_sample("s/one", 0.6), flac_sample("s/two", 1.6, freq=880)])
    write_shard(shards / "part-1.tar", [flac_sample("s/three", 0.4), {"__key__": "s/mute", "json": {"labels": []}}])
    return {"folder": folder, "csv": listed / "list.csv", "shards": shards / "part-{0..1}.tar", "listed": listed}


def test_cli_embeds_folders_csv_and_shards_and_lists_what_it_skipped(checkpoint, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(checkpoint, inputs["folder"], inputs["csv"], inputs["shards"], "--out", out, "--frames",
                              "--device", "cpu", "--batch-size", "3", capsys=capsys)
    assert code == 0
    folder, listed = inputs["folder"], inputs["listed"]
    expected_keys = [str(folder / "a.wav"), str(folder / "dogs/b.flac"), str(folder / "dogs/big/c.wav"),
                     str(listed / "d.wav"), str(listed / "../sounds/a.wav"), "s/one", "s/two", "s/three"]
    keys = (out / "keys.txt").read_text().splitlines()
    assert keys == expected_keys
    clips = np.load(out / "clips.npy")
    assert clips.shape == (len(keys), 128) and clips.dtype == np.float32
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert set(skipped) == {str(folder / "dogs/broken.wav"), str(listed / "gone.wav"), "s/mute"}
    assert "cannot decode audio" in skipped[str(folder / "dogs/broken.wav")]
    assert skipped[str(listed / "gone.wav")] == f"no such file: {listed / 'gone.wav'}"
    assert "no audio member" in skipped["s/mute"]
    assert "embedded 8 clips" in stdout and "3 skipped" in stdout and "ignored 1 non-audio files" in stdout
    # Rows are what the Python API gives; frames hold each clip's windows and their times.
    embedder = Embedder(checkpoint)
    assert np.allclose(clips[1], embedder.embed_long(folder / "dogs/b.flac").clip.numpy(), atol=1e-5)
    for n in range(len(keys)):
        frames, times = np.load(out / f"frames/{n}.npy"), np.load(out / f"frames/{n}.timestamps.npy")
        assert frames.dtype == np.float32 and frames.shape == (len(times), 128)
        assert np.allclose(frames.mean(axis=0), clips[n], atol=1e-5)
    assert len(np.load(out / "frames/1.npy")) == 5  # 2.5 s: windows at 0, 0.48, ... 1.92 s
    assert not list(out.glob(".*"))  # no hidden leftovers


def test_cli_errors_are_one_line(checkpoint, inputs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(checkpoint, tmp_path / "empty", "--out", tmp_path / "out", capsys=capsys)
    assert code == 2 and err.startswith("ssast-embed: error: no inputs found") and err.count("\n") == 1
    code, _, err = run_cli(checkpoint, tmp_path / "typo.wav", "--out", tmp_path / "out", capsys=capsys)
    assert code == 2 and "typo.wav: no such file or folder" in err
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(tmp_path / "garbage.pt", inputs["folder"], "--out", tmp_path / "out", capsys=capsys)
    assert code == 2 and "garbage.pt (unknown): not a checkpoint" in err and err.count("\n") == 1
    code, _, err = run_cli(checkpoint, inputs["folder"], "--out", tmp_path / "out", "--hop", "0", capsys=capsys)
    assert code == 2 and "the hop must be above 0 and at most the window, 0.975 s; got 0 s" in err
    (tmp_path / "a-file").write_text("")
    code, _, err = run_cli(checkpoint, inputs["folder"], "--out", tmp_path / "a-file/out", capsys=capsys)
    assert code == 2 and f"cannot write to {tmp_path / 'a-file/out'}" in err and err.count("\n") == 1
    # Nothing embeddable: the reasons are listed and the exit status says so.
    code, stdout, err = run_cli(checkpoint, inputs["folder"] / "dogs/broken.wav", "--out", tmp_path / "none",
                                capsys=capsys)
    assert code == 1 and "no clip could be embedded" in err and "embedded 0 clips" in stdout
    assert "broken.wav" in (tmp_path / "none/skipped.txt").read_text()
    assert not (tmp_path / "none/clips.npy").exists()


def test_an_interrupted_run_leaves_no_clips_npy(checkpoint, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(checkpoint, inputs["folder"], "--out", out, "--frames", capsys=capsys)[0] == 0
    encode = Embedder._encode
    calls = []

    def crash_on_second_batch(self, windows):
        calls.append(len(windows))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return encode(self, windows)

    monkeypatch.setattr(Embedder, "_encode", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        main([str(checkpoint), str(inputs["csv"]), "--out", str(out), "--batch-size", "1"])
    # The earlier run's results are gone, the new run published none: nothing disagrees.
    assert not (out / "clips.npy").exists() and not (out / "keys.txt").exists()
    assert not list(out.glob(".*")) and not list((out / "frames").glob("*.npy"))


# --- layers: which tokens are pooled ----------------------------------------------------


def layer_tokens_by_hand(encoder, features: torch.Tensor, layers) -> torch.Tensor:
    """The tokens of ``layers`` from the blocks themselves: the final output, the mean of the
    blocks' outputs, or block ``k``'s output."""
    x, states = encoder.embed(features), []
    for block in encoder.blocks:
        x = block(x)
        states.append(x)
    if layers == "last":
        return encoder.norm(x)
    return torch.stack(states).mean(dim=0) if layers == "all" else states[layers - 1]


def test_layers_choose_the_tokens_clip_and_window_embeddings_pool(tmp_path):
    encoder = tiny_encoder(depth=3)
    save_encoder(encoder, tmp_path / "enc.pt", Preprocessing(MEAN, STD, 96))
    waveforms = [noise(0.9, seed=1), noise(0.6, seed=2)]
    features = torch.stack([Normalize(MEAN, STD)(fit_frames(Fbank()(w), 96)) for w in waveforms])
    states = encoder.hidden_states(features)
    assert len(states) == 3
    results = {}
    for layers in ("last", "all", 1, 2, 3):
        out = Embedder(tmp_path / "enc.pt", layers=layers, batch_size=1)(waveforms)
        tokens = layer_tokens_by_hand(encoder, features, layers)
        assert torch.allclose(out.clip, encoder.pool(tokens, "mean"), atol=1e-5), layers
        assert torch.allclose(out.tokens, encoder.patch_tokens(tokens), atol=1e-5), layers
        results[layers] = out.clip
    # "all" is the mean over blocks of each block's pooled output; k is block k's; "last" is unchanged.
    assert torch.allclose(results["all"], torch.stack([encoder.pool(s, "mean") for s in states]).mean(dim=0), atol=1e-5)
    assert torch.allclose(results[2], encoder.pool(states[1], "mean"), atol=1e-5)
    assert torch.allclose(results["last"], Embedder(tmp_path / "enc.pt")(waveforms).clip)
    assert torch.allclose(results["last"], encoder.pool(encoder(features), "mean"), atol=1e-5)
    assert not torch.allclose(results["all"], results["last"], atol=1e-3)
    assert not torch.allclose(results[3], results["last"], atol=1e-3)  # block 3 is before the final norm
    # cls pooling reads the same layers.
    cls = Embedder(tmp_path / "enc.pt", layers="all", pooling="cls")(waveforms[:1]).clip
    assert torch.allclose(cls, encoder.pool(torch.stack(states).mean(dim=0)[:1], "cls"), atol=1e-5)


def test_layers_reach_long_clips_windows_and_hear(checkpoint):
    from ssast import hear

    encoder = tiny_encoder()
    waveform = noise(2.2, seed=3)
    out = Embedder(checkpoint, layers="all", batch_size=2).embed_long(waveform)
    window, hop = 15600, 48 * 160
    starts = list(range(0, len(waveform) - window + hop, hop))
    expected = []
    for start in starts:
        features = Normalize(MEAN, STD)(fit_frames(Fbank()(waveform[start : start + window]), 96))[None]
        expected.append(encoder.pool(torch.stack(encoder.hidden_states(features)).mean(dim=0), "mean")[0])
    assert torch.allclose(out.windows, torch.stack(expected), atol=1e-5)
    assert torch.allclose(out.clip, torch.stack(expected).mean(dim=0), atol=1e-5)
    # HEAR: scene embeddings are these clip embeddings; timestamp embeddings read the same layers.
    model = hear.load_model(str(checkpoint), layers="all")
    assert torch.allclose(hear.get_scene_embeddings(waveform[None], model)[0], out.clip, atol=1e-5)
    last = hear.get_timestamp_embeddings(waveform[None], hear.load_model(str(checkpoint)))[0]
    assert not torch.allclose(hear.get_timestamp_embeddings(waveform[None], model)[0], last, atol=1e-3)


def test_bad_layers_are_refused(checkpoint):
    for bad in (0, 3, -1, "first", "3", True, 1.0, None):
        with pytest.raises(ValueError, match=r"layers must be 'last', 'all' or a block from 1 to 2, got "):
            Embedder(checkpoint, layers=bad)


def test_cli_layers(checkpoint, inputs, tmp_path, capsys):
    clips = {}
    for layers in ("last", "all", "2"):
        out = tmp_path / f"out-{layers}"
        code, stdout, _ = run_cli(checkpoint, inputs["listed"] / "d.wav", inputs["folder"] / "dogs/b.flac",
                                  "--out", out, "--frames", "--layers", layers, capsys=capsys)
        assert code == 0, stdout
        clips[layers] = np.load(out / "clips.npy")
        assert np.allclose(np.load(out / "frames/1.npy").mean(axis=0), clips[layers][1], atol=1e-5)
    default = tmp_path / "out-default"
    assert run_cli(checkpoint, inputs["listed"] / "d.wav", "--out", default, capsys=capsys)[0] == 0
    assert np.array_equal(np.load(default / "clips.npy")[0], clips["last"][0])
    assert not np.allclose(clips["all"], clips["last"], atol=1e-3)
    assert not np.allclose(clips["2"], clips["all"], atol=1e-3)
    expected = Embedder(checkpoint, layers="all").embed_long(inputs["folder"] / "dogs/b.flac").clip.numpy()
    assert np.allclose(clips["all"][1], expected, atol=1e-5)
    # A block the checkpoint does not have: one line, exit status 2, nothing written.
    code, _, err = run_cli(checkpoint, inputs["listed"] / "d.wav", "--out", tmp_path / "bad", "--layers", "3",
                           capsys=capsys)
    assert code == 2 and err == "ssast-embed: error: layers must be 'last', 'all' or a block from 1 to 2, got 3\n"
    assert not (tmp_path / "bad/clips.npy").exists()
    # Not a choice at all: argparse's usage and one line saying why.
    for bad in ("first", "0", "1.5"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(checkpoint), str(inputs["listed"] / "d.wav"), "--out", str(tmp_path / "bad"), "--layers", bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert err.splitlines()[-1].startswith("ssast-embed: error: argument --layers: layers must be 'last', 'all'")
