"""The Label Studio bridge: experts label each round's batch in a real Label Studio.

Modules, one job each:
  config    the labeling interface (image, heatmap, classes, "wrong region" flag) and predictions
  client    LabelStudioBridge: create/attach a project, register the webhook, import a batch in order
  events    Label Studio annotation JSON → typed events (the one parser webhook and poll share)
  webhook   shared-secret check and webhook payload parsing
  poll      reconciliation: a full snapshot of the project → the same events, deletions included
  apply     idempotent application of events to a LabelSink (keyed by annotation id)
  resolve   several annotators → majority label, ties/disagreements flagged for review
  agreement per-class percent agreement and kappas (Community has no agreement statistics)
  guess     how each task shows the model's guess (pre-selected, shown, hidden), anchoring per expert
  second_opinion  suspicious labels asked again of another expert, blind; ties; expert quality
  routes    FastAPI routers: the webhook receiver and the signed media files

The orchestration calls: LabelStudioBridge.ensure_project / ensure_webhook / import_batch(BatchItem...)
when a round's batch is ready, routes.handle_webhook (or webhook_router) for the webhook,
and poll.reconcile periodically; see docs/labelstudio.md.
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
