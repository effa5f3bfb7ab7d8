from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
import webdataset as wds

from ssast.audio import encode_flac

SAMPLE_RATE = 16_000


def tone(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)


def encoded(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    """Samples ``[N]`` or ``[N, C]`` as the bytes of an audio file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def write_shard(path: Path, samples: Sequence[dict]) -> None:
    """A tar of ready-made samples: dicts with __key__ and members (bytes, or json-able for
    the json member)."""
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write({k: (json.dumps(v).encode() if k == "json" and not isinstance(v, bytes) else v)
                        for k, v in sample.items()})


def flac_sample(key: str, seconds: float, labels: Sequence[str] = (), freq: float = 440.0) -> dict:
    import torch

    audio = torch.from_numpy(tone(seconds, freq=freq))
    return {"__key__": key, "flac": encode_flac(audio), "json": {"labels": list(labels), "sr": SAMPLE_RATE}}


@pytest.fixture
def audio_folder(tmp_path: Path) -> Path:
    """Real formats: wav 8 kHz, wav 44.1 kHz stereo, flac, ogg, plus a corrupt and an empty file."""
    root = tmp_path / "audio"
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    soundfile.write(root / "dog" / "low_rate.wav", tone(1.0, 8000), 8000)
    soundfile.write(root / "cat" / "stereo.wav", tone(1.5, 44100, channels=2), 44100)
    soundfile.write(root / "cat" / "lossless.flac", tone(0.8, 16000, freq=880), 16000)
    soundfile.write(root / "dog" / "vorbis.ogg", tone(1.2, 22050), 22050, format="OGG", subtype="VORBIS")
    soundfile.write(root / "unlabeled.wav", tone(0.5), SAMPLE_RATE)
    (root / "dog" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (root / "cat" / "empty.flac").write_bytes(b"")
    (root / "README.txt").write_text("not audio")
    return root


@pytest.fixture(scope="session")
def small_demo_corpus(tmp_path_factory) -> Path:
    """A fifth of the demo corpus, built once for the end-to-end CLI tests."""
    from ssast.demo.corpus import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, scale=0.2, seed=1, workers=2, progress=False)
    return root


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(folder: Path, handler: type[http.server.BaseHTTPRequestHandler] = QuietHandler) -> Iterator[str]:
    """Serve ``folder`` on localhost from a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
