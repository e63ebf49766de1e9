"""The retry policy every SSH-touching task shares: 3 retries after 5, 10 and 20 s."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from tasks.core.errors import is_retryable

RETRIES = 3
BACKOFF_FACTOR = 5.0
#: The most tries a task of a job gets: the first and its retries (the API's `maxAttempts`).
MAX_ATTEMPTS = 1 + RETRIES


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry unless the task failed with a `PermanentError`."""
    return is_retryable(state.result(raise_on_failure=False))


#: Keyword arguments for `@task` on tasks that talk to a server.
RETRY_POLICY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR),
    "retry_condition_fn": retry_transient,
}
