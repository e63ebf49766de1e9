"""Acceptance tests use the integration tier's session services (one stack per session)."""

from __future__ import annotations

from tests.integration.conftest import inventory, stack, target

__all__ = ["inventory", "stack", "target"]
