"""The whole URL map on one screen."""

from __future__ import annotations

from aiohttp import web

from gateway.api import catalog, docs, downloads, jobs, sessions, uploads


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/sessions", sessions.create_session)
    r.add_delete("/sessions", sessions.delete_session)

    r.add_post("/jobs", jobs.create_job)
    r.add_get("/jobs", jobs.list_jobs)
    r.add_get(r"/jobs/{id:[0-9]{1,19}}", jobs.get_job)
    r.add_post(r"/jobs/{id:[0-9]{1,19}}/submit", jobs.submit_job)
    r.add_post(r"/jobs/{id:[0-9]{1,19}}/finish", jobs.finish_job)
    r.add_get(r"/jobs/{id:[0-9]{1,19}}/files", downloads.list_files)
    r.add_post(r"/jobs/{id:[0-9]{1,19}}/clipped", uploads.upload_clipped)

    # the storage URLs handed out in job bodies (the spec's .ashx shapes)
    r.add_post("/upload/UploadFile.ashx", uploads.upload_original)
    r.add_route("OPTIONS", "/upload/UploadFile.ashx", uploads.upload_preflight)
    r.add_get("/ajax/DownloadZip.ashx", downloads.download_zip)
    r.add_get("/ajax/DownloadBin.ashx", downloads.download_file)

    r.add_get("/deadlines", catalog.list_deadlines)
    r.add_get("/specifications", catalog.list_specifications)
    r.add_get("/config/statuses", catalog.list_statuses)

    r.add_get("/health", docs.health)
    r.add_get("/openapi.json", docs.openapi_json)
    r.add_get("/docs", docs.docs_page)
