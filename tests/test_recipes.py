"""Every recipe resolves to the published values: the finetuning table of DESIGN.md section 8
(read from DESIGN.md itself), the pretraining recipes of sections 6-7b, SUPERB's and EAT's
configs; and the pictures are drawn."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import resolved_recipe
from pretrain import mspm
from pretrain.mspm import MSPM

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO.parent / "shared/DESIGN.md"
# Every pretraining recipe, as its docs compose it: files on top of the recipe, and options.
RECIPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "mspm": ("mspm", (), ()),
    "mspm_small": ("mspm", (), ("--model.init_args.size", "small")),
    "mspm_tiny": ("mspm", ("mspm_tiny",), ()),
    "mspm_frame": ("mspm", ("frame_tokens",), ()),
    "mspm_frame_tiny": ("mspm", ("mspm_tiny", "frame_tokens"), ()),
    "asit": ("asit", (), ()),
    "asit_tiny": ("asit", (), ("--model.init_args.size", "tiny")),
    "eat": ("eat", (), ()),
    "eat_tiny": ("eat", (), ("--model.init_args.size", "tiny")),
    **{f"{method}_demo": (f"{method}_demo", (), ()) for method in ("mspm", "asit", "eat")},
}


def resolved(stage: str, name: str) -> dict:
    if stage == "pretrain":
        recipe, after, options = RECIPES[name]
        return resolved_recipe(stage, recipe, *options, after=after)
    return resolved_recipe(stage, name)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_resolves(recipe):
    config = resolved("pretrain", recipe)
    method = {"asit": "pretrain.asit.ASiT", "eat": "pretrain.eat.EAT"}.get(recipe.split("_")[0], "pretrain.mspm.MSPM")
    assert config["model"]["class_path"] == method
    model, data = config["model"]["init_args"], config["data"]
    optimization = model["optimization"]
    if recipe.startswith("mspm") and recipe != "mspm_demo":  # DESIGN.md section 6
        assert model["mask_patches"] == 400 and model["passes"] == 2 and optimization["betas"] == [0.95, 0.999]
        assert data["target_length"] == 1024 and config["trainer"]["precision"] == "bf16-mixed"
        assert (model["mse_weight"], optimization["optimizer"], optimization["weight_decay"]) == (10.0, "adam", 5e-7)
        assert optimization["decay_norms_and_biases"] is True
        tiny = model["size"] == "tiny"
        assert (optimization["lr"], config["global_batch_size"]) == ((5e-4, 120) if tiny else (1e-4, 24))
        assert (optimization["warmup_steps"], optimization["warmup_every"], optimization["schedule"]) == (
            1000, 50, "plateau")
        assert (optimization["plateau_factor"], optimization["plateau_patience"]) == (0.5, 2)
        assert data["batches_per_epoch"] == (800 if tiny else 4000)  # run_mask_*.sh --epoch_iter
        assert data["stats"] == "audioset"
        assert (model["fshape"], model["tshape"]) == ((128, 2) if "frame" in recipe else (16, 16))
        assert model["size"] == {"mspm_small": "small"}.get(recipe, "tiny" if "tiny" in recipe else "base")
    if recipe in ("asit", "asit_tiny"):  # DESIGN.md section 7
        assert (model["fshape"], model["tshape"], model["view_frames"], model["drop_path"]) == (16, 16, 592, 0.1)
        gmml = model["gmml"]
        assert gmml["coverage"] == [0.5, 0.7] and gmml["max_block"] == 0.3 and gmml["replace_coverage"] == 0.3
        assert gmml["replace_probability"] == 0.5 and (model["num_lead_tokens"], optimization["optimizer"]) == (1, "adamw")
        assert (model["cls_prototypes"], model["patch_prototypes"], model["student_temp"]) == (8192, 1024, 0.1)
        assert (model["warmup_teacher_temp"], model["teacher_temp"], model["center_momentum"]) == (0.04, 0.07, 0.9)
        assert (model["ema_decay"], model["ema_end_decay"], model["recon_weight"]) == (0.996, 1.0, 2.0)
        assert optimization["gradient_clip_per_tensor"] == 3.0
        assert optimization["lr_batch_size"] == 256 and optimization["decay_norms_and_biases"] is False
        assert (optimization["lr"], optimization["weight_decay"], optimization["weight_decay_end"]) == (5e-4, 0.04, 0.4)
        # The paper's epochs (10 of warmup, 30 of teacher temperature), whatever the batch of a step.
        assert (optimization["warmup_steps"], optimization["warmup_epochs"], model["teacher_temp_warmup_epochs"]) == (
            0, 10, 30)
        assert data["batches_per_epoch"] * config["global_batch_size"] == pytest.approx(2_000_000, rel=0.001)
        assert config["trainer"]["max_epochs"] == 100 and data["target_length"] >= 592
        assert config["global_batch_size"] == 256 and optimization["schedule"] == "warmup_cosine"
        assert optimization["min_lr"] == 1e-6 and model["size"] == ("tiny" if recipe.endswith("tiny") else "base")
    if recipe in ("eat", "eat_tiny"):  # DESIGN.md section 7b
        assert (optimization["optimizer"], optimization["lr"], optimization["betas"], optimization["weight_decay"]) == (
            "adamw", 5e-4, [0.9, 0.95], 0.05)
        assert (optimization["warmup_steps"], config["trainer"]["max_steps"], config["global_batch_size"]) == (
            53333, 400000, 48)
        assert (optimization["schedule"], optimization["min_lr"]) == ("warmup_cosine", 0.0)
        assert (model["clone_batch"], model["mask_prob"], model["mask_length"], model["utterance_weight"]) == (16, 0.8, 5, 1.0)
        assert (model["ema_decay"], model["ema_end_decay"], model["ema_anneal_end_step"]) == (0.9998, 0.99999, 100000)
        assert config["trainer"]["gradient_clip_val"] == 4.0 and model["num_lead_tokens"] == 1
    if recipe.endswith("_demo"):  # the demo corpus and a mini frame model, from the demo family
        assert (model["size"], model["fshape"], model["tshape"]) == ("mini", 128, 2)
        assert data["train"] == "demo_data/unlabeled" and config["trainer"]["devices"] == 1


def test_reconstruction_picture(monkeypatch):
    torch.manual_seed(0)
    model = MSPM(size="tiny", input_tdim=64, mask_patches=20)
    fbank = torch.randn(1, 64, 128)
    picture, caption = model.picture(fbank)
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype.name == "uint8" and picture.std() > 0
    assert caption == "input / masked / reconstructed"
    drawn = {}
    monkeypatch.setattr(mspm, "spectrogram_strip", lambda *rows, titles: drawn.update(rows=rows, titles=titles))
    model.picture(fbank)
    shown, masked, rebuilt = drawn["rows"]
    assert drawn["titles"] == ("input", "masked", "reconstructed") and torch.equal(shown, fbank[0])
    hidden = masked != shown
    assert 0 < hidden.float().mean() < 1 and (masked[hidden] == fbank.min()).all()  # masked patches are blanked
    assert torch.equal(rebuilt[~hidden], shown[~hidden]) and not torch.equal(rebuilt[hidden], shown[hidden])


# The files a finetuning recipe composes on are not recipes of their own.
FINETUNE_RECIPES = sorted(path for path in (REPO / "configs/finetune").glob("*.yaml")
                          if path.stem not in ("base", "superb", "eat", "demo", "esc50_folds"))
# DESIGN.md section 8's table, a row per recipe (the official script in the row's name).
TABLE_ROWS = {"SSAST ESC-50": "esc50", "SSAST SC v2": "speechcommands_v2", "SSAST AS-20K": "audioset_20k",
              "AST ESC-50 from ImageNet": "esc50_imagenet", "AST SC v2 from ImageNet": "speechcommands_v2_imagenet"}


def design_table() -> dict[str, dict]:
    """DESIGN.md section 8's finetuning table, parsed: recipe -> its published settings."""
    text = DESIGN.read_text()
    stair = int(re.search(r"its warmup sets the lr every (\d+) steps", text).group(1))
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.sub(r" \(`.*`\)$", "", cells[0])
        if name not in TABLE_ROWS or len(cells) != 11:
            continue
        lr, warmup, decay, loss, noise, mixup, masks, epochs_batch, frames, reported = cells[1:]
        factor, every, first = re.match(r"×([\d.]+) every (\d+) from epoch (\d+)", decay).groups()
        epochs, batch = (int(value) for value in epochs_batch.split(" × "))
        steps = 0 if warmup == "none" else int(warmup.split()[0].replace(",", ""))
        rows[TABLE_ROWS[name]] = {
            "lr": float(lr), "warmup_steps": steps, "warmup_every": stair if steps else None,
            "decay": (float(factor), int(every), int(first) - 1), "loss": loss.lower(), "noise": noise == "on",
            "mixup": float(mixup), "masks": tuple(int(value) for value in masks.split("/")), "epochs": epochs,
            "batch": batch, "frames": int(frames), "reported": reported,
        }
    assert set(rows) == set(TABLE_ROWS.values()), f"DESIGN.md's table has {sorted(rows)}"
    return rows


@pytest.mark.parametrize("recipe", sorted(TABLE_ROWS.values()))
def test_finetune_recipe_matches_the_design_table(recipe):
    """The values DESIGN.md holds from the official scripts, against the resolved recipe (its
    file, the class defaults and the base): each published value is written once, there."""
    expected = design_table()[recipe]
    config = resolved("finetune", recipe)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    assert (model["lr"], model["head_lr_scale"], model["betas"], model["weight_decay"]) == (
        expected["lr"], 1.0, [0.95, 0.999], 5e-7)  # SSAST/AST's shared Adam (section 8's text)
    assert model["optimizer"] == "adam" and model["decay_norms_and_biases"] is True
    assert model["schedule"] == "step" and model["warmup_steps"] == expected["warmup_steps"]
    if expected["warmup_every"]:
        assert model["warmup_every"] == expected["warmup_every"]
    assert (model["lr_decay_factor"], model["lr_decay_every"], model["lr_decay_start"]) == expected["decay"]
    assert (model["loss"], model["noise"], data["mixup"]) == (expected["loss"], expected["noise"], expected["mixup"])
    assert (model["freqm"], model["timem"]) == expected["masks"]
    assert (trainer["max_epochs"], config["global_batch_size"], data["target_length"]) == (
        expected["epochs"], expected["batch"], expected["frames"])
    assert data["batches_per_epoch"] is None  # an epoch is one shuffled pass over the training clips
    assert (model["fstride"], model["tstride"]) == (10, 10)
    assert model["pooling"] == ("cls" if recipe.endswith("_imagenet") else "mean")
    callbacks = {callback["class_path"].rsplit(".", 1)[-1]: callback.get("init_args") or {}
                 for callback in trainer["callbacks"]}
    if "best" in expected["reported"]:  # chosen on a validation set apart from the test set
        assert callbacks["RunCheckpoint"]["monitor"] == "val/acc" and data["val"] != data["test"]
    else:  # nothing may be chosen on the test set a recipe validates on
        assert "RunCheckpoint" not in callbacks and data["val"] == data["test"]
    if "weight average" in expected["reported"]:
        first, last = map(int, re.search(r"epochs (\d+)–(\d+)", expected["reported"]).groups())
        assert (callbacks["AverageEpochWeights"]["first_epoch"], callbacks["AverageEpochWeights"]["last_epoch"]) == (
            first, last)
    else:
        assert "AverageEpochWeights" not in callbacks


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES, ids=lambda path: path.stem)
def test_every_finetune_recipe_resolves(recipe):
    config = resolved("finetune", recipe.stem)
    # One shuffled pass per epoch, but where the official code draws with replacement (weighted
    # samplers) or carves its dev set out of the training clips.
    draws = recipe.stem in ("speechcommands_v1_12", "iemocap_er", "eat_as2m")
    assert (config["data"]["batches_per_epoch"] is not None) == draws


# The SUPERB runs of YuanGongND/ssast src/finetune/superb/*/ (run_*.sh, config_*.yaml), with s3prl's
# `-s hidden_states -f` (DESIGN.md section 8's text).
SUPERB_FINETUNING = {
    "speechcommands_v1_12": dict(lr=5e-5, steps=20000, global_batch=32, device_batch=None, frames=100,
                                 validate_every=500, balanced=True, crop=None, val_split=None),
    "voxceleb1_sid": dict(lr=1e-4, steps=40000, global_batch=32, device_batch=4, frames=1000, validate_every=4000,
                          balanced=False, crop=128000, val_split=None),
    "iemocap_er": dict(lr=1e-4, steps=10000, global_batch=32, device_batch=4, frames=600, validate_every=1600,
                       balanced=False, crop=None, val_split=0.2),
}


@pytest.mark.parametrize("recipe", sorted(SUPERB_FINETUNING))
def test_superb_recipe_matches_the_official_config(recipe):
    config = resolved("finetune", recipe)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    expected = SUPERB_FINETUNING[recipe]
    assert (model["pooling"], model["projector_dim"], model["optimizer"], model["schedule"]) == (
        "layers", 256, "adam", "constant")
    assert (model["lr"], model["betas"], model["weight_decay"], model["loss"]) == (
        expected["lr"], [0.9, 0.999], 0.0, "ce")
    assert (model["fstride"], model["tstride"]) == (128, 1) and "Frame-400" in model["init_from"]
    assert (model["freqm"], model["timem"], model["noise"]) == (0, 0, False)
    assert (trainer["max_steps"], trainer["max_epochs"], trainer["gradient_clip_val"]) == (expected["steps"], -1, 1.0)
    assert (config["global_batch_size"], config["max_device_batch_size"]) == (
        expected["global_batch"], expected["device_batch"])
    # The dev set every eval_step updates: an epoch of that many batches, or a validation interval.
    assert (data["batches_per_epoch"] or trainer["val_check_interval"]) == expected["validate_every"]
    assert (data["target_length"], data["stats"], data["pad_normalized"]) == (expected["frames"], "audioset", True)
    assert (data["balanced"], data["train_crop_samples"], data["val_split"]) == (
        expected["balanced"], expected["crop"], expected["val_split"])
    callbacks = {callback["class_path"].rsplit(".", 1)[-1]: callback.get("init_args") or {}
                 for callback in trainer["callbacks"]}
    assert callbacks["RunCheckpoint"]["monitor"] == "val/acc"  # the best dev step is tested


# cwx-worst-one/EAT scripts/finetuning_{AS20K,AS2M,ESC50,SPCv2}.sh over config/finetuning.yaml and
# models/EAT_audio_classification.py (DESIGN.md section 8's text).
EAT_FINETUNING = {
    "eat_as20k": dict(lr=5e-5, warmup=4000, steps=40000, batch=48, mixup=0.8, smoothing=0.0, loss="bce",
                      masks=(25.6, 204.8), frames=1024, noise=False, task="multilabel"),
    "eat_as2m": dict(lr=5e-5, warmup=30000, steps=300000, batch=96, mixup=0.8, smoothing=0.0, loss="bce",
                     masks=(25.6, 204.8), frames=1024, noise=False, task="multilabel"),
    "eat_esc50": dict(lr=5e-5, warmup=400, steps=4000, batch=48, mixup=0.0, smoothing=0.1, loss="ce",
                      masks=(51.2, 204.8), frames=512, noise=False, task="multiclass"),
    "eat_spcv2": dict(lr=2e-4, warmup=4000, steps=40000, batch=256, mixup=0.8, smoothing=0.0, loss="bce",
                      masks=(25.6, 25.6), frames=128, noise=True, task="multiclass"),
}


@pytest.mark.parametrize("recipe", sorted(EAT_FINETUNING))
def test_eat_recipe_matches_the_official_scripts(recipe):
    config = resolved("finetune", recipe)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    expected = EAT_FINETUNING[recipe]
    assert (model["optimizer"], model["betas"], model["weight_decay"], model["layer_decay"]) == (
        "adamw", [0.9, 0.95], 0.05, 0.65)
    assert (model["schedule"], model["min_lr"], model["drop_path"], model["pooling"]) == ("fairseq_cosine", 1e-6, 0.1, "cls")
    assert model["decay_norms_and_biases"] is False  # fairseq's weight_decay_scale 0 on 1-D parameters
    assert (model["lr"], model["warmup_steps"], trainer["max_steps"]) == (expected["lr"], expected["warmup"],
                                                                          expected["steps"])
    assert (model["batch_mixup"], model["batch_mixup_prob"]) == (expected["mixup"], 0.9)
    assert (model["label_smoothing"], model["loss"], model["task"]) == (
        expected["smoothing"], expected["loss"], expected["task"])
    assert (model["freqm"], model["timem"]) == pytest.approx(expected["masks"])
    assert (model["mask_value"], model["augment_order"], model["head_norm_eps"], model["noise"]) == (
        0.0, "eat", 1e-6, expected["noise"])
    assert (model["fstride"], model["tstride"]) == (16, 16)
    assert (config["global_batch_size"], data["target_length"], data["roll_gain"]) == (
        expected["batch"], expected["frames"], True)
    if recipe == "eat_as2m":  # a weighted sampler, 200,000 clips a epoch
        assert data["balanced"] and data["batches_per_epoch"] * expected["batch"] == pytest.approx(200000, abs=96)


@pytest.mark.parametrize("stage,name", [("pretrain", name) for name in RECIPES]
                         + [("finetune", path.stem) for path in FINETUNE_RECIPES], ids=lambda value: value)
def test_every_recipe_keeps_a_last_checkpoint_to_resume_from(stage, name):
    """``--ckpt_path last`` resumes from LastCheckpoint's file; the recipes also write it every
    30 minutes, so that a preemption loses at most that (issue 13)."""
    callbacks = resolved(stage, name)["trainer"]["callbacks"]
    last = [callback for callback in callbacks if callback["class_path"] == "ssast.train.callbacks.LastCheckpoint"]
    assert len(last) == 1 and last[0]["init_args"]["every_minutes"] == 30
    assert not any((callback.get("init_args") or {}).get("save_last") for callback in callbacks)
