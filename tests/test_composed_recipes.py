"""The composed recipes (a base per stage, the files a recipe composes on, the recipe's own
file, sizes as options) resolve to what the flat recipes they replaced resolved to, key by key,
but for the renames (the flat recipes are translated to the new names first: :func:`translate`)
and the changes made on purpose; the global batch splits over 1, 2 and 8 devices; runs are
named after their file."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import dict_to_namespace

from finetune.cli import build_cli as finetune_cli
from helpers import recipe_files
from pretrain.cli import build_cli as pretrain_cli
from ssast.train.cli import name_run, split_batch, split_global_batch

REPO = Path(__file__).resolve().parents[1]
FLAT = Path(__file__).resolve().parent / "data/flat_recipes"  # the recipes before they were composed
BUILD = {"finetune": finetune_cli, "pretrain": pretrain_cli}
FORCED = {"pictures": "ssast.train.callbacks.LogPictures", "export": "ssast.train.callbacks.ExportEncoder"}
# A flat pretraining recipe -> the recipe that replaced it and the options it takes (issue 36: a file
# per method family, sizes and token shapes as options or small files on top).
COMPOSED: dict[str, tuple[str, list[str], list[str]]] = {  # name -> (recipe, files after it, options)
    "demo": ("mspm_demo", [], []),
    "mspm_patch_base": ("mspm", [], []),
    "mspm_patch_small": ("mspm", [], ["--model.init_args.size", "small"]),
    "mspm_patch_tiny": ("mspm", ["mspm_tiny"], []),
    "mspm_frame_base": ("mspm", ["frame_tokens"], []),
    "mspm_frame_tiny": ("mspm", ["mspm_tiny", "frame_tokens"], []),
    "asit_base": ("asit", [], []),
    "asit_tiny": ("asit", [], ["--model.init_args.size", "tiny"]),
    "eat_base": ("eat", [], []),
    "eat_tiny": ("eat", [], ["--model.init_args.size", "tiny"]),
}

# The renames, old -> new (issue 23: momentum, cls_loss; issue 36: the rest), as ssast.renamed refuses them.
OPTIMIZATION = ("optimizer", "lr", "lr_batch_size", "betas", "weight_decay", "weight_decay_end",
                "decay_norms_and_biases", "gradient_clip_per_tensor", "schedule", "warmup_steps", "warmup_every",
                "min_lr", "plateau_factor", "plateau_patience")
PRETRAIN_KNOBS = {"momentum": "ema_decay", "cls_loss": "utterance_weight", "cls_dim": "cls_prototypes",
                  "patch_dim": "patch_prototypes"}
FINETUNE_KNOBS = {"decay_start": "lr_decay_start", "decay_every": "lr_decay_every",
                  "decay_factor": "lr_decay_factor", "head_lr": "head_lr_scale"}
CLASS_PATHS = {"pretrain.distill.ASiT": "pretrain.asit.ASiT",
               "ssast.train.probe.ProbeMonitor": "ssast.train.probe_callbacks.ProbeMonitor"}


def translate(stage: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """A flat recipe with every renamed key and value under its new name (nothing else changed)."""
    recipe = copy.deepcopy(recipe)
    for entry in (recipe.get("trainer") or {}).get("callbacks") or []:
        entry["class_path"] = CLASS_PATHS.get(entry["class_path"], entry["class_path"])
    model = recipe.get("model") or {}
    if stage == "pretrain":
        model["class_path"] = CLASS_PATHS.get(model["class_path"], model["class_path"])
        knobs = model.setdefault("init_args", {})
        data = recipe["data"]
        recipe["data"] = data.get("init_args") or {}  # one shape for data: in both stages
        optimization = {name: knobs.pop(name) for name in OPTIMIZATION if name in knobs}
        if optimization.get("schedule") == "cosine":
            optimization["schedule"] = "warmup_cosine"
        if optimization:
            knobs["optimization"] = optimization
        if "teacher_temp_warmup_steps" in knobs:  # a paper's epochs, in the epochs the recipe runs
            knobs["teacher_temp_warmup_epochs"] = knobs.pop("teacher_temp_warmup_steps") / \
                recipe["data"]["batches_per_epoch"]
        for old, new in PRETRAIN_KNOBS.items():
            if old in knobs:
                knobs[new] = knobs.pop(old)
    else:
        if model.get("schedule") == "cosine":
            model["schedule"] = "fairseq_cosine"
        for old, new in FINETUNE_KNOBS.items():
            if old in model:
                model[new] = model.pop(old)
    return recipe


# What changed on purpose, per recipe: key -> (before, after).
DEMO_NAMES = {"demo_events": "demo-events", "demo_keywords": "demo-keywords", "demo_speakers": "demo-speakers",
              "mspm_demo": "demo-mspm", "asit_demo": "demo-asit", "eat_demo": "demo-eat"}
SUMMARY = "trainer.callbacks.[ssast.train.callbacks.MetricsSummary].names"
LAST_EVERY = "trainer.callbacks.[ssast.train.callbacks.LastCheckpoint].every_minutes"
OPT = "model.init_args.optimization"


def intended(stage: str, name: str, before: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    changes: dict[str, tuple[Any, Any]] = {}
    if name in DEMO_NAMES:  # named after the file, as every other run (issue 22)
        old, new = DEMO_NAMES[name], name
        changes.update({"trainer.default_root_dir": (f"runs/{old}", f"runs/{new}"),
                        "trainer.logger.init_args.name": (old, new),
                        "trainer.logger.init_args.save_dir": (f"runs/{old}", f"runs/{new}"),
                        LAST_EVERY: (None, 30.0)})  # the base's: a demo never runs 30 minutes
    if name in ("demo_events", "demo_keywords", "demo_speakers"):  # few labels: what the probe reads (issue 38)
        changes["model.standardize_embedding"] = (False, True)
    if name == "mspm_demo":  # SSAST's warmup rises in stairs of 50 (issue 22); 20 steps rise every step
        changes[f"{OPT}.warmup_every"] = (50, 1)
    if name in ("asit_base", "asit_tiny"):  # ASiT's 10 warmup epochs, in epochs of the run (issue 36)
        changes[f"{OPT}.warmup_steps"] = (78120, 0)
    if name.startswith("eat_") and stage == "finetune":  # the rule EAT's AdamW implied, stated (issue 36)
        changes["model.decay_norms_and_biases"] = (True, False)
        if before["model.init_from"] == "runs/eat_base/encoder.safetensors":  # eat_base.yaml is eat.yaml
            changes["model.init_from"] = (before["model.init_from"], "runs/eat/encoder.safetensors")
    if stage == "finetune":  # one summary for every task: it prints the names a run logs
        changes[SUMMARY] = (before[SUMMARY], ["train/loss", "val/loss", "val/acc", "val/mAP"])
    if name in ("mspm_patch_tiny", "mspm_frame_tiny"):  # run_mask_*_tiny.sh: --epoch_iter 800
        changes["data.batches_per_epoch"] = (4000, 800)
    if name in ("asit_base", "asit_tiny"):  # 256 clips a step on any layout, not 32 per device
        changes["trainer.accumulate_grad_batches"] = (1, 8)
    if name in ("eat_base", "eat_tiny"):  # 48 clips a step on any layout, not 4 devices of 12
        changes.update({"trainer.devices": (4, "auto"), "trainer.accumulate_grad_batches": (1, 4),
                        "model.init_args.average_top_k_layers": (12, None),  # None: every block (12)
                        "model.init_args.decoder_dim": (before["model.init_args.decoder_dim"], None)})  # the width
    if name == "eat_esc50":  # eat.yaml's mixup chance; ESC-50 mixes nothing
        changes["model.batch_mixup_prob"] = (1.0, 0.9)
    return changes


def resolved(stage: str, files: list[Path], base: bool, name: str, options: list[str] = ()) -> dict[str, Any]:
    output = io.StringIO()
    args = ["fit", *[arg for path in files for arg in ("--config", str(path))], *options, "--print_config"]
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        BUILD[stage](args, **({} if base else {"base": None}))
    config = dict_to_namespace(yaml.safe_load(output.getvalue()))
    name_run(config, name)  # what the CLI does before instantiating, with the last file's name
    split_batch(config)
    settings = config.as_dict()
    if not base:  # the flat recipes listed these callbacks; the keys that now set them did not exist
        for key in FORCED:
            settings.pop(key, None)
    return flatten(settings)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys; a callback list keyed by class; forced callbacks as if in the list."""
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, item in value.items():
            if key in FORCED and prefix == "":
                items[f"trainer.callbacks.[{FORCED[key]}]"] = True
                items.update(flatten(item, f"trainer.callbacks.[{FORCED[key]}]."))
            elif key not in ("config", "global_batch_size", "max_device_batch_size"):
                items.update(flatten(item, f"{prefix}{key}."))
        return items
    if isinstance(value, list) and value and all(isinstance(item, dict) and "class_path" in item for item in value):
        items = {}
        for item in value:
            items[f"{prefix}[{item['class_path']}]"] = True
            items.update(flatten(item.get("init_args") or {}, f"{prefix}[{item['class_path']}]."))
        return items
    return {prefix[:-1]: "32-true" if prefix == "trainer.precision." and value is None else value}


CASES = [(stage, path) for stage in ("finetune", "pretrain") for path in sorted((FLAT / stage).glob("*.yaml"))]


@pytest.mark.parametrize("stage,flat", CASES, ids=[f"{stage}/{path.stem}" for stage, path in CASES])
def test_a_composed_recipe_means_what_its_flat_recipe_meant(stage, flat, tmp_path):
    recipe, later, options = COMPOSED.get(flat.stem, (flat.stem, [], [])) if stage == "pretrain" else \
        (flat.stem, [], [])
    name = recipe if flat.stem == "demo" else flat.stem
    translated = tmp_path / flat.name
    translated.write_text(yaml.safe_dump(translate(stage, yaml.safe_load(flat.read_text()))))
    before = resolved(stage, [translated], False, name)
    files = recipe_files(stage, recipe) + [REPO / "configs" / stage / f"{file}.yaml" for file in later]
    after = resolved(stage, files, True, name, options)
    changes = intended(stage, name, before)
    for key in sorted(set(before) | set(after)):
        was, now = before.get(key, "absent"), after.get(key, "absent")
        assert (was, now) == changes.pop(key, (was, was)), f"{name}: {key} was {was!r}, is {now!r}"
    assert not changes, f"{name}: intended changes that did not happen: {changes}"


def test_the_global_batch_splits_over_the_devices():
    assert split_global_batch(256, 1, 32) == (32, 8)
    assert split_global_batch(256, 2, 32) == (32, 4)
    assert split_global_batch(256, 8, 32) == (32, 1)
    assert split_global_batch(48, 8) == (6, 1) and split_global_batch(48, 1) == (48, 1)
    assert split_global_batch(120, 1, 50) == (40, 3)  # the fewest accumulated batches that divide evenly
    with pytest.raises(ValueError, match="does not divide among 5 devices"):
        split_global_batch(24, 5)


@pytest.mark.parametrize("devices,per_device,accumulate", [(1, 32, 8), (2, 32, 4), (8, 32, 1)])
def test_a_recipes_global_batch_on_simulated_devices(devices, per_device, accumulate, capsys):
    """ASiT's 256 clips a step with at most 32 on a device, on 1, 2 and 8 (simulated) CPU
    devices: the per-device batch, the accumulation and the lr scaled from the global batch."""
    cli = pretrain_cli(["--config", str(REPO / "configs/pretrain/demo.yaml"), "--config",
                        str(REPO / "configs/pretrain/asit_demo.yaml"), "--global_batch_size", "256",
                        "--max_device_batch_size", "32", "--trainer.accelerator", "cpu",
                        "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                        "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    assert cli.datamodule.hparams.batch_size == per_device
    assert cli.trainer.accumulate_grad_batches == accumulate and cli.trainer.world_size == devices
    assert f"global batch 256 = {devices} device(s) x 32 clips x {accumulate}" in capsys.readouterr().out
    # What PretrainModule.peak_lr scales ASiT's lr per 256 clips by: the global batch, whatever the layout.
    assert per_device * cli.trainer.world_size * cli.trainer.accumulate_grad_batches == 256


def test_runs_are_named_after_their_recipe_unless_named(tiny_corpus):
    recipe = ["--config", str(REPO / "configs/finetune/demo.yaml"), "--config",
              str(REPO / "configs/finetune/demo_keywords.yaml"), "--model.init_from", "null",
              "--data.train", str(tiny_corpus / "events/train"), "--trainer.accelerator", "cpu"]
    cli = finetune_cli(recipe, run=False)
    assert cli.trainer.default_root_dir.endswith("runs/demo_keywords")
    logger = cli.config.trainer.logger.init_args
    assert (logger.name, logger.save_dir, cli.trainer.logger.save_dir) == ("demo_keywords",) + ("runs/demo_keywords",) * 2
    named = finetune_cli([*recipe, "--trainer.default_root_dir", "elsewhere"], run=False)
    assert named.trainer.default_root_dir.endswith("elsewhere") and named.trainer.logger.save_dir == "elsewhere"
    explicit = finetune_cli([*recipe, "--data.batch_size", "4"], run=False)
    assert explicit.datamodule.hparams.batch_size == 4  # a per-device batch given wins over the global one


def test_recipes_are_half_the_lines_they_were():
    """Issue 22: the recipes total at most half the lines of the 22 flat ones it started from."""
    lines = sum(len(path.read_text().splitlines()) for path in (REPO / "configs").glob("*/*.yaml"))
    assert lines <= 1388 // 2, lines
