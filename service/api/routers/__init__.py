"""/api/v1, a router per resource. Each route: authenticate, open a transaction, call one
service function, shape the answer with its response model."""
from fastapi import APIRouter

from service.api.routers import export, freeze, items, labels, metrics, models, projects, queue, rounds

router = APIRouter()
for module in (projects, items, rounds, queue, metrics, labels, freeze, models, export):
    router.include_router(module.router)
