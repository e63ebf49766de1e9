"""The gateway's errors; routes turn them into HTTP answers.

GatewayError
├── JobNotFound               404: no such job, or not one of the caller's
├── JobConflict               409: the job's state does not allow the operation
└── OrchestratorUnavailable   503: Prefect cannot be reached, answers 5xx, or is too slow
    └── DeploymentMissing     503: the job's deployment is not registered
"""

from __future__ import annotations


class GatewayError(Exception):
    """Prefect could not do what was asked."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())
        self.message = str(self)


class JobNotFound(GatewayError):
    """No job with that id."""


class JobConflict(GatewayError):
    """The job's state does not allow this operation."""


class OrchestratorUnavailable(GatewayError):
    """The Prefect API cannot be reached; is the stack up (`make up`)?"""


class DeploymentMissing(OrchestratorUnavailable):
    """The job's deployment is not registered; run the bootstrap (`make up`) first."""
