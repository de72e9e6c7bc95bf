"""The durable state: ORM models (models.py), sessions (db.py), migrations."""
from service.store.models import *  # noqa: F401,F403 — `from service.store import Item` reads best
from service.store.models import (ACTIVE_ROUND_STATES, ITEM_SPLITS, ITEM_STATUSES, JOB_STATES,  # noqa: F401
                                  ROUND_STATES, Base, utcnow)
