"""``ssast-embed``: clip and window embeddings of audio files, folders, CSV manifests and
WebDataset shards, written as ``.npy`` files (the layout is :class:`_Run`'s).

The program and its Python form, :func:`embed_inputs`, find the inputs, run an
:class:`~ssast.embed.Embedder` over them with :meth:`~ssast.embed.Embedder.embed_many` and
write its results as they come; what is embedded and how is all :mod:`ssast.embed`'s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ssast.checkpoints import Checkpoint, CheckpointError
from ssast.data.shards import list_shards
from ssast.data.tar import AUDIO_MEMBERS, shard_samples
from ssast.data.shard_sets import left_out
from ssast.data.writer import AUDIO_SUFFIXES, read_manifest, scan_folder
from ssast.embed import Audio, Embedder, Precision, WindowEmbeddings, parse_layers
from ssast.encoder import Layers, Pooling
from ssast.files import written_atomically


@dataclass
class EmbedSummary:
    """What a run of :func:`embed_inputs` did."""

    out: Path
    embedded: int = 0
    skipped: int = 0
    ignored: int = 0  # files in input folders that are not audio, by their suffix
    dim: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"embedded {self.embedded} clips in {self.seconds:.1f} s"
        if self.embedded:
            text += f" -> {self.out / 'clips.npy'} [{self.embedded}, {self.dim}]"
        return text + left_out(self.skipped, "skipped", self.out / "skipped.txt", self.ignored)


class _Run:
    """The output folder of one run, written as clips come::

        OUT/clips.npy                 [N, D] float32, one row per line of keys.txt; written last
        OUT/keys.txt                  the input of each row: a file path or a shard sample's key
        OUT/skipped.txt               input <TAB> reason, for each input that could not be used (only if any)
        OUT/frames/<n>.npy            [T, D] float32 window embeddings of row n (with --frames)
        OUT/frames/<n>.timestamps.npy [T] float64 window centres, seconds

    Rows and keys go to hidden files as they come, so memory does not grow with the number of
    clips; ``keys.txt`` and then ``clips.npy`` are made from them at the end, each in one
    rename, after the previous run's are removed: a folder whose run was interrupted has no
    ``clips.npy``, never one that disagrees with ``keys.txt``.
    """

    OUTPUTS = ("clips.npy", "keys.txt", "skipped.txt")

    def __init__(self, out: Path, frames: bool) -> None:
        self.out, self.frames = out, frames
        self.rows_path, self.keys_path = out / ".clips.f32.partial", out / ".keys.txt.partial"
        self.skips: list[tuple[str, str]] = []
        self.count, self.dim = 0, 0
        out.mkdir(parents=True, exist_ok=True)
        self.rows = self.rows_path.open("wb")
        self.keys = self.keys_path.open("w", encoding="utf-8")

    def clear_previous(self) -> None:
        """Remove what an earlier run left here, so no old file is mistaken for this run's."""
        for name in self.OUTPUTS:
            (self.out / name).unlink(missing_ok=True)
        if (self.out / "frames").is_dir():
            for path in (self.out / "frames").glob("*.npy"):
                if path.name.split(".")[0].isdigit():
                    path.unlink()

    def add(self, key: str, result: WindowEmbeddings) -> None:
        clip = result.clip.cpu().numpy().astype(np.float32)
        self.rows.write(clip.tobytes())
        self.keys.write(key + "\n")
        if self.frames:
            frames = self.out / "frames"
            frames.mkdir(exist_ok=True)
            np.save(frames / f"{self.count}.npy", result.windows.cpu().numpy().astype(np.float32))
            np.save(frames / f"{self.count}.timestamps.npy", result.timestamps.cpu().numpy())
        self.count, self.dim = self.count + 1, len(clip)

    def skip(self, key: str, reason: str) -> None:
        self.skips.append((key, reason.replace("\n", " ").replace("\t", " ")))

    def close(self) -> None:
        """Write ``skipped.txt``, then ``keys.txt`` and ``clips.npy`` when a clip was embedded."""
        self.rows.close()
        self.keys.close()
        if self.skips:
            with written_atomically(self.out / "skipped.txt") as temp:
                temp.write_text("".join(f"{key}\t{reason}\n" for key, reason in self.skips), encoding="utf-8")
        if self.count:
            with written_atomically(self.out / "keys.txt") as temp:
                shutil.copyfile(self.keys_path, temp)
            rows = np.memmap(self.rows_path, dtype=np.float32, mode="r", shape=(self.count, self.dim))
            with written_atomically(self.out / "clips.npy", suffix=".npy") as temp:
                clips = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=rows.shape)
                clips[:] = rows
                clips.flush()
                del clips
            del rows
        self.discard()

    def discard(self) -> None:
        """Remove the hidden files of rows and keys (all a failed run leaves is its frames)."""
        self.rows.close()
        self.keys.close()
        self.rows_path.unlink(missing_ok=True)
        self.keys_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Shards:
    """A shard pattern given as an input, expanded to its shard URLs."""

    urls: list[str]


def _is_shards(text: str) -> bool:
    return text.startswith("pipe:") or text.split("?")[0].endswith((".tar", ".tar.gz"))


def _resolve_inputs(inputs: Sequence[str]) -> tuple[list[Path | _Shards], int]:
    """The audio files and shard sets the command line names, in its order: a folder gives
    its audio files (recursively, sorted), a ``.csv`` the files of its ``path`` column
    (relative to the CSV's folder), a ``.tar`` name, brace pattern or ``pipe:`` command its
    shards; anything else is an audio file. Returns them and how many non-audio files the
    folders held. Raises ``FileNotFoundError``/``ValueError`` for an input that does not
    exist or cannot be read: a typo should stop a run before it starts, not after."""
    sources: list[Path | _Shards] = []
    ignored = 0
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files, skipped = scan_folder(path)
            sources += [file.path for file in files]
            ignored += skipped
        elif path.suffix.lower() == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"{text}: no such file")
            sources += [file.path for file in read_manifest(path)]
        elif _is_shards(text):
            sources.append(_Shards(list_shards(text)))
        elif path.is_file():
            sources.append(path)
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return sources, ignored


def _clips(sources: Sequence[Path | _Shards], skip: Callable[[str, str], None]) -> Iterator[tuple[str, Audio]]:
    """``(key, audio)`` for every clip of ``sources``; what cannot even be opened goes to
    ``skip(key, reason)``."""
    for source in sources:
        if isinstance(source, Path):
            key = str(source)
            if "\n" in key:
                skip(key.replace("\n", "\\n"), "a line break in its name would break keys.txt")
            else:
                yield key, source
            continue
        for url in source.urls:
            # The project's strict tar reading: a truncated shard fails instead of ending early.
            try:
                for sample in shard_samples(url):
                    member = next((name for name in AUDIO_MEMBERS if name in sample), None)
                    if member is None:
                        skip(sample["__key__"], f"no audio member (looked for {', '.join(AUDIO_MEMBERS)})")
                    else:
                        yield sample["__key__"], sample[member]
            except Exception as error:  # opening and reading shards fail in many ways: OSError, tarfile, pipes
                skip(url, f"shard unreadable, its later samples are missing: {type(error).__name__}: {error}")


def embed_inputs(
    checkpoint: str | Path | Checkpoint,
    inputs: Sequence[str],
    out: str | Path,
    *,
    hop: float | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    precision: Precision | None = None,
    pooling: Pooling | None = None,
    layers: Layers = "last",
    frames: bool = False,
    progress: bool = True,
) -> EmbedSummary:
    """What ``ssast-embed`` does (see :func:`main` and :class:`_Run` for the output layout).
    Raises ``FileNotFoundError``/``ValueError`` for inputs that do not exist (or, when
    nothing is found in them, ``ValueError``), ``OSError`` for an output folder that cannot
    be written and :class:`~ssast.checkpoints.CheckpointError` for a checkpoint that cannot
    be read, all before anything is embedded."""
    start = time.perf_counter()
    out = Path(out)
    sources, ignored = _resolve_inputs(inputs)
    if not sources:
        raise ValueError(f"no inputs found in {', '.join(map(str, inputs))} (audio files: "
                         f"{', '.join(sorted(AUDIO_SUFFIXES))}; folders of them; CSV files with a path column; shards)")
    try:
        run = _Run(out, frames)
    except OSError as error:
        raise OSError(f"cannot write to {out}: {error}") from error
    try:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        embedder = Embedder(checkpoint, device=device, pooling=pooling, layers=layers, batch_size=batch_size,
                            hop=hop, precision=precision)
        run.clear_previous()
        total = None if any(isinstance(source, _Shards) for source in sources) else len(sources)
        with tqdm(total=total, unit="clip", desc="embed", disable=not progress, file=sys.stderr) as bar:
            def skip(key: str, reason: str) -> None:
                run.skip(key, reason)
                bar.update()

            clips = embedder.embed_many(_clips(sources, skip), on_error=lambda key, error: skip(key, str(error)))
            for key, result in clips:
                run.add(key, result)
                bar.update()
    except BaseException:
        run.discard()  # an interrupted run publishes no clips.npy
        raise
    run.close()
    return EmbedSummary(out, run.count, len(run.skips), ignored, run.dim, time.perf_counter() - start)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssast-embed",
        description="Clip embeddings (and, with --frames, window embeddings) of audio files, folders, CSV "
                    "manifests and WebDataset shards, from any checkpoint ssast.load_checkpoint reads. Audio longer "
                    "than the checkpoint's input is embedded window by window and the windows averaged.",
    )
    parser.add_argument("checkpoint", help="a checkpoint file or Hugging Face folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files, folders (searched recursively), CSV files with a 'path' column, "
                             "or shards (.tar files, brace patterns, pipe: commands)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--frames", action="store_true",
                        help="also write each clip's window embeddings and their times (frames/<n>.npy)")
    parser.add_argument("--hop", type=float,
                        help="seconds between windows; default half a window (5.12 s at 1024 frames)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per encoder batch (default 16)")
    parser.add_argument("--device", help="default cuda when available, else cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 elsewhere")
    parser.add_argument("--pooling", choices=["mean", "cls"], help="default the checkpoint's")
    parser.add_argument("--layers", type=_layers_argument, default="last", metavar="last|all|K",
                        help="the tokens pooled: 'last', the encoder's final output (default); 'all', the mean of "
                             "every block's output (SUPERB's hidden states, as SSAST's speaker and keyword results "
                             "read them); K, block K's output (1 is the first)")
    return parser


def _layers_argument(text: str) -> Layers:
    try:
        return parse_layers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``ssast-embed CHECKPOINT INPUT... --out DIR``: exit status 0 when a clip was embedded,
    1 when none could be, 2 for a bad command line, checkpoint or output folder."""
    args = _build_parser().parse_args(argv)
    try:
        summary = embed_inputs(
            args.checkpoint, args.inputs, args.out, hop=args.hop, batch_size=args.batch_size, device=args.device,
            precision=args.precision, pooling=args.pooling, layers=args.layers, frames=args.frames,
        )
    except (CheckpointError, OSError, ValueError) as error:  # inputs, checkpoint, output folder
        print(f"ssast-embed: error: {error}", file=sys.stderr)
        return 2
    print(summary)
    if not summary.embedded:
        print(f"ssast-embed: error: no clip could be embedded (reasons in {args.out / 'skipped.txt'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
