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


@pytest.mark.parametrize("recipe", [p for p in FINETUNE_RECIPES if not p.stem.startswith("demo")],
                         ids=lambda path: path.stem)
def test_finetune_recipe_matches_the_published_settings(recipe):
    """The SSAST settings of DESIGN.md section 8 (a --print_config would need the datasets);
    the ``_imagenet`` recipes are AST's: the same settings from a DeiT, cls pooling, stride 10."""
    config = yaml.safe_load(recipe.read_text())
    model, data = config["model"], config["data"]
    if recipe.stem.endswith("_imagenet"):
        assert model["pooling"] == "cls" and (model["fstride"], model["tstride"]) == (10, 10)
        assert model["init_from"]
    expected = {
        "audioset_20k": dict(lr=5e-5, batch=12, freqm=48, timem=192, mixup=0.5, frames=1024, epochs=25, task="multilabel"),
        "esc50": dict(lr=1e-4, batch=48, freqm=24, timem=96, mixup=0.0, frames=512, epochs=50, task="multiclass"),
        "speechcommands_v2": dict(lr=2.5e-4, batch=128, freqm=48, timem=48, mixup=0.6, frames=128, epochs=30,
                                  task="multiclass"),
    }.get(recipe.stem.removesuffix("_imagenet"))
    if expected is None:
        assert model["task"] == "multiclass" and data["target_length"] in (100, 1000)
        return
    assert model["lr"] == expected["lr"] and data["batch_size"] == expected["batch"]
    assert (model["freqm"], model["timem"], model["mixup"]) == (expected["freqm"], expected["timem"], expected["mixup"])
    assert data["target_length"] == expected["frames"] and config["trainer"]["max_epochs"] == expected["epochs"]
    assert model["task"] == expected["task"]


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
