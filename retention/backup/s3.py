"""S3-compatible target (boto3): AWS, MinIO, SeaweedFS, Ceph RGW, ...

Uploads send ``Content-MD5`` and (single PUTs) ``x-amz-checksum-sha256`` of the bytes, so a
server that checks them refuses bytes damaged in transit; single PUTs also carry the SHA-256
as user metadata (``x-amz-meta-sha256``). Files up to ``part_size`` go in one PUT, larger ones
as a multipart upload (parts of ``part_size``, each with its Content-MD5), aborted rather than
completed when anything fails.

Object Lock (AWS "Using S3 Object Lock"): when the bucket has Object Lock enabled
(``GetObjectLockConfiguration``) and the target has ``lock_days`` > 0, every object is written
with that retention mode and a retain-until date ``lock_days`` ahead; with ``lock_days`` = 0
the bucket's default retention, if any, applies. A locked object version cannot be deleted or
overwritten before the date, not even with the target's own credentials (COMPLIANCE mode):
a compromised appliance cannot destroy its backups. Crypto-shredding still works on them: the
data keys are destroyed in the catalog, not in the copies.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from retention.backup.plan import Throttle
from retention.backup.remote import (
    HashingSink,
    LocalSource,
    ObjectMissing,
    RemoteError,
    RemoteOptions,
    join_key,
)
from retention.backup.secrets import read_secret
from retention.backup.targets import S3Settings

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_NO_LOCK_CODES = {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound",
                  "NotImplemented", "InvalidRequest", "MethodNotAllowed", "AccessDenied"}


# HEAD requests (head_bucket) carry no error body: only the status says what went wrong
_CREDENTIALS_HINT = " (check the access key id and the secret the target refers to, and the bucket's policy)"
_HINTS = {"403": _CREDENTIALS_HINT, "AccessDenied": _CREDENTIALS_HINT, "SignatureDoesNotMatch": _CREDENTIALS_HINT,
          "InvalidAccessKeyId": _CREDENTIALS_HINT, "404": " (no such bucket)", "NoSuchBucket": " (no such bucket)"}


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _content_md5(data: bytes) -> bytes:
    """The Content-MD5 header (RFC 1864) S3 checks bodies against: a transfer checksum, not security
    (integrity is the SHA-256 checksum and metadata sent alongside)."""
    return hashlib.md5(data, usedforsecurity=False).digest()


class S3Remote:
    """An opened S3 target (bucket reachable, Object Lock state known)."""

    def __init__(self, name: str, settings: S3Settings, options: RemoteOptions,
                 environ: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.where = settings.describe()
        self.part_size = max(5 << 20, options.part_size)   # S3's minimum part size is 5 MiB
        self._clock: Callable[[], float] = options.clock or time.time
        secret = read_secret(settings.secret, "secret", environ).decode() if settings.secret else None
        config = Config(s3={"addressing_style": settings.addressing},
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=options.timeout_s, read_timeout=options.timeout_s,
                        # checksums are sent explicitly below; no aws-chunked trailers, which
                        # not every S3-compatible server understands
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region,
            aws_access_key_id=settings.access_key_id, aws_secret_access_key=secret,
            verify=settings.ca_bundle or True, config=config)
        self._call("reach the bucket", "", lambda: self.client.head_bucket(Bucket=settings.bucket))
        self.lock_enabled = self._lock_enabled()
        if not self.lock_enabled:
            self.object_lock = "none (the bucket has no Object Lock)"
        elif settings.lock_days:
            self.object_lock = f"{settings.lock_mode} {settings.lock_days} days"
        else:
            self.object_lock = "the bucket's default retention"

    def _call(self, what: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ClientError as err:
            code = _code(err)
            if code in _MISSING_CODES and key:
                raise ObjectMissing(f"s3 target {self.name}: {key}: no such object") from None
            message = err.response.get("Error", {}).get("Message", "") or str(err)
            hint = _HINTS.get(code, "")
            raise RemoteError(f"s3 target {self.name} ({self.where}): cannot {what}"
                              f"{' ' + key if key else ''}: {code} {message}{hint}".rstrip()) from None
        except BotoCoreError as err:
            raise RemoteError(f"s3 target {self.name} ({self.where}): cannot {what}"
                              f"{' ' + key if key else ''}: {err}") from None

    def _lock_enabled(self) -> bool:
        try:
            found = self.client.get_object_lock_configuration(Bucket=self.settings.bucket)
        except ClientError as err:
            if _code(err) in _NO_LOCK_CODES:
                return False
            raise RemoteError(f"s3 target {self.name}: cannot read the bucket's Object Lock "
                              f"configuration: {_code(err)}") from None
        except BotoCoreError as err:
            raise RemoteError(f"s3 target {self.name}: {err}") from None
        config = found.get("ObjectLockConfiguration", {})
        return bool(config.get("ObjectLockEnabled") == "Enabled")

    def _lock_args(self) -> dict[str, Any]:
        if not (self.lock_enabled and self.settings.lock_days):
            return {}
        until = datetime.fromtimestamp(self._clock(), UTC) + timedelta(days=self.settings.lock_days)
        return {"ObjectLockMode": self.settings.lock_mode, "ObjectLockRetainUntilDate": until}

    def _key(self, key: str) -> str:
        return join_key(self.settings.prefix, key)

    # -- the Remote protocol

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        prefix = self._key(folder).rstrip("/") + "/"
        strip = len(self._key(""))
        try:   # ListObjectsV2 returns keys in ascending UTF-8 byte order
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])[strip:].lstrip("/"), int(obj["Size"])
        except (ClientError, BotoCoreError) as err:
            raise RemoteError(f"s3 target {self.name} ({self.where}): cannot list {prefix}: {err}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._put(key, data, {})

    def _put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        sha = hashlib.sha256(data).digest()
        self._call("upload", key, lambda: self.client.put_object(
            Bucket=self.settings.bucket, Key=self._key(key), Body=data,
            ContentMD5=_b64(_content_md5(data)), ChecksumSHA256=_b64(sha),
            Metadata={"sha256": sha.hex(), **metadata}, **self._lock_args()))

    def put_file(self, key: str, path: Path, size: int, throttle: Throttle) -> str:
        with LocalSource(path, size) as source:
            if size <= self.part_size:
                data = b"".join(source.chunks())
                digest = source.finish()
                self._put(key, data, {})
                throttle.consume(len(data))
                return digest
            return self._multipart(key, source, throttle)

    def _multipart(self, key: str, source: LocalSource, throttle: Throttle) -> str:
        full = self._key(key)
        bucket = self.settings.bucket
        started = self._call("start a multipart upload of", key, lambda: self.client.create_multipart_upload(
            Bucket=bucket, Key=full, **self._lock_args()))
        upload_id = started["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            buffer = bytearray()
            for chunk in source.chunks():
                buffer += chunk
                if len(buffer) >= self.part_size:
                    parts.append(self._part(full, upload_id, len(parts) + 1, bytes(buffer)))
                    throttle.consume(len(buffer))
                    buffer.clear()
            if buffer:
                parts.append(self._part(full, upload_id, len(parts) + 1, bytes(buffer)))
                throttle.consume(len(buffer))
            digest = source.finish()
            self._call("complete the multipart upload of", key, lambda: self.client.complete_multipart_upload(
                Bucket=bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}))
            return digest
        except BaseException:
            # if even the abort fails, the bucket's lifecycle rule for incomplete uploads cleans up
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            raise

    def _part(self, full: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        done = self._call(f"upload part {number} of", full, lambda: self.client.upload_part(
            Bucket=self.settings.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=data,
            ContentMD5=_b64(_content_md5(data))))
        return {"PartNumber": number, "ETag": done["ETag"]}

    def get_file(self, key: str, out: BinaryIO, throttle: Throttle) -> tuple[int, str]:
        sink = HashingSink(out, throttle)

        def fetch() -> None:
            body = self.client.get_object(Bucket=self.settings.bucket, Key=self._key(key))["Body"]
            for chunk in body.iter_chunks(256 * 1024):
                sink.write(chunk)

        self._call("download", key, fetch)
        return sink.result()

    def get_bytes(self, key: str, limit: int) -> bytes:
        def fetch() -> bytes:
            body = self.client.get_object(Bucket=self.settings.bucket, Key=self._key(key))["Body"]
            data: bytes = body.read(limit + 1)
            return data

        data = self._call("download", key, fetch)
        if len(data) > limit:
            raise RemoteError(f"s3 target {self.name}: {key} is larger than {limit} bytes")
        return bytes(data)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.settings.bucket, Key=self._key(key)))

    def close(self) -> None:
        self.client.close()
