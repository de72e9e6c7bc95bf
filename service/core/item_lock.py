"""Locking items before writing their label or status (issue 19, item 11).

Every writer of an item's label or status (a label from any client, a Label Studio resolution
or retraction, the round queueing a batch, withdrawing a reserve, closing a batch) first locks
the rows it will write with `lock_items`, then decides from what the rows hold *now*, and
writes in the same transaction. A decision made from an earlier read (the round's selection
reads the unlabeled pool seconds before it queues the batch) is checked again under the lock.

PostgreSQL: SELECT … FOR NO KEY UPDATE in item id order — every writer takes its locks in one
order, so two writers of overlapping items wait for each other instead of deadlocking (NO KEY:
the lock an UPDATE of the row takes; inserting a label that references the item, whose foreign
key check takes KEY SHARE, is not held up by it). Under READ
COMMITTED each later statement of the transaction sees every commit made before the lock was
granted. SQLite has no row locks and serialises writers: the writers that decide from what they
read (the round after its CAS, the bridge after writing its ledger) have written in the
transaction already, so they hold the database's write lock and read the latest commit; a
label's own write (labeled, with this label) needs no earlier read to be right.
"""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store import Item

_CHUNK = 2000  # ids per IN (...): well under SQLite's bound-parameter limit


def lock_items(s: Session, ids: Iterable[int]) -> dict[int, Item]:
    """The items with these ids, locked until the transaction ends, read again (the session's
    copies refreshed): {id: Item}. Ids not found are left out."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return {}
    out: dict[int, Item] = {}
    for k in range(0, len(ids), _CHUNK):
        chunk = ids[k:k + _CHUNK]
        out.update((it.id, it) for it in s.scalars(
            select(Item).where(Item.id.in_(chunk)).order_by(Item.id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)))
    return out
