"""The docs are complete and consistent: every guide is on a reading path that runs
(``test_guides_*.py``, marked slow), every block is of a kind those runs handle, every link
between guides resolves."""

from __future__ import annotations

import re

from guides import LANGUAGES, READING_PATHS, REPO, read_blocks

GUIDES = sorted({doc for path in READING_PATHS.values() for doc in path})


def test_every_guide_is_on_a_reading_path_and_every_block_is_handled():
    guides = {str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md")} | {"README.md"}
    assert guides <= set(GUIDES), f"add {sorted(guides - set(GUIDES))} to a path of READING_PATHS"
    for doc in GUIDES:
        for block in read_blocks(doc):
            assert block.language in LANGUAGES, f"{block}: a ```{block.language} block (use one of {LANGUAGES})"
            kind = (block.directive or "").split(" ")[0]
            assert kind in {"", "file", "ci", "network"}, f"{block}: unknown directive {block.directive!r}"
            if block.language in {"text", "csv"}:
                assert kind == "file" or block.language == "text", f"{block}: a csv block must be written to a file"


def test_every_reading_path_has_a_test_file_that_runs_it():
    for name in READING_PATHS:
        test_file = REPO / "tests" / f"test_guides_{name}.py"
        assert test_file.exists() and f'reading_path_tests("{name}")' in test_file.read_text(), test_file


def test_links_between_guides_resolve():
    for doc in GUIDES:
        text = (REPO / doc).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            resolved = ((REPO / doc).parent / target).resolve()
            if target.startswith(("http://", "https://", "mailto:")) or not resolved.is_relative_to(REPO):
                continue  # the web, and ../shared/DESIGN.md, which lives beside a checkout, not in it
            assert resolved.exists(), f"{doc} links to {target}, which does not exist"
