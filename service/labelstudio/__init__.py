"""The Label Studio bridge: experts label each round's batch in a real Label Studio.

It is one plug-in (plugin.LabelStudioPlugin: its settings, the URL signer, the client), which the
app factory installs; camloop's core and rounds call it only through service.plugins.

Modules, one job each:
  plugin       LabelStudioPlugin: the hooks, connect/push/withdraw/webhook/poll/sync/review/announce,
               its routes and the background poller
  api          the engineer's routes under /api/v1: review and sync
  routes       the routes Label Studio and the expert's browser call: the webhook, signed media, heatmaps
  config       the labeling interface (image, heatmap, classes, "wrong region" flag) and predictions
  client       LabelStudioBridge: create/attach a project, register the webhook, import a batch in order
  events       Label Studio annotation JSON → typed events (the one parser webhook and poll share)
  webhook      the per-project secrets and their check, webhook payload parsing
  poll         reconciliation: a full snapshot of the project → the same events, deletions included
  apply        idempotent application of events to a LabelSink (keyed by annotation id)
  ledger       the bridge's own tables: every annotation seen, the project links (SqlSink)
  store_apply  the ledger's resolutions into camloop's items and labels
  resolve      several annotators → majority label, ties/disagreements flagged for review
  agreement    per-class percent agreement and kappas (Community has no agreement statistics)
  wrong_region the experts' "looked at the wrong region" votes, per guessed class
  announce     the note in the project's instructions between batches
"""
from service.labelstudio.apply import ApplyResult, LabelSink, MemorySink, apply_events
from service.labelstudio.client import BatchItem, LabelStudioBridge, LabelStudioError
from service.labelstudio.events import AnnotationDeleted, AnnotationError, AnnotationUpserted, Event
from service.labelstudio.poll import reconcile
from service.labelstudio.resolve import Resolution, resolve_all, resolve_item
from service.labelstudio.webhook import SECRET_HEADER, WebhookError

__all__ = [
    "AnnotationDeleted", "AnnotationError", "AnnotationUpserted", "ApplyResult", "BatchItem", "Event",
    "LabelSink", "LabelStudioBridge", "LabelStudioError", "MemorySink", "Resolution", "SECRET_HEADER",
    "WebhookError", "apply_events", "reconcile", "resolve_all", "resolve_item",
]
