"""The guides, in the order of a reader who starts at the quickstart and goes on with the demo corpus
(``READING_PATHS["demo"]`` in ``tests/guides.py``, which says what runs and how)."""

from guides import reading_path_tests

machine, test_guide_runs = reading_path_tests("demo")
