"""Recipes for published datasets: their download layouts turned into shards.

Each recipe reads one layout, checks that it is what it expects (a clear
``FileNotFoundError``/``ValueError`` naming what is missing when it is not), lists the
clips with their labels, split and metadata, writes them with :func:`~ssast.data.writer.write_shards`, and
then writes ``stats.json`` over the training clips with the dataset's target length
(DESIGN.md §4). ``OUT`` ends up as any other dataset folder::

    OUT/<split>/<split>-000000.tar ...   shards, one folder per split
    OUT/classes.txt                      every class of the listing, sorted
    OUT/stats.json                       log-mel mean/std of the training split(s)
    OUT/missing.txt                      listed clips not found on disk: id <TAB> split
    OUT/errors.txt                       clips found but not decodable: path <TAB> reason

========================  ==========================================  ==================
recipe                    splits                                      target length
========================  ==========================================  ==================
``esc50``                 ``fold1`` ... ``fold5``                     512
``speechcommands``        ``train``, ``val``, ``test``                128
``voxceleb1``             ``train``, ``val``, ``test``                1000
``audioset``              ``balanced_train``, ``eval``,               1024
                          ``unbalanced_train``
``iemocap``               ``fold1`` ... ``fold5`` (= Session1 ... 5)  600
========================  ==========================================  ==================

One module per dataset lists its layout's clips (``list_<recipe>``, returning a
:class:`~ssast.data.recipes.common.RecipePlan`): :mod:`~ssast.data.recipes.esc50`,
:mod:`~ssast.data.recipes.speechcommands`, :mod:`~ssast.data.recipes.voxceleb1`,
:mod:`~ssast.data.recipes.audioset`, :mod:`~ssast.data.recipes.iemocap`. The plan and the
checks of a layout they share are in :mod:`~ssast.data.recipes.common`; the table of
recipes (:data:`~ssast.data.recipes.build.RECIPES`) and the writing of a dataset
(:func:`~ssast.data.recipes.build.build_recipe`) in :mod:`~ssast.data.recipes.build`.
"""
