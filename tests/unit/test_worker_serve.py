"""The arguments of the one worker process (deployments/worker/serve.py), and what the stack
passes it (deployments/system/stack.py). The process itself is tested against a real Prefect in
tests/integration/test_forkserver.py, and every other integration test runs on it."""

from __future__ import annotations

import pytest

from deployments.control.queues import QUEUES
from deployments.worker.serve import PoolWorker, argv_of, parse_args


def test_the_stack_arguments_give_back_each_pool_with_its_limit_and_name() -> None:
    workers = [PoolWorker(q.name, q.concurrency, f"{q.name}@host") for q in QUEUES]
    assert parse_args(argv_of(workers)) == workers
    assert {w.pool: w.limit for w in workers} == {"backup": 2, "scan": 5, "update": 1}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--pool", "scan", "--limit", "5", "--name", "a", "--pool", "update"], "its own --limit"),
        (
            "--pool scan --limit 5 --name a --pool scan --limit 5 --name b".split(),
            "each --pool once",
        ),
        (["--pool", "scan", "--limit", "0", "--name", "a"], "at least 1"),
        (["--pool", "scan", "--limit", "five", "--name", "a"], "invalid int value"),
        ([], "required: --pool"),
    ],
)
def test_bad_arguments_are_refused_naming_what_is_wrong(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
