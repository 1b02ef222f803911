"""The HTTPS API under sanic: app factory, blueprints, auth, metrics, and
the serialized writer. Started by :mod:`portunus.serve`."""

from portunus.server.app import create_app
from portunus.server.store import ServerStore

__all__ = ["ServerStore", "create_app"]
