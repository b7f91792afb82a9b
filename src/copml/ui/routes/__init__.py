"""The dashboard's pages, one router per part of the site, in the order they are mounted."""

from __future__ import annotations

from fastapi import APIRouter

from copml.ui.routes import (
    events,
    history,
    incidents,
    login,
    models,
    oversight,
    overview,
    predictions,
    reviews,
)

ROUTERS: tuple[APIRouter, ...] = (
    login.router,
    overview.router,
    models.router,
    history.router,
    oversight.router,
    predictions.router,
    reviews.router,
    incidents.router,
    events.router,
)
