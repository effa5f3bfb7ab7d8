"""Pretrain (Lightning). Not built yet."""
