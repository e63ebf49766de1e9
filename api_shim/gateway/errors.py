"""The gateway's errors; routes turn them into HTTP answers.

GatewayError
├── JobNotFound               404: no such job, or not one of the caller's
├── JobConflict               409: the job's state does not allow the operation
└── OrchestratorUnavailable   503 + Retry-After: Prefect cannot be reached, answers 5xx, or is
    │                         too slow
    ├── OutcomeUnknown        503 + Retry-After: Prefect took a request and did not answer; it
    │                         may have been carried out (the gateway settles this for new jobs)
    └── DeploymentMissing     503 + Retry-After: the job's deployment is not registered
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

    #: Seconds a client should wait before it asks again (the `Retry-After` header).
    retry_after: int = 5


class OutcomeUnknown(OrchestratorUnavailable):
    """The Prefect API took the request but did not answer in time."""


class DeploymentMissing(OrchestratorUnavailable):
    """The job's deployment is not registered; run the bootstrap (`make up`) first."""

    retry_after = 30
