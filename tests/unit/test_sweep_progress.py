"""The sweep's progress bar reads the newest row of a run's rounds.json, never its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.text import Text

from fedapp.sweep.progress import describe, latest_round, round_progress, rounds_file


def row(rnd: int, acc: float = 0.5, loss: float = 1.0) -> dict[str, float]:
    return {"round": rnd, "server-accuracy": acc, "server-loss": loss}


def test_rounds_file_is_the_serverapps_path(tmp_path: Path) -> None:
    assert rounds_file(tmp_path, 17) == tmp_path / "run-17" / "rounds.json"
    assert rounds_file(str(tmp_path), 17) == tmp_path / "run-17" / "rounds.json"


def test_missing_file_gives_none(tmp_path: Path) -> None:
    assert latest_round(tmp_path / "run-1" / "rounds.json") is None


def test_newest_row_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    path.write_text(json.dumps([row(0, 0.1), row(1, 0.6), row(2, 0.8, 0.4)]))
    assert latest_round(path) == row(2, 0.8, 0.4)


def test_round_zero_alone_is_the_initial_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    path.write_text(json.dumps([row(0, 0.1)]))
    assert latest_round(path) == row(0, 0.1)


def test_newest_means_highest_round_not_last_in_the_list(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    path.write_text(json.dumps([row(0), row(3, 0.9), row(2)]))
    assert latest_round(path) == row(3, 0.9)


def test_partially_written_file_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    full = json.dumps([row(0), row(1), row(2)], indent=2)
    for cut in (0, 1, len(full) // 2, len(full) - 1):
        path.write_text(full[:cut])
        assert latest_round(path) is None, cut


@pytest.mark.parametrize("content", ["{}", "null", "[]", '"text"', "[1, 2]", b"\xff\xfe[",
                                     '[{"server-accuracy": 0.5}]', '[{"round": true}]',
                                     '[{"round": -1}]', '[{"round": 1.5}]', '[{"round": "2"}]'])
def test_no_valid_row_gives_none(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "rounds.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert latest_round(path) is None


def test_invalid_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    path.write_text(json.dumps([row(0), row(1, 0.7), {"round": "junk"}, "x"]))
    assert latest_round(path) == row(1, 0.7)


def test_a_directory_in_place_of_the_file_gives_none(tmp_path: Path) -> None:
    (tmp_path / "rounds.json").mkdir()
    assert latest_round(tmp_path / "rounds.json") is None


def test_describe_shows_what_the_row_has() -> None:
    assert describe(row(3, 0.94171, 0.18159)) == "acc 0.9417 loss 0.1816"
    assert describe({"round": 3, "server-accuracy": 1}) == "acc 1.0000"
    assert describe({"round": 3}) == ""


def test_on_poll_shows_the_status_then_the_rounds_as_the_file_appears(tmp_path: Path) -> None:
    path = rounds_file(tmp_path, 5)
    progress, on_poll = round_progress("job 1/2", 3, path)
    (task,) = progress.tasks
    on_poll("running")  # no file yet: status only
    assert (task.completed, task.fields["metrics"]) == (0, "")
    assert Text.from_markup(task.description).plain == "job 1/2 [running]"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([row(0, 0.1), row(1, 0.5, 0.9)]))
    on_poll("running")
    assert (task.completed, task.fields["metrics"]) == (1, "acc 0.5000 loss 0.9000")
    path.write_text('[{"round": 0, "server-accuracy"')  # a torn write keeps the last state
    on_poll("finished:completed")
    assert task.completed == 1
    assert Text.from_markup(task.description).plain == "job 1/2 [finished:completed]"
