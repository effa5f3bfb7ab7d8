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
    assert config["model"]["class_path"] == "pretrain.mspm.MSPM"
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    if recipe.stem.startswith("mspm_"):
        assert model["mask_patches"] == 400 and model["passes"] == 2 and model["betas"] == [0.95, 0.999]
        assert data["target_length"] == 1024 and config["trainer"]["precision"] == "bf16-mixed"


def test_reconstruction_picture(monkeypatch):
    model = MSPM(size="tiny", input_tdim=64, mask_patches=20)
    pictures = []
    monkeypatch.setattr(model, "log_picture", lambda key, picture, caption=None: pictures.append(picture))
    fbank = torch.randn(64, 128)
    mask = torch.zeros(32, dtype=torch.bool)
    mask[:20] = True
    model.draw(fbank, mask, torch.zeros(20, 256))
    (picture,) = pictures
    assert picture.shape == (3 * 128 + 2 * 2, 64, 3) and picture.dtype.name == "uint8"
    top, middle = picture[:128].astype(int), picture[130:258].astype(int)
    assert (top != middle).any(axis=-1).sum() > 0  # masked patches are drawn differently
