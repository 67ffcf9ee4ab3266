"""OpenAPI 3.1 document generated from the pydantic request models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from .models import REQUEST_MODELS, StatusUpdate

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing or wrong API key", 404: "Unknown job",
            409: "Conflict with the job's state", 413: "Body too large",
            415: "Content-Type is not application/json", 422: "Invalid fields",
            503: "Job could not be queued"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    models = [(m, "validation") for m in (*REQUEST_MODELS.values(), StatusUpdate)]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR
    schemas["Submitted"] = {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"const": "queued"}},
    }
    schemas["JobStatus"] = {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "running", "success", "failed", "cancelled", "timed_out"]},
            "error": {"type": "string"},
            "type": {"type": "string"},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "complete_by": {"type": "string", "format": "date-time"},
            "max_time": {"type": "integer"},
        },
    }
    schemas["Result"] = {
        "oneOf": [
            {"type": "object", "properties": {"result_url": {"type": "string"}}},
            {"type": "object", "properties": {"text": {"type": "string"}}},
        ]
    }
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "Health", "responses": {"200": {"description": "Service is up"}}}}
    }
    for job_type, model in REQUEST_MODELS.items():
        paths[f"/{job_type.value}"] = {
            "post": {
                "summary": f"Submit a {job_type.value} job",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "maxLength": 255}}
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model.__name__)}}},
                "responses": {"200": _json(_ref("Submitted"), "Job queued"),
                              **_errors(400, 401, 409, 413, 415, 422, 503)},
            }
        }
    paths["/status/{id}"] = {"get": {"summary": "Job status", "parameters": [job_id],
                                     "responses": {"200": _json(_ref("JobStatus"), "Job status"),
                                                   **_errors(400, 401, 404)}}}
    paths["/job/{id}"] = {"post": {
        "summary": "Mark a job timed_out, cancelled or failed", "parameters": [job_id],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("StatusUpdate")}}},
        "responses": {"200": _json({"type": "object", "properties": {"message": {"type": "string"}}}, "Updated"),
                      **_errors(400, 401, 404, 409, 413, 415, 422)}}}
    paths["/result/{id}"] = {"get": {"summary": "Job result", "parameters": [job_id],
                                     "responses": {"200": _json(_ref("Result"), "Result"),
                                                   **_errors(400, 401, 404, 409)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "c3-render", "version": "1.0.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "renderKey": {"type": "apiKey", "in": "header", "name": "X-C3-RENDER-KEY"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"renderKey": []}, {"bearer": []}],
        "paths": paths,
    }
