"""Finetune (Lightning). Not built yet."""
