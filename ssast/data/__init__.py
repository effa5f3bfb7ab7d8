"""Audio datasets as WebDataset shards (DESIGN.md §3): writing them, reading them in batches.

Writing: :mod:`~ssast.data.writer` (shards from files), :mod:`~ssast.data.recipes` (published
datasets' layouts, one module per dataset), :mod:`~ssast.data.stats` (``stats.json``),
:mod:`~ssast.data.cli` (``ssast-data``).

Reading: :mod:`~ssast.data.shards` (listing a set's shards, ``classes.txt``, shard sizes),
:mod:`~ssast.data.tar` (a shard's samples, read strictly), :mod:`~ssast.data.retries` (a shard
read with retries), :mod:`~ssast.data.skips` (bad data counted; the errors that stop a stream),
:mod:`~ssast.data.options` (``ReaderOptions``, ``KeySplit``), :mod:`~ssast.data.label_counts`
(class-balanced weights), :mod:`~ssast.data.stream` (``ShardStream``: batches of clips),
:mod:`~ssast.data.passes` (its exact training passes), :mod:`~ssast.data.loaders`
(``EpochLoader``, ``EvalLoader``).
"""
