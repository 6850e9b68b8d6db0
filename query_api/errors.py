"""Errors of the query_api package.

    QueryApiError              base; carries a one-line human reason, an HTTP status and a
    │                          problem type (RFC 9457)
    ├── BadRequest             400  a parameter or body the service cannot use
    │   └── CypherRefused      400  a graph statement that writes or reaches outside
    ├── Unauthorized           401  no bearer token, or one we do not know
    ├── Forbidden              403  a known token without the scope the route needs
    ├── NotFound               404  no such job, report or resource
    ├── NotAcceptable          406  an Accept header we cannot answer
    ├── Conflict               409  the resource is not in a state to answer (job running)
    ├── PayloadTooLarge        413  a request body over the limit
    ├── QueryTimeLimit         422  a query that ran past its time limit (narrow it)
    ├── ResultTooLarge         422  one row of the answer is over the answer's byte limit
    ├── TooManyRequests        429  replica busy (replays already running)
    └── ServiceUnavailable     503  the lake (or a dependency) cannot be reached
        ├── Overloaded         503  every slot and queue place of this replica is taken
        │                           (Retry-After says when to try again)
        └── AnalysisRunning    503  the window of the transaction asked for is being
                                    analysed and was not done within the time bound

Errors of ``lake`` and ``compute`` are mapped to statuses in ``problems.py`` (the one
place that turns errors into HTTP answers).
"""

from __future__ import annotations

from typing import ClassVar


class QueryApiError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""

    status: ClassVar[int] = 500
    problem: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class BadRequest(QueryApiError):
    status, problem, title = 400, "bad-request", "Bad request"


class CypherRefused(BadRequest):
    problem, title = "cypher-refused", "Cypher statement refused"


class Unauthorized(QueryApiError):
    status, problem, title = 401, "unauthorized", "Authentication required"


class Forbidden(QueryApiError):
    status, problem, title = 403, "insufficient-scope", "Insufficient scope"


class NotFound(QueryApiError):
    status, problem, title = 404, "not-found", "Not found"


class NotAcceptable(QueryApiError):
    status, problem, title = 406, "not-acceptable", "Not acceptable"


class Conflict(QueryApiError):
    status, problem, title = 409, "conflict", "Not ready"


class PayloadTooLarge(QueryApiError):
    status, problem, title = 413, "payload-too-large", "Request too large"


class QueryTimeLimit(QueryApiError):
    status, problem, title = 422, "query-time-limit", "Query time limit exceeded"


class ResultTooLarge(QueryApiError):
    status, problem, title = 422, "result-too-large", "Answer too large"


class TooManyRequests(QueryApiError):
    status, problem, title = 429, "too-many-requests", "Too many requests"


class ServiceUnavailable(QueryApiError):
    status, problem, title = 503, "service-unavailable", "Service unavailable"


class Overloaded(ServiceUnavailable):
    problem, title = "overloaded", "Replica overloaded"


class AnalysisRunning(ServiceUnavailable):
    problem, title = "analysis-running", "Analysis running"
