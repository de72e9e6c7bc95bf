"""The durable state: ORM models (models.py), sessions (db.py), migrations."""
from service.store.models import *  # noqa: F401,F403 — `from service.store import Item` reads best
from service.store.models import (ITEM_SPLITS, JOB_WAITING, MAX_ID, WORKING_STATES, Base, ItemStatus, JobState,  # noqa: F401
                                  RoundState, utcnow)
