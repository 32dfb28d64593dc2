"""paper_notes: results.md collects every experiment, and every figure it links exists."""
from __future__ import annotations

import re
from pathlib import Path

from numeric.experiments import EXPERIMENTS

NOTES = Path(__file__).resolve().parent.parent / "paper_notes"


def test_results_md_has_every_experiment_and_its_figures():
    text = (NOTES / "results.md").read_text()
    for name in EXPERIMENTS:
        assert f"## {name}" in text, name
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert links and all((NOTES / link).is_file() for link in links)
    assert {link.split("/")[0] for link in links} == set(EXPERIMENTS)
