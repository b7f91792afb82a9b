"""The prediction server's routes (``copml.serve.routes``): split into modules over a
typed state, they publish the same API as the one function they came from."""

from __future__ import annotations

from typing import Any

from copml.project import Project, load_project
from copml.serve.requests import JsonRoute
from projects import freeze

# Computed from ``app.openapi()`` of the server before its routes were split (issue 13.6):
# path, method, operation id and documented status codes, in the published order.
_TABLE_API = [
    ("/healthz", "get", "healthz_healthz_get", ("200",)),
    ("/readyz", "get", "readyz_readyz_get", ("200", "503")),
    ("/metrics", "get", "prometheus_metrics_get", ("200",)),
    (
        "/v1/predict",
        "post",
        "predict_v1_predict_post",
        ("200", "401", "403", "408", "409", "413", "422", "429", "503"),
    ),
    (
        "/v1/feedback",
        "post",
        "post_feedback_v1_feedback_post",
        ("200", "401", "403", "404", "408", "413", "422", "429", "503"),
    ),
    (
        "/v1/predictions/{prediction_id}",
        "get",
        "prediction_v1_predictions__prediction_id__get",
        ("200", "401", "403", "404", "422", "429"),
    ),
    (
        "/v1/predictions/{prediction_id}/explanation",
        "get",
        "explanation_v1_predictions__prediction_id__explanation_get",
        ("200", "401", "403", "404", "422", "429"),
    ),
    (
        "/v1/reviews",
        "get",
        "open_reviews_v1_reviews_get",
        ("200", "401", "403", "422", "429"),
    ),
    (
        "/v1/reviews/{prediction_id}",
        "post",
        "resolve_review_v1_reviews__prediction_id__post",
        ("200", "401", "403", "404", "408", "413", "422", "429", "503"),
    ),
    (
        "/v1/admin/reload",
        "post",
        "reload_v1_admin_reload_post",
        ("200", "401", "403", "429"),
    ),
    ("/v1/models", "get", "models_v1_models_get", ("200", "401", "403", "429")),
    (
        "/v1/models/history",
        "get",
        "history_v1_models_history_get",
        ("200", "401", "403", "422", "429"),
    ),
    (
        "/v1/admin/halt",
        "post",
        "halt_v1_admin_halt_post",
        ("200", "401", "403", "409", "422", "429"),
    ),
    (
        "/v1/admin/resume",
        "post",
        "resume_v1_admin_resume_post",
        ("200", "401", "403", "409", "422", "429"),
    ),
    # Serious incidents (issue 17.3).
    (
        "/v1/incidents",
        "get",
        "list_incidents_v1_incidents_get",
        ("200", "401", "403", "422", "429"),
    ),
    (
        "/v1/incidents",
        "post",
        "open_incident_v1_incidents_post",
        ("201", "401", "403", "408", "413", "422", "429", "503"),
    ),
    (
        "/v1/incidents/{incident_id}/update",
        "post",
        "update_incident_v1_incidents__incident_id__update_post",
        ("200", "401", "403", "404", "408", "409", "413", "422", "429", "503"),
    ),
    (
        "/v1/incidents/{incident_id}/report",
        "post",
        "report_incident_v1_incidents__incident_id__report_post",
        ("200", "401", "403", "404", "408", "409", "413", "422", "429", "503"),
    ),
    (
        "/v1/incidents/{incident_id}/close",
        "post",
        "close_incident_v1_incidents__incident_id__close_post",
        ("200", "401", "403", "404", "408", "409", "413", "422", "429", "503"),
    ),
]


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [
        (path, method, op["operationId"], tuple(sorted(op["responses"])))
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def test_the_split_server_publishes_the_same_api(fresh_churn: Project) -> None:
    """Same paths, methods, operation ids and status codes, in the same order; every
    route is the app's own (a ``JsonRoute``: a key given twice is refused), not a branch
    of an included router that each request would walk into."""
    from copml.serve.app import create_app

    project = fresh_churn
    freeze(project)
    app = create_app(load_project(project.root), poll_seconds=0, heartbeat_seconds=0)
    assert _operations(app.openapi()) == _TABLE_API
    mine = {
        (route.path, method)
        for route in app.router.routes
        if isinstance(route, JsonRoute)
        for method in route.methods
    }
    assert mine == {(path, method.upper()) for path, method, _, _ in _TABLE_API}
