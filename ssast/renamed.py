"""Options that were renamed: refused under their old names, in one line that names the new one.

A class or function that renamed an argument keeps the old name as a keyword-only argument
defaulting to ``None`` and hands it to :func:`refuse_renamed` first: a Python call and a
recipe that set it (LightningCLI builds its parser from the signature, so the key is still
accepted there) meet the same line, not a silent default or an unknown-option error. The
training programs exit with that line (``ssast.train.cli.USER_ERRORS``).
"""

from __future__ import annotations


class RenamedOptionError(TypeError):
    """An option given under a name it no longer has."""


def refuse_renamed(owner: str, old: str, new: str, value: object) -> None:
    """Raise :class:`RenamedOptionError` when ``old``, the former name of ``new``, was given
    (``value`` is not ``None``) to ``owner``."""
    if value is not None:
        raise RenamedOptionError(f"{owner}: {old} was renamed {new}; set {new} instead")
