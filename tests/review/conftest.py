"""Hypothesis keeps its constants cache inside pytest's cache folder (git ignores it), not in the tree."""

from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis")
