"""``ssast-pretrain``: self-supervised pretraining from a YAML recipe (LightningCLI).

    ssast-pretrain fit --config configs/pretrain/demo.yaml [--trainer.max_steps 100 ...]
    ssast-pretrain fit --config configs/pretrain/mspm_patch_base.yaml --print_config

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from pretrain.base import PretrainModule
from pretrain.datamodule import AudioDataModule


def default_wandb_to_offline() -> None:
    """No key in the environment or ~/.netrc: log offline instead of prompting."""
    netrc = Path.home() / ".netrc"
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if not logged_in and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


class LogConfig(SaveConfigCallback):
    """Writes config.yaml to the run folder and sends the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class PretrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.target_length", "model.init_args.input_tdim")


def main(args: list[str] | None = None) -> None:
    default_wandb_to_offline()
    PretrainCLI(
        PretrainModule, AudioDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=LogConfig, save_config_kwargs={"overwrite": True}, args=args,
    )


if __name__ == "__main__":
    sys.exit(main())
