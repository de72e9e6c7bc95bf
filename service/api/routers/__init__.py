"""/api/v1, a router per resource. Each route: authenticate, open a transaction, call one
service function, shape the answer with its response model."""
from fastapi import APIRouter

from service.api.routers import export, freeze, items, labels, metrics, models, page, predict, projects, queue, rounds

router = APIRouter()
for module in (projects, items, rounds, queue, metrics, labels, freeze, models, export, predict, page):
    router.include_router(module.router)
