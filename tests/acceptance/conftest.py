"""Acceptance tests borrow the integration tier's session services.

Re-exported fixtures are definitions of their own: a session that runs both tiers starts a
second stack here (~15-45 s). Moving `stack`, `inventory` and `target` into tests/conftest.py
would share one.
"""

from __future__ import annotations

from tests.integration.conftest import failover, inventory, stack, target

__all__ = ["failover", "inventory", "stack", "target"]
