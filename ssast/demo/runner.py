"""``ssast-demo``: what self-supervision is for, shown on the built-in demo corpus in one command.

    ssast-demo [--out runs/demo] [--corpus demo_data] [--pretrain configs/pretrain/eat_demo.yaml]
    ssast-demo corpus [--out demo_data] [--scale 1] [--seed 0]    # only make the corpus
    ssast-demo recorded [--out dev_data] [--root /usr/share]      # a corpus of real recordings (ssast.demo.recorded)

1. generates the demo corpus when it is missing (``ssast-demo corpus``);
2. pretrains an encoder on its unlabeled pool with the ``--pretrain`` recipe (by default the
   method that learns most per minute, EAT), whose probe callback measures, on the events,
   keywords and speakers sets, how well a linear probe and a kNN vote do on the frozen
   encoder's embeddings: untrained at step 0, then as it learns;
3. finetunes that encoder on the three tasks (few labeled clips per class), and the same
   tasks from scratch, with the same recipe and seed;
4. prints a table (finetuned from scratch and from pretrained; linear probes on the
   untrained encoder, on the pretrained one, and on log-mel statistics, the honest simple
   baseline) and writes ``<out>/report.md`` with it, ``<out>/learning.png`` (probe accuracy
   against pretraining minutes) and ``<out>/val_curves.png`` (the finetunes' validation).

Every stage runs the same code as ``ssast-pretrain`` / ``ssast-finetune`` (in this process),
with its progress bar; each run keeps its folder under ``--out``. The recipes name the
corpus as ``demo_data/``; with another ``--corpus`` the pretraining recipes are copied to
``<out>/pretrain/`` with their paths moved there. Each stage's recipe is composed on the
demo family beside it (``demo.yaml``: the corpus and the mini frame model), as the recipes'
own headers say.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from finetune.cli import fit_then_test
from pretrain.cli import main as pretrain_main
from ssast.checkpoints import load_checkpoint
from ssast.data.shards import read_classes
from ssast.demo.corpus import CORPUS_VERSION, build_demo, corpus_parser
from ssast.encoder import layout_of
from ssast.probe import load_clips, logmel_baseline
from ssast.train.callbacks import MetricHistory
from ssast.train.cli import default_wandb_to_offline
from ssast.visualize import line_chart, xy_chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[2]
TASKS = ("events", "keywords", "speakers")
STARTS = ("scratch", "pretrained")
LOGMEL = "log-mel statistics"  # the linear probe on them: the floor in the learning chart
COLOURS = {"scratch": "tab:orange", "pretrained": "tab:blue"}
PROBE_COLOURS = {"linear probe": "tab:blue", "kNN": "tab:cyan", LOGMEL: "grey"}
METRIC_NAMES = {"acc": "accuracy", "mAP": "mAP"}
RECIPE_CORPUS = "demo_data/"  # how the demo recipes name the corpus
DEMO_FAMILY = "demo.yaml"  # what each stage's demo recipes compose on
# The published task each demo task stands for; its recipe follows that task's protocol.
STANDS_FOR = {"events": "ESC-50", "keywords": "Speech Commands v2", "speakers": "VoxCeleb1 SID"}
PROTOCOLS = {  # by the finetuning recipe's pooling
    "mean": "SSAST: the mean of the last block's patch tokens",
    "cls": "AST: the leading tokens of the last block",
    "layers": "SUPERB: a learned weighted sum of every block (probes: their plain mean)",
}


@dataclass
class TaskResult:
    task: str
    chance: float
    metric: str = "acc"
    test: dict[str, float] = field(default_factory=dict)  # finetuned test metric by start
    curves: dict[str, list[float]] = field(default_factory=dict)  # validation metric by start
    protocol: str = ""  # how its finetuning and probes read the encoder
    probes: list[dict[str, float]] = field(default_factory=list)  # the pretraining run's probes, in order
    logmel: float | None = None  # linear probe on log-mel statistics

    @property
    def probe_gain(self) -> float | None:
        return self.probes[-1]["linear"] - self.probes[0]["linear"] if self.probes else None

    @property
    def below_probe(self) -> float | None:
        """How far the finetune from the pretrained encoder ended below that encoder's own
        linear probe (``None`` when it did not, or there is no probe)."""
        if not self.probes or "pretrained" not in self.test:
            return None
        shortfall = self.probes[-1]["linear"] - self.test["pretrained"]
        return shortfall if shortfall > 0 else None


def recipe_for(recipe: Path, corpus: Path, out: Path) -> Path:
    """``recipe`` with its ``demo_data/`` paths moved to ``corpus`` (the recipe itself when
    the corpus is ``demo_data``)."""
    text = recipe.read_text()
    if corpus == Path(RECIPE_CORPUS) or RECIPE_CORPUS not in text:
        return recipe
    moved = out / recipe.name
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_text(text.replace(RECIPE_CORPUS, f"{corpus.resolve()}/"))
    return moved


def composed(recipe: Path) -> list[Path]:
    """``recipe`` after the demo family it composes on (``demo.yaml`` beside it)."""
    family = recipe.parent / DEMO_FAMILY
    return [family, recipe] if family.is_file() and family != recipe else [recipe]


def config_args(recipes: list[Path]) -> list[str]:
    return [arg for recipe in recipes for arg in ("--config", str(recipe))]


def pretrain(recipe: Path, corpus: Path, out: Path, extra: list[str]) -> tuple[Path, dict]:
    """The exported encoder and the probes the run's ``ProbeMonitor`` wrote (``{}`` when its
    recipe has none)."""
    pretrain_main([
        "fit", *config_args([recipe_for(path, corpus, out) for path in composed(recipe)]),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out), *extra,
    ])
    probes = out / "probes.json"
    return out / "encoder.safetensors", json.loads(probes.read_text())["tasks"] if probes.is_file() else {}


def scratch_args(encoder: Path) -> list[str]:
    """What a from-scratch finetune needs to build the pretrained encoder's architecture, beyond
    the size and token shape the demo recipes name: its layout, when it is not AST's."""
    layout = layout_of(load_checkpoint(encoder).encoder.config)
    return [] if layout == "ast" else ["--model.layout", str(layout)]


def finetune(task: str, encoder: Path | None, corpus: Path, out: Path, configs: Path,
             extra: list[str]) -> tuple[dict[str, float], list[float], str]:
    args = [
        *config_args(composed(configs / f"demo_{task}.yaml")), "--model.init_from", str(encoder) if encoder else "null",
        "--data.train", str(corpus / task / "train"),
        "--data.val", str(corpus / task / "val"), "--data.test", str(corpus / task / "test"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", out.name, *extra,
    ]
    history = MetricHistory(("val/acc", "val/mAP"))
    scores = fit_then_test(args, callbacks=(history,))
    metric = "acc" if "test/acc" in scores else "mAP"
    return scores, history.history[f"val/{metric}"], metric


def logmel_floor(corpus: Path, task: str) -> float:
    """A linear probe on the per-bin mean and std of each clip's log-mel (DESIGN.md §12)."""
    frames = json.loads((corpus / "demo.json").read_text())["tasks"][task]["target_length"]
    options = dict(classes=corpus / task / "classes.txt", target_length=frames)
    train = load_clips(corpus / task / "train", stats=corpus / task / "stats.json", **options)
    return logmel_baseline(train, load_clips(corpus / task / "test", stats=train.normalize, **options))


def _cell(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def protocol(configs: Path, task: str) -> str:
    """What ``demo_<task>.yaml`` stands for and how it reads the encoder."""
    models = [yaml.safe_load(path.read_text()).get("model") or {} for path in composed(configs / f"demo_{task}.yaml")]
    pooling = next((model["pooling"] for model in reversed(models) if "pooling" in model), "mean")
    return f"{STANDS_FOR[task]}; {PROTOCOLS[pooling]}"


def table(results: list[TaskResult]) -> str:
    lines = [
        "| task | metric | chance | finetuned: scratch | finetuned: pretrained | difference "
        "| linear probe: untrained | linear probe: pretrained | difference | linear probe: log-mel stats |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        scratch, pretrained = r.test["scratch"], r.test["pretrained"]
        untrained = r.probes[0]["linear"] if r.probes else None
        probed = r.probes[-1]["linear"] if r.probes else None
        lines.append(
            f"| {r.task} | test {r.metric} | {r.chance:.3f} | {scratch:.3f} | {pretrained:.3f} | "
            f"{pretrained - scratch:+.3f} | {_cell(untrained)} | {_cell(probed)} | {_cell(r.probe_gain, True)} | "
            f"{_cell(r.logmel)} |")
    return "\n".join(lines)


def learning_chart(results: list[TaskResult]) -> Figure:
    """Probe accuracy against pretraining minutes (probes left out), a panel per task, with
    the log-mel-statistics floor."""
    panels = {}
    for r in results:
        minutes = [point["seconds"] / 60 for point in r.probes]
        panels[r.task] = {
            "linear probe": [(m, point["linear"]) for m, point in zip(minutes, r.probes)],
            "kNN": [(m, point["knn"]) for m, point in zip(minutes, r.probes)],
            LOGMEL: [(minutes[0], r.logmel), (minutes[-1], r.logmel)],
        }
    return xy_chart(panels, x_label="pretraining minutes", y_label="test accuracy", colours=PROBE_COLOURS,
                    baselines=(LOGMEL,), title="Linear probe and kNN on the frozen encoder during pretraining")


def validation_chart(results: list[TaskResult]) -> Figure:
    """Each finetune's validation metric by epoch, a panel per task, from scratch and from
    the pretrained encoder."""
    metrics = sorted({METRIC_NAMES.get(r.metric, r.metric) for r in results})
    return line_chart({r.task: {start: r.curves[start] for start in STARTS} for r in results},
                      x_label="epoch", y_label=f"validation {' / '.join(metrics)}", colours=COLOURS,
                      title="Finetuning from scratch and from the pretrained encoder")


def write_report(results: list[TaskResult], out: Path, recipe: Path, corpus: Path, seconds: dict[str, float]) -> str:
    validation_chart(results).savefig(out / "val_curves.png")
    probed = all(r.probes for r in results)
    if probed:
        learning_chart(results).savefig(out / "learning.png")
    demo = json.loads((corpus / "demo.json").read_text())
    budget = ", ".join(f"{task} {demo['tasks'][task]['clips']['train']} clips ({demo['tasks'][task]['classes']} classes)"
                       for task in TASKS)
    better = sum(r.test["pretrained"] > r.test["scratch"] for r in results)
    gained = sum(r.probe_gain is not None and r.probe_gain >= 0.10 for r in results)
    text = [
        "# ssast demo: what pretraining on unlabeled audio buys", "",
        f"Pretraining: `{recipe.name}` on {demo['tasks']['unlabeled']['clips']['all']} unlabeled clips. "
        f"Labeled training clips: {budget}. Finetuning: the same recipe and seed from scratch and from the "
        "pretrained encoder; the test metric is of the checkpoint with the best validation metric. Linear probes: "
        "a logistic regression on the frozen encoder's mean token (of the layers the task's protocol reads), "
        "before pretraining (the untrained encoder) and after it, and on the per-bin mean and standard deviation "
        "of the log-mel (no encoder at all).", "",
        table(results), "",
        "Each task follows the protocol of the published task it stands for:", "",
        *[f"- {r.task}: {r.protocol}" for r in results], "",
        f"Finetuned from the pretrained encoder, the test metric is higher than from scratch on {better} of "
        f"{len(results)} tasks in this run.",
    ]
    for r in results:
        if r.below_probe is not None:
            text.append(f"**{r.task}: the finetune from the pretrained encoder ended {r.below_probe:.3f} below the "
                        f"linear probe of the same frozen encoder** ({r.test['pretrained']:.3f} against "
                        f"{r.probes[-1]['linear']:.3f}): finetuning lost part of what the encoder held. The demo's "
                        "head already reads the embedding standardized, as the probe does; docs/finetuning.md, "
                        "\"Few labels\", says what else was measured (a head warm-up first: "
                        "`--finetune-arg=--model.head_warmup_epochs=3`).")
    if probed:
        text += [f"Pretraining raised the linear probe by at least 0.10 on {gained} of {len(results)} tasks.", "",
                 "![probe accuracy against pretraining minutes](learning.png)"]
    text += ["", "![validation curves of the finetunes](val_curves.png)", "",
             "Wall time: " + ", ".join(f"{stage} {value / 60:.1f} min" for stage, value in seconds.items()), ""]
    (out / "report.md").write_text("\n".join(text))
    return "\n".join(text)


def ensure_corpus(corpus: Path, workers: int = 2) -> None:
    """Make the demo corpus in ``corpus`` unless it is there (at any scale and seed), and
    refuse one that an older version made: its figures would not be this version's."""
    manifest = corpus / "demo.json"
    if not manifest.exists():
        print(build_demo(corpus, workers=workers))
    elif (made := json.loads(manifest.read_text())).get("version") != CORPUS_VERSION:
        command = "recorded" if made.get("source") == "recorded" else "corpus"
        sys.exit(f"ssast-demo: error: {corpus} holds a demo corpus made by an older version of ssast; make it "
                 f"again with: ssast-demo {command} --out {corpus} --overwrite")


def corpus_main(argv: list[str]) -> None:
    parser = corpus_parser("ssast-demo corpus", Path("demo_data"), "generate the built-in synthetic demo corpus")
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
    if argv and argv[0] == "recorded":
        from ssast.demo.recorded import main as recorded_main

        recorded_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="runs, report.md and the pictures")
    parser.add_argument("--corpus", type=Path, default=Path("demo_data"), help="the demo corpus (made when missing)")
    parser.add_argument("--pretrain", type=Path, default=REPO / "configs/pretrain/eat_demo.yaml",
                        help="pretraining recipe (also asit_demo.yaml: ASiT, mspm_demo.yaml: MSPM)")
    parser.add_argument("--configs", type=Path, default=REPO / "configs/finetune",
                        help="folder of the demo_{events,keywords,speakers}.yaml finetuning recipes")
    parser.add_argument("--pretrain-arg", action="append", default=[], metavar="ARG",
                        help="extra ssast-pretrain argument (repeat: --pretrain-arg=--trainer.max_epochs --pretrain-arg=2)")
    parser.add_argument("--finetune-arg", action="append", default=[], metavar="ARG", help="extra ssast-finetune argument")
    args = parser.parse_args(argv)
    default_wandb_to_offline()
    seconds: dict[str, float] = {}
    stages = 2 + len(TASKS) * len(STARTS)

    start = time.perf_counter()
    ensure_corpus(args.corpus)
    seconds["corpus"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    print(f"[1/{stages}] pretraining with {args.pretrain.name}", flush=True)
    encoder, probes = pretrain(args.pretrain, args.corpus, args.out / "pretrain", args.pretrain_arg)
    seconds["pretraining"] = time.perf_counter() - start

    start = time.perf_counter()
    print(f"[2/{stages}] linear probes on log-mel statistics", flush=True)
    results = [TaskResult(task, 1.0 / len(read_classes(args.corpus / task / "classes.txt")),
                          probes=probes.get(task, {}).get("probes", []), logmel=logmel_floor(args.corpus, task),
                          protocol=protocol(args.configs, task))
               for task in TASKS]
    from_scratch = scratch_args(encoder)
    stage = 2
    for result in results:
        for start_from in STARTS:
            stage += 1
            print(f"[{stage}/{stages}] finetuning {result.task} from {start_from}", flush=True)
            pretrained = start_from == "pretrained"
            scores, curve, metric = finetune(result.task, encoder if pretrained else None, args.corpus,
                                             args.out / f"{result.task}-{start_from}", args.configs,
                                             ([] if pretrained else from_scratch) + args.finetune_arg)
            result.metric, result.test[start_from], result.curves[start_from] = metric, scores[f"test/{metric}"], curve
    seconds["finetuning"] = time.perf_counter() - start

    write_report(results, args.out, args.pretrain, args.corpus, seconds)
    print(f"\n{table(results)}\n\nreport: {args.out / 'report.md'}, pictures: {args.out / 'learning.png'}, "
          f"{args.out / 'val_curves.png'}")


if __name__ == "__main__":
    main()
