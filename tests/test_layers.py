"""The layers import only the layers below them (DESIGN.md section 2):

    ssast (core, plain PyTorch)  <-  ssast.train (Lightning)  <-  pretrain, finetune  <-  ssast.demo

Every import statement counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def layer_of(module: str) -> str | None:
    """The layer a module name belongs to, ``None`` for third-party modules."""
    for prefix, layer in (("ssast.train", "train"), ("ssast.demo", "demo"), ("ssast", "core"),
                          ("pretrain", "pretrain"), ("finetune", "finetune"), ("lightning", "lightning"),
                          ("pytorch_lightning", "lightning")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


# What each layer may import, of the layers above.
ALLOWED = {
    "core": {"core"},
    "train": {"core", "train", "lightning"},
    "pretrain": {"core", "train", "pretrain", "lightning"},
    "finetune": {"core", "train", "finetune", "lightning"},
    "demo": {"core", "train", "pretrain", "finetune", "demo", "lightning"},
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted(path for package in ("ssast", "pretrain", "finetune") for path in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_imports_follow_the_layers(path):
    layer = layer_of(module_name(path))
    wrong = sorted(name for name in imports_of(path) if layer_of(name) not in ALLOWED[layer] | {None})
    assert not wrong, f"{path.relative_to(REPO)} ({layer}) imports {wrong}"


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The check itself: a core module importing Lightning or the training layer is caught."""
    source = tmp_path / "bad.py"
    source.write_text("import lightning as L\n\ndef f():\n    from ssast.train.module import EncoderModule\n")
    assert {layer_of(name) for name in imports_of(source)} == {"lightning", "train"}
    assert not {"lightning", "train"} <= ALLOWED["core"]
