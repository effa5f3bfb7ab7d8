"""Finetuning (Lightning): ssast-finetune."""
