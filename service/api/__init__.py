"""The query server: `create_app(settings)`. Routes are thin; logic lives in service modules."""
from service.api.app import create_app

__all__ = ["create_app"]
