"""Domain errors the service modules raise; the API maps each to one HTTP status."""


class ServiceError(Exception):
    status = 400


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Unprocessable(ServiceError):
    status = 422
