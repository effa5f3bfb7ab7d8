"""``ssast-demo``: the whole story on the built-in demo corpus, in one command.

    ssast-demo [--out runs/demo] [--corpus demo_data] [--pretrain configs/pretrain/asit_demo.yaml]
    ssast-demo corpus [--out demo_data] [--scale 1] [--seed 0]    # only make the corpus

1. generates the demo corpus when it is missing (``ssast-demo corpus``);
2. pretrains a small encoder on its unlabeled pool (the ``--pretrain`` recipe);
3. finetunes that encoder on the events, keywords and speakers tasks (24 labeled clips per
   class), and the same tasks from scratch, with the same recipe and seed;
4. prints a table (task, metric, chance, from scratch, pretrained, difference) and writes
   ``<out>/report.md`` with it, and ``<out>/val_curves.png`` with the validation curves.

Every stage runs the same code as ``ssast-pretrain`` / ``ssast-finetune`` (in this process),
with its progress bar; each run keeps its folder under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from finetune.cli import fit_then_test
from pretrain.cli import main as pretrain_main
from ssast.data.reader import read_classes
from ssast.demo.corpus import build_demo
from ssast.train.callbacks import MetricHistory
from ssast.train.cli import default_wandb_to_offline
from ssast.visualize import line_chart

REPO = Path(__file__).resolve().parents[1]
TASKS = ("events", "keywords", "speakers")
STARTS = ("scratch", "pretrained")
COLOURS = {"scratch": (230, 120, 30), "pretrained": (40, 90, 200)}


@dataclass
class TaskResult:
    task: str
    metric: str
    chance: float
    test: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)


def pretrain(recipe: Path, corpus: Path, out: Path, extra: list[str]) -> Path:
    pretrain_main([
        "fit", "--config", str(recipe),
        "--data.init_args.train", str(corpus / "unlabeled"), "--data.init_args.val", str(corpus / "events/val"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out), *extra,
    ])
    return out / "encoder.safetensors"


def finetune(task: str, encoder: Path | None, corpus: Path, out: Path, configs: Path,
             extra: list[str]) -> tuple[dict[str, float], list[float], str]:
    args = [
        "--config", str(configs / f"demo_{task}.yaml"), "--model.init_from", str(encoder) if encoder else "null",
        "--data.train", str(corpus / task / "train"),
        "--data.val", str(corpus / task / "val"), "--data.test", str(corpus / task / "test"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", out.name, *extra,
    ]
    history = MetricHistory(("val/acc", "val/mAP"))
    scores = fit_then_test(args, callbacks=(history,))
    metric = "acc" if "test/acc" in scores else "mAP"
    return scores, history.history[f"val/{metric}"], metric


def table(results: list[TaskResult]) -> str:
    lines = ["| task | metric | chance | from scratch | pretrained | difference |", "|---|---|---|---|---|---|"]
    for r in results:
        scratch, pretrained = r.test["scratch"], r.test["pretrained"]
        lines.append(f"| {r.task} | test {r.metric} | {r.chance:.3f} | {scratch:.3f} | {pretrained:.3f} | "
                     f"{pretrained - scratch:+.3f} |")
    return "\n".join(lines)


def write_report(results: list[TaskResult], out: Path, recipe: Path, corpus: Path, seconds: dict[str, float]) -> str:
    chart = line_chart({r.task: {start: r.curves[start] for start in STARTS} for r in results}, COLOURS,
                       y_label="validations")
    Image.fromarray(chart).save(out / "val_curves.png")
    demo = json.loads((corpus / "demo.json").read_text())
    budget = ", ".join(f"{task} {demo['tasks'][task]['clips']['train']} clips ({demo['tasks'][task]['classes']} classes)"
                       for task in TASKS)
    better = sum(r.test["pretrained"] > r.test["scratch"] for r in results)
    text = "\n".join([
        "# ssast demo: pretrained vs from scratch", "",
        f"Pretraining: `{recipe.name}` on {demo['tasks']['unlabeled']['clips']['all']} unlabeled clips. "
        f"Labeled training clips: {budget}. The same finetuning recipe and seed for both starts; "
        "the test metric is of the checkpoint with the best validation metric.", "",
        table(results), "",
        f"Pretraining helps on {better} of {len(results)} tasks in this run.", "",
        "![validation curves](val_curves.png)", "",
        "Wall time: " + ", ".join(f"{stage} {value / 60:.1f} min" for stage, value in seconds.items()), "",
    ])
    (out / "report.md").write_text(text)
    return text


def ensure_corpus(corpus: Path, workers: int = 2) -> None:
    """Make the demo corpus in ``corpus`` unless it is there."""
    if not (corpus / "demo.json").exists():
        print(build_demo(corpus, workers=workers))


def corpus_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ssast-demo corpus", description="generate the built-in synthetic demo corpus")
    parser.add_argument("--out", type=Path, default=Path("demo_data"), help="output folder (default: demo_data)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of clips (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus is a function of this seed (default: 0)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="synthesis processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in the output folder")
    args = parser.parse_args(argv)
    try:
        print(build_demo(args.out, scale=args.scale, seed=args.seed, workers=args.workers, overwrite=args.overwrite))
    except (FileExistsError, ValueError) as error:
        sys.exit(f"ssast-demo corpus: error: {error}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "corpus":
        corpus_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="runs, report.md and val_curves.png")
    parser.add_argument("--corpus", type=Path, default=Path("demo_data"), help="the demo corpus (made when missing)")
    parser.add_argument("--pretrain", type=Path, default=REPO / "configs/pretrain/asit_demo.yaml",
                        help="pretraining recipe (configs/pretrain/demo.yaml: MSPM)")
    parser.add_argument("--configs", type=Path, default=REPO / "configs/finetune",
                        help="folder of the demo_{events,keywords,speakers}.yaml finetuning recipes")
    parser.add_argument("--pretrain-arg", action="append", default=[], metavar="ARG",
                        help="extra ssast-pretrain argument (repeat: --pretrain-arg=--trainer.max_epochs --pretrain-arg=2)")
    parser.add_argument("--finetune-arg", action="append", default=[], metavar="ARG", help="extra ssast-finetune argument")
    args = parser.parse_args(argv)
    default_wandb_to_offline()
    ensure_corpus(args.corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    stages = 1 + len(TASKS) * len(STARTS)

    start = time.perf_counter()
    print(f"[1/{stages}] pretraining with {args.pretrain.name}", flush=True)
    encoder = pretrain(args.pretrain, args.corpus, args.out / "pretrain", args.pretrain_arg)
    seconds["pretraining"] = time.perf_counter() - start

    start = time.perf_counter()
    results = []
    stage = 1
    for task in TASKS:
        classes = len(read_classes(args.corpus / task / "classes.txt"))
        result = TaskResult(task, "", 1.0 / classes)
        for start_from in STARTS:
            stage += 1
            print(f"[{stage}/{stages}] finetuning {task} from {start_from}", flush=True)
            scores, curve, metric = finetune(task, encoder if start_from == "pretrained" else None, args.corpus,
                                             args.out / f"{task}-{start_from}", args.configs, args.finetune_arg)
            result.metric, result.test[start_from], result.curves[start_from] = metric, scores[f"test/{metric}"], curve
        results.append(result)
    seconds["finetuning"] = time.perf_counter() - start

    write_report(results, args.out, args.pretrain, args.corpus, seconds)
    print(f"\n{table(results)}\n\nreport: {args.out / 'report.md'}, curves: {args.out / 'val_curves.png'}")


if __name__ == "__main__":
    main()
