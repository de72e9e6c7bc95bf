"""Domain errors the service modules raise; the API maps each to one HTTP status.

Infrastructure outages are mapped too (service.api.app): the database or Redis unreachable is
a 503 with a short, fixed message and a Retry-After header — never a 500 with a traceback, and
never the driver's message (it can carry SQL, parameters or a connection string).
"""


class ServiceError(Exception):
    status = 400


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class PayloadTooLarge(ServiceError):
    status = 413


class Unprocessable(ServiceError):
    status = 422


class Unavailable(ServiceError):
    """A dependency (database, job queue) cannot be reached; the client should retry."""
    status = 503
    retry_after_s = 5


DB_UNAVAILABLE = ("database unavailable: the request was not applied (its transaction rolled back); "
                  "retry later — labels carry client ids, so a retry never counts one twice")
DB_CONFLICT = ("the database aborted this request to resolve a conflict with a concurrent one (nothing of it was "
               "written): retry it")
QUEUE_UNAVAILABLE = "job queue (Redis) unavailable: retry later; rounds resume once it is back"
