"""The whole URL map on one screen."""

from __future__ import annotations

from aiohttp import web

from gateway.api import catalog, docs, jobs, sessions


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/sessions", sessions.create_session)
    r.add_delete("/sessions", sessions.delete_session)

    r.add_post("/jobs", jobs.create_job)
    r.add_get("/jobs", jobs.list_jobs)
    r.add_get(r"/jobs/{id:\d{1,19}}", jobs.get_job)
    r.add_post(r"/jobs/{id:\d{1,19}}/submit", jobs.submit_job)
    r.add_post(r"/jobs/{id:\d{1,19}}/finish", jobs.finish_job)

    r.add_get("/deadlines", catalog.list_deadlines)
    r.add_get("/specifications", catalog.list_specifications)
    r.add_get("/config/statuses", catalog.list_statuses)

    r.add_get("/health", docs.health)
    r.add_get("/openapi.json", docs.openapi_json)
    r.add_get("/docs", docs.docs_page)
