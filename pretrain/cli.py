"""``ssast-pretrain``: self-supervised pretraining from a YAML recipe (LightningCLI).

    ssast-pretrain fit --config configs/pretrain/demo.yaml --config configs/pretrain/mspm_demo.yaml [--trainer.max_steps 100 ...]
    ssast-pretrain fit --config configs/pretrain/mspm.yaml --print_config
    ssast-pretrain fit --config configs/pretrain/demo.yaml --config configs/pretrain/mspm_demo.yaml --ckpt_path last

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.base import PretrainModule
from ssast.train.callbacks import ExportEncoder, LogPictures
from ssast.train.cli import (
    ConciseParser, LogConfig, RunCLI, default_wandb_to_offline, run_program, stage_parser_kwargs,
)
from ssast.train.datamodule import AudioDataModule


BASE_RECIPE = Path(__file__).resolve().parents[1] / "configs/pretrain/base.yaml"


class PretrainCLI(RunCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.target_length", "model.init_args.input_tdim")
        # Every pretraining run exports its encoder and draws pictures; a recipe tunes them by key.
        parser.add_lightning_class_args(ExportEncoder, "export")
        parser.add_lightning_class_args(LogPictures, "pictures")


def build_cli(args: list[str] | None = None, run: bool = True, base: Path | None = BASE_RECIPE) -> PretrainCLI:
    """The CLI; recipes compose on ``base`` (``configs/pretrain/base.yaml``)."""
    return PretrainCLI(
        PretrainModule, AudioDataModule, subclass_mode_model=True,
        save_config_callback=LogConfig, save_config_kwargs={"overwrite": True}, parser_class=ConciseParser,
        parser_kwargs=stage_parser_kwargs("ssast-pretrain", base, run), args=args, run=run,
    )


def main(args: list[str] | None = None) -> None:
    default_wandb_to_offline()
    run_program("ssast-pretrain", lambda: build_cli(args))


if __name__ == "__main__":
    sys.exit(main())
