"""The Lightning layer that pretraining (``pretrain/``) and finetuning (``finetune/``) stand on:
the data module, the :class:`~ssast.train.module.EncoderModule` base, checkpoint IO and resume,
callbacks, schedules and the CLI base. The rest of ``ssast`` is plain PyTorch and never
imports this package."""
