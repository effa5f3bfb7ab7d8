"""``ssast-data``: make WebDataset shards (from a folder, a CSV, or a published dataset's
layout) and compute their stats. (The built-in demo corpus: ``ssast-demo corpus``.)"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from ssast.data.recipes.build import RECIPES, build_recipe
from ssast.data.shards import list_shards
from ssast.data.skips import NoReadableShards, TooManySkipped
from ssast.data.stats import compute_stats, write_stats
from ssast.data.writer import read_manifest, scan_folder, without_split_gaps, write_shards

log = logging.getLogger("ssast.data")


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _add_writer_options(parser: argparse.ArgumentParser, source_default: str = "the input's name") -> None:
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default: 1000)")
    parser.add_argument("--workers", type=int, default=_default_workers(), help="encoding processes (default: %(default)s)")
    parser.add_argument(
        "--source", help=f"dataset name for keys and the json 'source' field (default: {source_default})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip order (default: 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the input order instead of shuffling clips")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in the output folder")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssast-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    folder = commands.add_parser("from-folder", help="shards from a folder; sub-folder names are labels")
    folder.add_argument("root", type=Path, help="folder of audio files; files directly in it are unlabeled")
    _add_writer_options(folder)
    folder.add_argument("--split", help="write into OUT/SPLIT/ (e.g. train)")

    manifest = commands.add_parser("from-csv", help="shards from a CSV manifest")
    manifest.add_argument(
        "manifest", type=Path, help="CSV with a 'path' column and optional 'labels' (';'-separated), 'split', 'key'"
    )
    _add_writer_options(manifest)

    stats = commands.add_parser("stats", help="mean/std of the log-mel of a set of shards -> stats.json")
    stats.add_argument("shards", help="dataset folder (its train/ split if it has one), shard folder or URL pattern")
    stats.add_argument("--out", type=Path, help="where to write (default: SHARDS/stats.json for a folder)")
    stats.add_argument("--target-length", type=int, default=1024, help="frames per clip looked at (default: 1024)")
    stats.add_argument("--max-clips", type=int, help="stop after this many clips")
    stats.add_argument("--batch-size", type=int, default=32)
    stats.add_argument("--workers", type=int, default=_default_workers(), help="decoding processes")

    _add_recipe_parsers(commands)

    return parser


_RECIPE_SOURCES = {
    "esc50": "the ESC-50-master folder (meta/esc50.csv, audio/)",
    "speechcommands": "the extracted Speech Commands folder (word folders, validation_list.txt, testing_list.txt)",
    "voxceleb1": "the VoxCeleb1 folder (iden_split.txt, wav/)",
    "audioset": "the folder of balanced_train_segments.csv, eval_segments.csv, ontology.json "
    "[and unbalanced_train_segments.csv]",
    "iemocap": "the IEMOCAP_full_release folder (Session1 ... Session5: dialog/EmoEvaluation/, sentences/wav/)",
}


def _add_recipe_parsers(commands: argparse._SubParsersAction) -> None:
    """One subcommand per dataset recipe (ssast.data.recipes)."""
    for name, recipe in RECIPES.items():
        parser = commands.add_parser(name, help=f"shards of {recipe.description}")
        parser.add_argument("src", type=Path, help=_RECIPE_SOURCES[name])
        _add_writer_options(parser, source_default=name)
        parser.add_argument("--no-stats", action="store_true", help="skip the stats.json pass")
        parser.add_argument(
            "--stats-max-clips", type=int, help="compute stats.json over at most this many training clips"
        )
        if name == "speechcommands":
            parser.add_argument(
                "--variant", type=int, choices=(35, 12), default=35,
                help="35: every word folder is a class (30 in v1); 12: the 10 commands, _unknown_, _silence_",
            )
            parser.add_argument(
                "--test-set", type=Path,
                help="with --variant 12: the released v0.01 test set folder (SUPERB's KS1 test), as the test split",
            )
        if name == "audioset":
            parser.add_argument("--clips", type=Path, help="folder of the downloaded clips (default: SRC/audio)")


def _recipe(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in ("variant", "test_set", "clips") if hasattr(args, name)}
    summary = build_recipe(
        args.command, args.src, args.out, shard_size=args.shard_size, workers=args.workers, seed=args.seed,
        shuffle=not args.no_shuffle, overwrite=args.overwrite, stats=not args.no_stats,
        stats_max_clips=args.stats_max_clips, source=args.source, **options,
    )
    print(summary)
    return 0 if sum(summary.clips.values()) else 1


def _write(files, ignored: int, args: argparse.Namespace, left_out: Sequence[tuple[str, str]] = ()) -> int:
    if not files:
        log.error("no audio files found")
        return 2
    summary = write_shards(
        files, args.out, shard_size=args.shard_size, workers=args.workers,
        shuffle=not args.no_shuffle, seed=args.seed, overwrite=args.overwrite, left_out=left_out,
    )
    summary.ignored = ignored
    print(summary)
    if not sum(summary.clips.values()):
        return 1
    print(f"next: ssast-data stats {args.out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    folder = Path(args.shards)
    if folder.is_dir():
        urls = list_shards(folder, "train" if (folder / "train").is_dir() else None)
        out = args.out or folder / "stats.json"
    elif args.out is None:
        log.error("--out is needed when SHARDS is a pattern rather than a folder")
        return 2
    else:
        urls, out = list_shards(args.shards), args.out
    stats = compute_stats(
        urls, target_length=args.target_length, batch_size=args.batch_size, workers=args.workers, max_clips=args.max_clips
    )
    write_stats(out, stats)
    print(f"mean {stats['mean']:.4f}, std {stats['std']:.4f} over {stats['count']} clips -> {out}")
    if stats["skipped"]:
        print(f"{stats['skipped']} samples could not be used (see the warnings above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "from-folder":
            files, ignored = scan_folder(args.root, args.source, args.split)
            return _write(files, ignored, args)
        if args.command == "from-csv":
            files, left_out = without_split_gaps(read_manifest(args.manifest, args.source))
            return _write(files, 0, args, left_out)
        if args.command == "stats":
            return _stats(args)
        return _recipe(args)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, NoReadableShards, TooManySkipped) as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        log.error("no space left on device (%s): the complete shards are kept and the one being written was removed; "
                  "free some space and run the same command again to go on from them", error.filename or "writing")
        return 2


if __name__ == "__main__":
    sys.exit(main())
