"""The dashboard's pages, one router per part of the site, in the order they are mounted."""

from __future__ import annotations

from fastapi import APIRouter

from copml.ui.routes import events, incidents, login, models, overview, predictions, reviews

ROUTERS: tuple[APIRouter, ...] = (
    login.router,
    overview.router,
    models.router,
    predictions.router,
    reviews.router,
    incidents.router,
    events.router,
)
