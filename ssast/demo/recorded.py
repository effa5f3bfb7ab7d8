"""A development corpus of real recordings, laid out exactly like the demo corpus.

    apt-get install ktuberling-data klettres-data fluidsynth fluid-soundfont-gm timgm6mb-soundfont
    ssast-demo recorded --out dev_data

The synthetic demo corpus (:mod:`ssast.demo.corpus`) is where settings get chosen; this one,
made of recordings from Debian packages, is where their gains get measured, or the other
way round (CONTRIBUTING.md: never both on one corpus). Same folders, tasks, clip lengths,
clips per class and split (:data:`~ssast.demo.corpus.SPLITS`), and the same writer, so
``ssast-demo --corpus dev_data`` and ``benchmarks/learning.py --data dev_data`` read it
unchanged; ``demo.json`` adds ``"source": "recorded"``, the folders and fonts used, and per
task how its recordings were split.

This module builds it (:func:`build_recorded`, ``ssast-demo recorded``): the recordings are
found and split by :mod:`ssast.demo.recorded_sources`, the clips planned by
:mod:`ssast.demo.recorded_plan` (the instruments' notes drawn and rendered by
:mod:`ssast.demo.instrument_figures`) and each clip's audio made by
:mod:`ssast.demo.recorded_audio`.

* ``keywords`` (1 s): ten letters whose names sound alike across languages
  (:data:`~ssast.demo.recorded_sources.LETTERS`), spoken by the klettres voices whose
  alphabet has all ten (14 Latin-alphabet voices in klettres-data). Split by voice: about
  20 % of the voices for validation, 35 % for test, the rest for training, so the test
  measures speakers never heard in training.
* ``speakers`` (3 s): the ktuberling voices with at least
  :data:`~ssast.demo.recorded_sources.MIN_SPEAKER_WORDS` distinct words (13 in
  ktuberling-data: ca da de el en fr gl lt nn ru sl uk wa). Split by word: each voice's
  words are divided 50 / 20 / 30 % into train / val / test. A clip is two to four words of
  one voice from its split, with pauses of 50-300 ms.
* ``events`` (2 s): ten General MIDI instruments of clearly different timbre
  (:data:`~ssast.demo.instrument_figures.INSTRUMENTS`), rendered by fluidsynth from
  FluidR3_GM and TimGM6mb (taking turns within each class, so each has both fonts alike in
  every split): one note (half the clips) or a figure of two to four notes, at random
  pitches inside the instrument's range and a random velocity.
* ``unlabeled`` (3 s): a third each of words (ktuberling), letters and syllables
  (klettres) and instrument figures of any of the 128 GM programs (rendered apart from the
  events), never from a validation or test recording of any task: the word groups of the
  speakers' val and test splits and every recording of the keywords' val and test voices
  are left out, and so is any file whose bytes equal one of those.

Choices the sources forced:

* A ktuberling folder holds recordings of different sessions (sample rates, channels);
  only its most common format is used, so that a voice is one recording set rather than a
  channel. Identical files (one recording under two names) count once, and word names
  that differ only by their theme (``tv_ball``, ``xmas_ball``, ``ball``) form one word, so
  that a word never lands in two splits.
* A recording is cut to its speech (or, for instruments, its sound): frames within 35 dB
  of its loudest, for speech only the stretch around the loudest moment (pauses under
  0.3 s bridged), which drops clicks and breaths recorded seconds apart. A sound longer
  than its clip is cut at the clip's end.
* No synthetic noise is added: each clip is its recording(s) at a random onset over
  silence, scaled to a random loudness (RMS -36 to -16 dBFS) so that level does not give a
  class away. Keyword recordings are few (one per letter and voice), so each is used
  several times at different onsets and levels to fill the counts.

Every random choice comes from generators seeded by (seed, task, split, index), and the
instruments are rendered in fixed batches, so the corpus is a function of the seed, the
scale and the installed packages, whatever the number of workers.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ssast.data.shard_sets import EncodedClip
from ssast.data.writer import encode_clip, parallel_map
from ssast.demo.corpus import CORPUS_VERSION, SPLITS, DemoSummary, corpus_parser, keep_or_clear, write_corpus
from ssast.demo.instrument_figures import FLUIDSYNTH, INSTRUMENTS, Renderer, render_fluidsynth
from ssast.demo.recorded_audio import make_clip
from ssast.demo.recorded_plan import RecordedClip, Renders, plan_clips, recorded_tasks
from ssast.demo.recorded_sources import LETTERS, Sources, find_sources, missing_package

# Raised whenever what a seed, scale and the packages produce changes (besides CORPUS_VERSION).
RECORDED_VERSION = 1


def _encode(clip: RecordedClip) -> EncodedClip:
    waveform, used = make_clip(clip)
    metadata = dict(clip.metadata)
    if clip.task != "events" and metadata.get("kind") != "instruments":
        metadata["recordings"] = used
    return encode_clip(f"recorded-{clip.task}/{clip.split or 'all'}/{clip.index:06d}", waveform, metadata, clip.split)


def _task_info(sources: Sources, clips: Sequence[RecordedClip]) -> dict[str, dict[str, Any]]:
    kinds = Counter(dict(clip.metadata)["kind"] for clip in clips if clip.task == "unlabeled")
    return {
        "events": {"instruments": {name: program for name, (program, _, _) in INSTRUMENTS.items()},
                   "fonts": [font.name for font in sources.fonts]},
        "keywords": {"voices": sources.voice_splits},
        "speakers": {"words": {Path(voice).name: {split: len(groups) for split, groups in splits.items()}
                               for voice, splits in sorted(sources.words.items())}},
        "unlabeled": {"kinds": dict(sorted(kinds.items()))},
    }


def build_recorded(
    out: str | Path, *, root: str | Path = "/usr/share", scale: float = 1.0, seed: int = 0, workers: int = 1,
    overwrite: bool = False, progress: bool = True, renderer: Renderer = render_fluidsynth,
) -> DemoSummary:
    """Make the corpus of recordings (see the module docstring) in ``out`` from the Debian
    packages under ``root``. A complete corpus already there, made by this version with the
    same ``scale``, ``seed`` and sources, is kept as it is; any other is an error unless
    ``overwrite``. ``renderer`` renders the instrument figures (fluidsynth by default)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out)
    sources = find_sources(root, seed)
    if renderer is render_fluidsynth and shutil.which(FLUIDSYNTH) is None:
        raise missing_package(Path(FLUIDSYNTH), "fluidsynth")
    identity = {"version": CORPUS_VERSION, "seed": seed, "scale": scale, "source": "recorded",
                "recorded_version": RECORDED_VERSION, "sources": sources.folders}
    if keep_or_clear(out, identity, overwrite):
        return DemoSummary(out, ["  already there (same version, seed, scale and sources); kept"], "recorded corpus")
    with tempfile.TemporaryDirectory(prefix="ssast-recorded-") as folder:
        renders = Renders(Path(folder))
        clips = plan_clips(sources, renders, scale, seed)
        jobs = renders.jobs(sources.fonts)
        with ThreadPoolExecutor(max(1, workers)) as pool:  # each job is a fluidsynth process
            done = pool.map(lambda job: renderer(*job), jobs)
            list(tqdm(done, total=len(jobs), unit="batch", desc="rendering", disable=not progress))
        encoded = zip((clip.task for clip in clips), parallel_map(_encode, clips, workers))
        summary = write_corpus(out, encoded, len(clips), identity, tasks=recorded_tasks(sources),
                               task_info=_task_info(sources, clips), title="recorded corpus",
                               desc="recording", progress=progress)
    splits = sources.voice_splits
    summary.lines += [
        "  keywords: letters " + " ".join(LETTERS) + " by klettres voices: "
        + "; ".join(f"{split} {', '.join(Path(v).name for v in splits[split])}" for split in SPLITS),
        f"  speakers: {len(sources.words)} ktuberling voices, their words split "
        + " / ".join(f"{split} {sum(len(s[split]) for s in sources.words.values())}" for split in SPLITS),
        f"  events: {len(INSTRUMENTS)} GM instruments from {', '.join(font.name for font in sources.fonts)}",
    ]
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = corpus_parser(
        "ssast-demo recorded", Path("dev_data"),
        "make a corpus of real recordings (Debian packages: apt-get install ktuberling-data klettres-data fluidsynth "
        "fluid-soundfont-gm timgm6mb-soundfont) laid out like the demo corpus",
    )
    parser.add_argument("--root", type=Path, default=Path("/usr/share"), help="where the packages are (default: /usr/share)")
    args = parser.parse_args(argv)
    try:
        print(build_recorded(args.out, root=args.root, scale=args.scale, seed=args.seed, workers=args.workers,
                             overwrite=args.overwrite))
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f"ssast-demo recorded: error: {error}")


if __name__ == "__main__":
    main()
