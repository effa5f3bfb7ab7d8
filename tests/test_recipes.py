"""Every pretraining recipe parses, and the pictures are drawn."""

from pathlib import Path

import pytest
import torch
import yaml

from pretrain.cli import main
from pretrain.mspm import MSPM

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs/pretrain").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_resolves(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    method = {"asit": "pretrain.distill.ASiT", "eat": "pretrain.eat.EAT"}.get(recipe.stem.split("_")[0], "pretrain.mspm.MSPM")
    assert config["model"]["class_path"] == method
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    if recipe.stem.startswith("mspm_"):  # DESIGN.md section 6
        assert model["mask_patches"] == 400 and model["passes"] == 2 and model["betas"] == [0.95, 0.999]
        assert data["target_length"] == 1024 and config["trainer"]["precision"] == "bf16-mixed"
        assert (model["mse_weight"], model["optimizer"], model["weight_decay"]) == (10.0, "adam", 5e-7)
        assert (model["lr"], data["batch_size"]) == ((5e-4, 120) if model["size"] == "tiny" else (1e-4, 24))
        assert (model["warmup_steps"], model["schedule"], model["plateau_factor"]) == (1000, "plateau", 0.5)
        assert model["plateau_patience"] == 2 and data["batches_per_epoch"] == 4000  # a check every 4000 steps
        assert data["stats"] == "audioset"
    if recipe.stem in ("asit_tiny", "asit_base"):  # DESIGN.md section 7
        assert (model["fshape"], model["tshape"], model["view_frames"], model["drop_path"]) == (16, 16, 592, 0.1)
        gmml = model["gmml"]
        assert gmml["coverage"] == [0.5, 0.7] and gmml["max_block"] == 0.3 and gmml["replace_coverage"] == 0.3
        assert gmml["replace_probability"] == 0.5 and (model["num_lead_tokens"], model["optimizer"]) == (1, "adamw")
        assert (model["cls_dim"], model["patch_dim"], model["student_temp"]) == (8192, 1024, 0.1)
        assert (model["warmup_teacher_temp"], model["teacher_temp"], model["center_momentum"]) == (0.04, 0.07, 0.9)
        assert (model["momentum"], model["recon_weight"], model["gradient_clip_per_tensor"]) == (0.996, 2.0, 3.0)
        assert model["lr_batch_size"] == 256 and model["decay_norms_and_biases"] is False
        assert (model["lr"], model["weight_decay"], model["weight_decay_end"]) == (5e-4, 0.04, 0.4)
        steps_per_epoch = data["batches_per_epoch"]
        assert model["warmup_steps"] == 10 * steps_per_epoch and model["teacher_temp_warmup_steps"] == 30 * steps_per_epoch
        assert config["trainer"]["max_epochs"] == 100 and data["target_length"] >= 592


def test_reconstruction_picture():
    torch.manual_seed(0)
    model = MSPM(size="tiny", input_tdim=64, mask_patches=20)
    picture, caption = model.picture(torch.randn(1, 64, 128))
    assert picture.shape == (3 * 128 + 2 * 2, 64, 3) and picture.dtype.name == "uint8"
    top, middle = picture[:128].astype(int), picture[130:258].astype(int)
    assert (top != middle).any(axis=-1).sum() > 0  # masked patches are drawn differently
    assert caption == "input / masked / reconstructed"


FINETUNE_RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs/finetune").glob("*.yaml"))


# DESIGN.md section 8, the official scripts' values: lr, warmup (steps, stair), decay (factor,
# every k epochs, start s: first decayed epoch s + 1), loss, noise, mixup, masks, epochs, batch,
# frames, and the callback that picks the reported model.
OFFICIAL_FINETUNING = {
    "esc50": dict(lr=1e-4, warmup=(0, None), decay=(0.85, 1, 6), loss="ce", noise=True, mixup=0.0, masks=(24, 96),
                  epochs=50, batch=48, frames=512, pick=None, pooling="mean"),             # SSAST run_esc_patch.sh
    "speechcommands_v2": dict(lr=2.5e-4, warmup=(1000, 50), decay=(0.85, 1, 5), loss="bce", noise=True, mixup=0.6,
                              masks=(48, 48), epochs=30, batch=128, frames=128, pick="best", pooling="mean"),  # run_sc.sh
    "audioset_20k": dict(lr=5e-5, warmup=(0, None), decay=(0.5, 5, 10), loss="bce", noise=False, mixup=0.5,
                         masks=(48, 192), epochs=25, batch=12, frames=1024, pick=(6, 25), pooling="mean"),  # run_as.sh
    "esc50_imagenet": dict(lr=1e-4, warmup=(0, None), decay=(0.85, 1, 5), loss="ce", noise=False, mixup=0.0,
                           masks=(24, 96), epochs=25, batch=48, frames=512, pick=None, pooling="cls"),  # AST run_esc.sh
    "speechcommands_v2_imagenet": dict(lr=2.5e-4, warmup=(0, None), decay=(0.85, 1, 5), loss="bce", noise=True,
                                       mixup=0.6, masks=(48, 48), epochs=30, batch=128, frames=128, pick="best",
                                       pooling="cls"),                                       # AST run_sc.sh
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL_FINETUNING))
def test_finetune_recipe_matches_the_official_script(recipe):
    config = yaml.safe_load((FINETUNE_RECIPES[0].parent / f"{recipe}.yaml").read_text())
    model, data, trainer = config["model"], config["data"], config["trainer"]
    expected = OFFICIAL_FINETUNING[recipe]
    assert (model["lr"], model.get("head_lr", 1.0), model["betas"], model["weight_decay"]) == (
        expected["lr"], 1.0, [0.95, 0.999], 5e-7)
    warmup_steps, warmup_every = expected["warmup"]
    assert model["schedule"] == "step" and model["warmup_steps"] == warmup_steps
    if warmup_steps:
        assert model["warmup_every"] == warmup_every
    assert (model["decay_factor"], model["decay_every"], model["decay_start"]) == expected["decay"]
    assert (model["loss"], model["noise"], data["mixup"]) == (expected["loss"], expected["noise"], expected["mixup"])
    assert (model["freqm"], model["timem"]) == expected["masks"]
    assert (trainer["max_epochs"], data["batch_size"], data["target_length"]) == (
        expected["epochs"], expected["batch"], expected["frames"])
    assert "batches_per_epoch" not in data  # an epoch is one shuffled pass over the training clips
    assert model["pooling"] == expected["pooling"] and (model["fstride"], model["tstride"]) == (10, 10)
    callbacks = {callback["class_path"].rsplit(".", 1)[-1]: callback.get("init_args") or {}
                 for callback in trainer["callbacks"]}
    if expected["pick"] == "best":
        assert callbacks["RunCheckpoint"]["monitor"] == "val/acc" and data["val"] != data["test"]
    else:  # nothing may be chosen on the test set a recipe validates on
        assert "RunCheckpoint" not in callbacks and data["val"] == data["test"]
    if isinstance(expected["pick"], tuple):
        assert (callbacks["AverageEpochWeights"]["first_epoch"], callbacks["AverageEpochWeights"]["last_epoch"]) == \
            expected["pick"]
    else:
        assert "AverageEpochWeights" not in callbacks


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES, ids=lambda path: path.stem)
def test_every_finetune_recipe_resolves(recipe, capsys):
    from finetune.cli import main as finetune_main

    with pytest.raises(SystemExit) as exit_info:
        finetune_main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    # One shuffled pass per epoch, but where the official code draws with replacement (weighted
    # samplers) or carves its dev set out of the training clips.
    draws = recipe.stem in ("speechcommands_v1_12", "iemocap_er", "eat_as2m")
    assert (config["data"]["batches_per_epoch"] is not None) == draws


# The SUPERB runs of YuanGongND/ssast src/finetune/superb/*/ (run_*.sh, config_*.yaml), with s3prl's
# `-s hidden_states -f`: the encoder finetuned through a weighted sum of its layers, a 256-wide projector,
# Adam at a constant rate (torch's defaults otherwise), gradient clipping 1; the frame model.
SUPERB_FINETUNING = {
    "speechcommands_v1_12": dict(lr=5e-5, steps=20000, accumulate=1, batch=32, frames=100, validate_every=500,
                                 balanced=True, crop=None, val_split=None),
    "voxceleb1_sid": dict(lr=1e-4, steps=40000, accumulate=8, batch=4, frames=1000, validate_every=4000,
                          balanced=False, crop=128000, val_split=None),
    "iemocap_er": dict(lr=1e-4, steps=10000, accumulate=8, batch=4, frames=600, validate_every=1600,
                       balanced=False, crop=None, val_split=0.2),
}


@pytest.mark.parametrize("recipe", sorted(SUPERB_FINETUNING))
def test_superb_recipe_matches_the_official_config(recipe):
    config = yaml.safe_load((FINETUNE_RECIPES[0].parent / f"{recipe}.yaml").read_text())
    model, data, trainer = config["model"], config["data"], config["trainer"]
    expected = SUPERB_FINETUNING[recipe]
    assert (model["pooling"], model["projector_dim"], model["optimizer"], model["schedule"]) == (
        "layers", 256, "adam", "constant")
    assert (model["lr"], model["betas"], model["weight_decay"], model["loss"]) == (
        expected["lr"], [0.9, 0.999], 0.0, "ce")
    assert (model["fstride"], model["tstride"]) == (128, 1) and "Frame-400" in model["init_from"]
    assert (model["freqm"], model["timem"], model["noise"]) == (0, 0, False)
    assert (trainer["max_steps"], trainer["max_epochs"], trainer["gradient_clip_val"]) == (expected["steps"], -1, 1.0)
    assert trainer.get("accumulate_grad_batches", 1) == expected["accumulate"]
    # The dev set every eval_step updates: an epoch of that many batches, or a validation interval.
    assert data.get("batches_per_epoch") or trainer["val_check_interval"] == expected["validate_every"]
    assert (data["batch_size"], data["target_length"], data["stats"], data["pad_normalized"]) == (
        expected["batch"], expected["frames"], "audioset", True)
    assert (data.get("balanced", False), data.get("train_crop_samples"), data.get("val_split")) == (
        expected["balanced"], expected["crop"], expected["val_split"])
    callbacks = {callback["class_path"].rsplit(".", 1)[-1]: callback.get("init_args") or {}
                 for callback in trainer["callbacks"]}
    assert callbacks["RunCheckpoint"]["monitor"] == "val/acc"  # the best dev step is tested


# cwx-worst-one/EAT scripts/finetuning_{AS20K,AS2M,ESC50,SPCv2}.sh over config/finetuning.yaml and
# models/EAT_audio_classification.py (DESIGN.md section 8).
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
    config = yaml.safe_load((FINETUNE_RECIPES[0].parent / f"{recipe}.yaml").read_text())
    model, data, trainer = config["model"], config["data"], config["trainer"]
    expected = EAT_FINETUNING[recipe]
    assert (model["optimizer"], model["betas"], model["weight_decay"], model["layer_decay"]) == (
        "adamw", [0.9, 0.95], 0.05, 0.65)
    assert (model["schedule"], model["min_lr"], model["drop_path"], model["pooling"]) == ("cosine", 1e-6, 0.1, "cls")
    assert (model["lr"], model["warmup_steps"], trainer["max_steps"]) == (expected["lr"], expected["warmup"],
                                                                          expected["steps"])
    assert (model["batch_mixup"], model.get("batch_mixup_prob", 1.0) if expected["mixup"] else 0.9) == (
        expected["mixup"], 0.9)
    assert (model.get("label_smoothing", 0.0), model["loss"], model["task"]) == (
        expected["smoothing"], expected["loss"], expected["task"])
    assert (model["freqm"], model["timem"]) == pytest.approx(expected["masks"])
    assert (model["mask_value"], model["augment_order"], model["head_norm_eps"], model["noise"]) == (
        0.0, "eat", 1e-6, expected["noise"])
    assert (model["fstride"], model["tstride"]) == (16, 16)
    assert (data["batch_size"], data["target_length"], data["roll_gain"]) == (expected["batch"], expected["frames"],
                                                                            True)
    if recipe == "eat_as2m":  # a weighted sampler, 200,000 clips a epoch
        assert data["balanced"] and data["batches_per_epoch"] * data["batch_size"] == pytest.approx(200000, abs=96)


ALL_RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_recipe_keeps_a_last_checkpoint_to_resume_from(recipe):
    """``--ckpt_path last`` resumes from LastCheckpoint's file; the published recipes also
    write it every 30 minutes, so that a preemption loses at most that (issue 13)."""
    callbacks = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"]
    last = [callback for callback in callbacks if callback["class_path"] == "ssast.train.callbacks.LastCheckpoint"]
    assert len(last) == 1
    if not recipe.stem.startswith("demo") and not recipe.stem.endswith("_demo"):
        assert last[0]["init_args"]["every_minutes"] == 30
    assert not any((callback.get("init_args") or {}).get("save_last") for callback in callbacks)
