"""Pretraining methods over the shared Lightning layer: :mod:`pretrain.base` (the loop every method
shares), :mod:`pretrain.optimization` (a method's optimizer and schedule), one file per method
(:mod:`pretrain.mspm`, :mod:`pretrain.asit`, :mod:`pretrain.eat`) and ``ssast-pretrain``
(:mod:`pretrain.cli`)."""
