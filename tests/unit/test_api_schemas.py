"""The API's request schemas take their names from the queue table, and OpenAPI lists them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from api_shim.schemas import PauseRequest, PriorityName, PriorityValue, QueueName
from deployments.control.queues import QUEUES, Priority


def _enum(schema: dict[str, Any]) -> list[Any]:
    return schema["enum"]  # type: ignore[no-any-return]


def test_priority_names_are_the_work_queues_of_the_table() -> None:
    assert _enum(TypeAdapter(PriorityName).json_schema()) == [p.queue_name for p in Priority]


def test_queue_names_are_the_pools_of_the_table() -> None:
    assert _enum(TypeAdapter(QueueName).json_schema()) == [q.name for q in QUEUES]
    queue = PauseRequest.model_json_schema()["properties"]["queue"]
    assert [q.name for q in QUEUES] in [part.get("enum") for part in queue["anyOf"]]


def test_a_priority_is_a_name_or_number_of_the_table() -> None:
    adapter = TypeAdapter(PriorityValue)
    assert adapter.validate_python(min(Priority)) == 1
    assert adapter.validate_python("low") == "low"


@pytest.mark.parametrize("bad", [min(Priority) - 1, max(Priority) + 1, "urgent"])
def test_a_priority_outside_the_table_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(PriorityValue).validate_python(bad)
