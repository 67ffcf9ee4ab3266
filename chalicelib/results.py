"""Result objects in S3: keys, uploads and presigned GET URLs."""

from __future__ import annotations

import mimetypes
from typing import Any

CONTENT_TYPES = {"mp3": "audio/mpeg", "mp4": "video/mp4", "wav": "audio/wav", "txt": "text/plain"}


def result_key(job_id: str, attempt: int, ext: str) -> str:
    """One key per attempt (``results/<job>/<attempt>.<ext>``), all under the job's prefix."""
    return f"results/{job_id}/{attempt}.{ext.lstrip('.')}"


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
