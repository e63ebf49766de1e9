"""Progress updates closer than MIN_INTERVAL are merged into the latest; 100 % goes at once."""

from __future__ import annotations

import time

import pytest

from tasks import progress as progress_module
from tasks.progress import DONE, Progress


class Recorded(Progress):
    """Progress whose sends are recorded instead of going to Prefect's server."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str]] = []

    def _record(self, percent: float, message: str) -> None:
        self.sent.append((percent, message))


@pytest.fixture(autouse=True)
def short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.2)


def test_quick_milestones_are_merged_into_the_latest_one_sent_after_the_interval() -> None:
    progress = Recorded()
    progress.milestone(10, "started")
    progress.milestone(20, "record created")
    progress.milestone(30, "server verified")
    assert progress.sent == []
    assert progress.percent == 30
    time.sleep(0.4)
    assert progress.sent == [(30, "server verified")]


def test_an_update_after_the_interval_is_sent_at_once() -> None:
    progress = Recorded()
    time.sleep(0.25)
    progress.milestone(40, "transfer started")
    assert progress.sent == [(40, "transfer started")]


def test_done_is_sent_at_once_and_drops_what_was_held() -> None:
    progress = Recorded()
    progress.milestone(90, "results stored")
    progress.milestone(DONE, "done")
    assert progress.sent == [(DONE, "done")]
    time.sleep(0.4)
    assert progress.sent == [(DONE, "done")]


def test_between_moves_only_forward_within_its_range() -> None:
    progress = Recorded()
    time.sleep(0.25)
    progress.between(40, 80, 1, 2, "half")
    progress.between(40, 80, 1, 4, "quarter")  # behind: ignored
    assert progress.sent == [(60, "half")]
    assert progress.percent == 60
