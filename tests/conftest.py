"""Fixtures shared by the test files; the helpers they use are in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist, each worker gets its share of the cores: torch's default of one thread
# per core in every worker oversubscribes them, and a small CPU step then runs ten times
# slower. Set before torch is imported; the programs tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

import pytest  # noqa: E402
import soundfile  # noqa: E402

from helpers import SAMPLE_RATE, tone, write_corpus


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


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The demo corpus's layout with 8 short clips a split (:func:`helpers.write_corpus`),
    for the fast tests that need real shards but not the data to learn from."""
    return write_corpus(tmp_path_factory.mktemp("tiny"))
