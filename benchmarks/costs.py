"""Small costs that must stay small, timed here rather than asserted in the tests (a loaded
machine makes any time limit in a test flaky):

* ``hour_clip_s``: the first batch of a shard whose first clip lasts an hour (FLAC), for
  evaluation (the clip's start) and training (a random window): only the window is decoded;
* ``all_shards_fail_s``: how soon a training pass and an evaluation pass whose every shard
  fails stop with ``NoReadableShards`` (one retry, 10 ms apart), instead of hanging;
* ``cluster_mask_s``, ``random_mask_s``: SSAST's masks for a batch of 128 clips of 512
  patches (400 masked), best of 5;
* ``synth_event_ms`` (the slowest event class) and ``synth_word_ms``: CPU time of the demo
  synthesizer for one second of sound, single-threaded, best of 3.

Prints one JSON line.

    python benchmarks/costs.py
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
import webdataset as wds

from ssast.audio import encode_flac
from ssast.data.loaders import EpochLoader, EvalLoader
from ssast.data.options import ReaderOptions
from ssast.data.skips import NoReadableShards
from ssast.data.stream import ShardStream
from ssast.demo.events import EVENT_CLASSES, synth_event
from ssast.demo.speech import synth_word
from ssast.demo.voice import Voice
from ssast.masking import cluster_mask, random_mask

RATE = 16000


def best_of(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def hour_clip_shard(folder: Path) -> str:
    buffer = io.BytesIO()
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    with soundfile.SoundFile(buffer, "w", RATE, 1, format="FLAC", subtype="PCM_16") as sink:
        for second in range(3600):  # silence, with a tone in minute 30
            sink.write(tone if 1800 <= second < 1810 else np.zeros(RATE, np.float32))
    path = folder / "long.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "long/hour", "flac": buffer.getvalue(), "json": b'{"labels": []}'})
        sink.write({"__key__": "short/one", "flac": encode_flac(torch.from_numpy(tone)), "json": b'{"labels": []}'})
    return str(path)


def first_batch_seconds(url: str, training: bool) -> float:
    stream = ShardStream([url], clip_samples=10 * RATE, batch_size=2, training=training, rank=0, world_size=1,
                         options=ReaderOptions(shuffle_buffer=2))
    start = time.perf_counter()
    next(iter(stream))
    return time.perf_counter() - start


def all_shards_fail_seconds(folder: Path) -> float:
    urls = [str(folder / "missing.tar"), "pipe:false"]
    options = ReaderOptions(shard_retries=1, retry_delay=0.01)
    start = time.perf_counter()
    for loader in (EpochLoader(ShardStream(urls, clip_samples=RATE, batch_size=2, training=True, rank=0,
                                           world_size=1, options=options), 5),
                   EvalLoader(ShardStream(urls, clip_samples=RATE, batch_size=2, training=False, rank=0,
                                          world_size=1, options=options))):
        try:
            list(loader)
        except NoReadableShards:
            pass
    return time.perf_counter() - start


def main() -> None:
    logging.getLogger("ssast.data.retries").setLevel(logging.ERROR)  # the failing shards' warnings
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        url = hour_clip_shard(Path(folder))
        report["hour_clip_s"] = {"eval": round(first_batch_seconds(url, False), 3),
                                 "train": round(first_batch_seconds(url, True), 3)}
        report["all_shards_fail_s"] = round(all_shards_fail_seconds(Path(folder)), 3)
    report["cluster_mask_s"] = round(best_of(lambda: cluster_mask(128, (8, 64), 400), 5), 4)
    report["random_mask_s"] = round(best_of(lambda: random_mask(128, 512, 400), 5), 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the synthesizer works on small tensors: one thread is fastest
    generator = torch.Generator().manual_seed(0)
    events = {name: best_of(lambda name=name: synth_event(name, 1.0, generator), 3, time.thread_time)
              for name in EVENT_CLASSES}
    slowest = max(events, key=events.get)
    report["synth_event_ms"] = {"slowest": slowest, "ms": round(1000 * events[slowest], 2)}
    voice = Voice(f0_hz=120.0, speaking_rate=0.9)
    report["synth_word_ms"] = round(1000 * best_of(lambda: synth_word("stop", voice, generator), 3, time.thread_time), 2)
    torch.set_num_threads(threads)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
