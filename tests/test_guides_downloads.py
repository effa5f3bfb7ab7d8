"""The guides, in the order of a reader who starts with the README, then the guides on downloaded datasets
(``READING_PATHS["downloads"]`` in ``tests/guides.py``, which says what runs and how)."""

from guides import reading_path_tests

machine, test_guide_runs = reading_path_tests("downloads")
