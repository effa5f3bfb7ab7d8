"""``ssast-pretrain``: self-supervised pretraining from a YAML recipe (LightningCLI).

    ssast-pretrain fit --config configs/pretrain/demo.yaml [--trainer.max_steps 100 ...]
    ssast-pretrain fit --config configs/pretrain/mspm_patch_base.yaml --print_config
    ssast-pretrain fit --config configs/pretrain/demo.yaml --ckpt_path last   # resume

Weights & Biases is the default logger; without an API key it runs offline (no prompt, no
network) and ``wandb sync`` uploads the run later.
"""

from __future__ import annotations

import sys

from pretrain.base import PretrainModule
from ssast.train.cli import ConciseParser, LogConfig, RunCLI, default_wandb_to_offline, run_program
from ssast.train.datamodule import AudioDataModule


class PretrainCLI(RunCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.target_length", "model.init_args.input_tdim")


def main(args: list[str] | None = None) -> None:
    default_wandb_to_offline()
    run_program("ssast-pretrain", lambda: PretrainCLI(
        PretrainModule, AudioDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=LogConfig, save_config_kwargs={"overwrite": True}, parser_class=ConciseParser,
        parser_kwargs={"prog": "ssast-pretrain"}, args=args,
    ))


if __name__ == "__main__":
    sys.exit(main())
