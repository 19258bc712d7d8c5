"""robustness_doc: the report says whether its grid is the issue's whole grid."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_doc

WHOLE = {"nodes": [10, 20, 40], "alphas": [0.1, 0.3, 1.0], "fractions": [0.1, 0.2, 0.3],
         "seeds": [0, 1, 2]}


def test_the_whole_grid_is_called_so_and_anything_less_a_subset() -> None:
    assert robustness_doc._coverage(WHOLE) == "this is all of it"
    assert robustness_doc._coverage({**WHOLE, "seeds": [0, 1, 2, 3]}) == "this is all of it"
    for key, fewer in (("fractions", [0.2, 0.3]), ("nodes", [10, 20]), ("alphas", [0.1, 1.0]),
                       ("seeds", [0, 1])):
        assert robustness_doc._coverage({**WHOLE, key: fewer}) == "this is the subset that ran"
