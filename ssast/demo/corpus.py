"""The built-in demo corpus: synthetic, deterministic per seed, made in under a minute.

Layout (every task folder is a dataset the pretrain and finetune recipes can read)::

    DIR/demo.json                    what was made: seed, scale, tasks, clip lengths
    DIR/unlabeled/shard-*.tar        the pretraining pool: events and speech, no labels
    DIR/unlabeled/stats.json
    DIR/<task>/{train,val,test}/*.tar, DIR/<task>/classes.txt, DIR/<task>/stats.json
        for task in events (sound events), keywords (spoken words), speakers (voices)

Each clip is drawn from its own generator, seeded by (seed, task, split, index), so the
corpus does not depend on the number of workers. Every clip of a task has the same
length and a random loudness, onset and background noise, so neither length nor level
gives the class away.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ssast.audio import SAMPLE_RATE
from ssast.data.recipes.speechcommands import SPEECH_COMMANDS
from ssast.data.shards import list_shards
from ssast.data.stats import compute_stats, write_stats
from ssast.demo.events import EVENT_CLASSES, synth_event
from ssast.demo.phonemes import KEYWORDS
from ssast.demo.speech import synth_utterance, synth_word
from ssast.demo.voice import Voice
from ssast.data.shard_sets import SHARD_INDEX, EncodedClip, ShardSetWriter, write_classes, write_text_atomic
from ssast.data.writer import encode_clip, parallel_map
from ssast.features import Fbank

# Clips per class at scale 1: few labels to learn from (the point of pretraining), and
# validation and test sets large enough that a difference of a few points is not noise.
SPLITS = {"train": 24, "val": 12, "test": 30}
UNLABELED_CLIPS = 2000  # at scale 1: unlabeled audio is cheap, here as anywhere
# Raised whenever what a seed and scale produce changes, so an older corpus is not reused.
CORPUS_VERSION = 2
NUM_SPEAKERS = 10
SHARD_SIZE = 64


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    clip_seconds: float

    @property
    def target_length(self) -> int:
        """Fbank frames of one clip."""
        return Fbank().num_frames(round(self.clip_seconds * SAMPLE_RATE))


TASKS = {
    "events": Task("events", tuple(sorted(EVENT_CLASSES)), 2.0),
    "keywords": Task("keywords", tuple(sorted(SPEECH_COMMANDS)), 1.0),  # the synthesizer knows all 35 of v2
    "speakers": Task("speakers", tuple(f"speaker{index:02d}" for index in range(NUM_SPEAKERS)), 3.0),
    "unlabeled": Task("unlabeled", (), 3.0),
}


@dataclass(frozen=True)
class ClipSpec:
    task: str
    split: str | None
    index: int
    label: str | None
    seed: int

    def generator(self) -> torch.Generator:
        text = f"{self.seed}/{self.task}/{self.split}/{self.index}"
        return torch.Generator().manual_seed(zlib.crc32(text.encode()))


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float32 draw in [low, high) from ``generator`` (both corpora's placements and levels)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def _speaker_voice(seed: int, speaker: str) -> Voice:
    return Voice.random(torch.Generator().manual_seed(zlib.crc32(f"{seed}/voice/{speaker}".encode())))


def _background(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Unit-RMS noise with a random spectral tilt, from brown-ish to hiss."""
    spectrum = torch.fft.rfft(torch.randn(num_samples, generator=generator))
    freqs = torch.fft.rfftfreq(num_samples, 1 / SAMPLE_RATE).clamp_min(20.0)
    tilt = draw_uniform(generator, -1.0, 0.3)
    noise = torch.fft.irfft(spectrum * (freqs / 1000) ** tilt, n=num_samples)
    return noise / noise.square().mean().sqrt()


def _compose(sound: torch.Tensor, clip_seconds: float, generator: torch.Generator) -> torch.Tensor:
    """``sound`` at a random onset over background noise, at a random SNR and level."""
    num_samples = round(clip_seconds * SAMPLE_RATE)
    sound = sound[:num_samples]
    onset = int(torch.randint(num_samples - sound.numel() + 1, (), generator=generator))
    placed = torch.zeros(num_samples)
    placed[onset : onset + sound.numel()] = sound / sound.square().mean().sqrt().clamp_min(1e-8)
    snr_db = draw_uniform(generator, 5.0, 25.0)
    mix = placed * 10 ** (snr_db / 20) + _background(num_samples, generator)
    level_db = draw_uniform(generator, -36.0, -16.0)  # RMS in dBFS, independent of the class
    mix = mix / mix.square().mean().sqrt() * 10 ** (level_db / 20)
    return mix / max(1.0, float(mix.abs().max()) / 0.99)


def _events_clip(spec: ClipSpec, generator: torch.Generator) -> torch.Tensor:
    duration = draw_uniform(generator, 0.4, 1.6)  # drawn the same way for every class
    return synth_event(spec.label, duration, generator)


def _keywords_clip(spec: ClipSpec, generator: torch.Generator) -> torch.Tensor:
    return synth_word(spec.label, Voice.random(generator), generator)


def _random_words(count: int, generator: torch.Generator) -> list[str]:
    words = sorted(KEYWORDS)
    return [words[int(index)] for index in torch.randint(len(words), (count,), generator=generator)]


def _speakers_clip(spec: ClipSpec, generator: torch.Generator) -> torch.Tensor:
    count = int(torch.randint(2, 5, (), generator=generator))
    return synth_utterance(_random_words(count, generator), _speaker_voice(spec.seed, spec.label), generator)


def _unlabeled_clip(spec: ClipSpec, generator: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=generator) < 0.5:
        name = sorted(EVENT_CLASSES)[int(torch.randint(len(EVENT_CLASSES), (), generator=generator))]
        return synth_event(name, draw_uniform(generator, 0.4, 2.5), generator)
    return synth_utterance(_random_words(3, generator), Voice.random(generator), generator)


_SOUND: dict[str, Callable[[ClipSpec, torch.Generator], torch.Tensor]] = {
    "events": _events_clip, "keywords": _keywords_clip, "speakers": _speakers_clip, "unlabeled": _unlabeled_clip,
}


def make_clip(spec: ClipSpec) -> torch.Tensor:
    """The waveform of one demo clip (a pure function of ``spec``)."""
    generator = spec.generator()
    return _compose(_SOUND[spec.task](spec, generator), TASKS[spec.task].clip_seconds, generator)


def _encode(spec: ClipSpec) -> EncodedClip:
    key = f"demo-{spec.task}/{spec.split or 'all'}/{spec.index:06d}"
    metadata = {"labels": [spec.label] if spec.label else [], "source": f"demo-{spec.task}"}
    if spec.split:
        metadata["split"] = spec.split
    if spec.task == "speakers":
        metadata["speaker"] = spec.label
    return encode_clip(key, make_clip(spec), metadata, spec.split)


def clip_specs(scale: float = 1.0, seed: int = 0) -> list[ClipSpec]:
    """Every clip of the corpus, classes interleaved so that each shard holds all of them."""
    specs = []
    for task in TASKS.values():
        if not task.classes:
            count = max(1, round(UNLABELED_CLIPS * scale))
            specs += [ClipSpec(task.name, None, index, None, seed) for index in range(count)]
            continue
        for split, per_class in SPLITS.items():
            count = max(1, round(per_class * scale)) * len(task.classes)
            specs += [ClipSpec(task.name, split, i, task.classes[i % len(task.classes)], seed) for i in range(count)]
    return specs


@dataclass
class DemoSummary:
    out: Path
    lines: list[str] = field(default_factory=list)
    title: str = "demo corpus"

    def __str__(self) -> str:
        return "\n".join([f"{self.title} in {self.out}:", *self.lines])


def build_demo(
    out: str | Path, *, scale: float = 1.0, seed: int = 0, workers: int = 1, overwrite: bool = False, progress: bool = True
) -> DemoSummary:
    """Generate the demo corpus into ``out`` (see the module docstring). A complete corpus
    already there, made by this version with the same ``scale`` and ``seed``, is kept as it
    is; any other is an error unless ``overwrite``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out)
    identity = {"version": CORPUS_VERSION, "seed": seed, "scale": scale}
    if keep_or_clear(out, identity, overwrite):
        return DemoSummary(out, ["  already there (same version, seed and scale); kept"])
    specs = clip_specs(scale, seed)
    clips = zip((spec.task for spec in specs), parallel_map(_encode, specs, workers))
    return write_corpus(out, clips, len(specs), identity, desc="synthesizing", progress=progress)


def keep_or_clear(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``out`` already holds the complete corpus that ``identity`` describes (the
    ``demo.json`` keys that make a corpus what it is; a ``source`` key absent from it means
    the synthetic corpus): then it is kept. Otherwise what is there is cleared, when it is
    the leftovers of an interrupted build or with ``overwrite``; any other corpus is an error."""
    if not overwrite and (out / "demo.json").is_file():
        made = json.loads((out / "demo.json").read_text())
        if all(made.get(key) == identity.get(key) for key in {*identity, "source"}):
            return True
    existing = [out / name for name in [*TASKS, "demo.json"] if (out / name).exists()]
    # demo.json is written last: without it, task folders that our shard writer made are
    # the leftovers of an interrupted build, to be built again.
    interrupted = not (out / "demo.json").exists() and all(any(path.rglob(SHARD_INDEX)) for path in existing)
    if existing and not (overwrite or interrupted):
        raise FileExistsError(f"{out} already holds another demo corpus ({existing[0].name}: an older version, "
                              "another seed or scale, or another source); pass overwrite (--overwrite) to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return False


def write_corpus(
    out: Path,
    clips: Iterable[tuple[str, EncodedClip]],
    total: int,
    identity: dict[str, Any],
    *,
    tasks: Mapping[str, Task] = TASKS,
    task_info: Mapping[str, dict[str, Any]] | None = None,
    title: str = "demo corpus",
    desc: str = "writing",
    progress: bool = True,
) -> DemoSummary:
    """Write ``clips`` (task name, clip) into the folders of ``tasks`` under ``out``, then
    each task's ``classes.txt`` and ``stats.json`` (of its train split), and ``demo.json``
    last: ``identity``, the sample rate, and per task its classes, clip length, frames and
    clips per split (with ``task_info``'s entries added)."""
    with ExitStack() as writing:  # a failure leaves the folders marked interrupted, their shards closed
        writers = {name: writing.enter_context(ShardSetWriter(out / name, SHARD_SIZE)) for name in tasks}
        for task, clip in tqdm(clips, total=total, unit="clip", desc=desc, disable=not progress):
            writers[task].write(clip)

    summary = DemoSummary(out, title=title)
    manifest = {**identity, "sample_rate": SAMPLE_RATE, "tasks": {}}
    for task in tasks.values():
        folder = out / task.name
        write_classes(folder, task.classes)
        split = "train" if task.classes else None
        stats = compute_stats(list_shards(folder, split), target_length=task.target_length, workers=0, progress=False)
        write_stats(folder / "stats.json", stats)
        counts = dict(writers[task.name].summary.clips)
        manifest["tasks"][task.name] = {
            "classes": len(task.classes), "clip_seconds": task.clip_seconds, "target_length": task.target_length,
            "clips": {str(split or "all"): count for split, count in counts.items()},
            **(task_info or {}).get(task.name, {}),
        }
        splits = ", ".join(f"{split or 'all'} {count}" for split, count in counts.items())
        kind = f"{len(task.classes)} classes" if task.classes else "no labels"
        summary.lines.append(
            f"  {task.name:<9} {kind:<11} {task.clip_seconds:.0f} s clips: {splits}; "
            f"log-mel mean {stats['mean']:.2f} std {stats['std']:.2f}"
        )
    write_text_atomic(out / "demo.json", json.dumps(manifest, indent=2) + "\n")
    return summary


def corpus_parser(prog: str, default_out: Path, description: str) -> argparse.ArgumentParser:
    """The options every corpus-making command takes: where, how many clips, which seed,
    how many worker processes, and whether to replace a corpus already there."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of clips (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus is a function of this seed (default: 0)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in the output folder")
    return parser
