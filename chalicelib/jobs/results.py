"""Result objects in S3: keys, uploads and presigned GET URLs."""

from __future__ import annotations

import mimetypes
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.record import Job

DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
CONTENT_TYPES = {"mp3": "audio/mpeg", "mp4": "video/mp4", "wav": "audio/wav", "txt": "text/plain"}


def result_key(job_id: str, attempt: int, ext: str) -> str:
    """One key per attempt (``results/<job>/<attempt>.<ext>``), all under the job's prefix."""
    return f"results/{job_id}/{attempt}.{ext.lstrip('.')}"


def job_prefix(job_id: str) -> str:
    """Every object of a job starts with this: ``results/{id}.ext`` and the per-attempt
    ``results/{id}/...`` alike (job ids are UUIDs, so no id is a prefix of another)."""
    return f"results/{job_id}"


def content_type_for(ext: str) -> str:
    ext = ext.lstrip(".").lower()
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(f"x.{ext}")[0] or "application/octet-stream"


class ResultStore:
    """``s3`` does the I/O; ``signer`` (defaults to ``s3``) signs URLs, so that a
    public endpoint can differ from the internal one."""

    def __init__(self, s3: Any, bucket: str, expires: int = 604800, signer: Any = None):
        self._s3 = s3
        self._signer = signer or s3
        self.bucket = bucket
        self.expires = expires

    def upload_file(self, path: str, key: str, content_type: str) -> None:
        # upload_file streams in parts from disk; the file is never read whole.
        self._s3.upload_file(path, self.bucket, key, ExtraArgs={"ContentType": content_type})

    def presign(self, key: str) -> str:
        return self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expires
        )

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def delete_job(self, job_id: str) -> int:
        """Delete every object under ``job_prefix(job_id)``; returns how many. Raises
        ClientError when S3 refuses any of them, so the caller keeps the record and the
        removal can be retried."""
        keys = [obj["Key"]
                for page in self._s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=job_prefix(job_id))
                for obj in page.get("Contents", [])]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + DELETE_BATCH]]
            answer = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise ClientError({"Error": {"Code": first.get("Code", "DeleteFailed"),
                                             "Message": f"{first.get('Key')}: {first.get('Message', '')}"}},
                                  "DeleteObjects")
        return len(keys)


def result_fields(job: Job, results: ResultStore, links: ResultLinks | None = None,
                  base_url: str | None = None) -> dict[str, Any]:
    """A finished job's result: ``result_url`` (presigned now) and, where links are
    signed, the durable ``result_link`` for media; ``text`` for text jobs."""
    if not job.result_key:
        return {"text": job.result_text or ""}
    fields = {"result_url": results.presign(job.result_key)}
    link = links.link(job.id, base_url) if links is not None else None
    if link:
        fields["result_link"] = link
    return fields
