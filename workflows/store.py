"""The content-addressed artifact store.

Bytes are stored by their sha256 digest; the server computes the digest itself while it
streams an upload to a temporary file, and refuses a digest mismatch, a truncated upload or
one over the size limit before anything becomes visible. The default backend keeps files
under ``NEOCLOUD_DATA_DIR/artifacts``; ``S3Store`` keeps them in an S3-compatible bucket;
``ARTIFACT_STORE`` names the backend class (docs/operators.md).
"""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .digests import file_digest

CHUNK = 1024 * 1024
HEX = frozenset("0123456789abcdef")


class UploadRefused(Exception):
    """An upload the store will not keep; ``code`` is stable, the message is one sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class StoredBytesChanged(Exception):
    """The store returned bytes that do not hash to the digest they are stored under."""


@dataclass(frozen=True)
class Received:
    digest: str
    size: int


def hex_of(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not HEX.issuperset(hexdigest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexdigest


def relative_key(digest: str) -> str:
    """Where a digest's bytes live below the store's root: ``sha256/<first two hex>/<hex>``."""
    hexdigest = hex_of(digest)
    return f"sha256/{hexdigest[:2]}/{hexdigest}"


class Store:
    """What every backend shares: receiving an upload into a checked local temporary file.

    A backend says where temporary files go (``staging``) and how it keeps a file whose
    bytes passed every check (``keep``); it also provides ``exists``, ``open`` and
    ``local_copy``.
    """

    staging: Path

    def keep(self, temporary: Path, digest: str) -> None:
        raise NotImplementedError

    def receive(self, stream, *, declared_size: int, expected_digest: str, max_bytes: int,
                check=None) -> Received:
        """Stream ``declared_size`` bytes from ``stream`` into the store, checking as it goes.

        ``check(path)`` may refuse the complete bytes (UploadRefused) before they are kept."""
        if declared_size > max_bytes:
            raise UploadRefused("too_large", f"The upload is {declared_size} bytes; the limit is {max_bytes}.")
        hex_of(expected_digest)
        self.staging.mkdir(parents=True, exist_ok=True)
        hasher, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.staging, delete=False) as temporary:
            path = Path(temporary.name)
            try:
                while size < declared_size:
                    chunk = stream.read(min(CHUNK, declared_size - size))
                    if not chunk:
                        break
                    size += len(chunk)
                    hasher.update(chunk)
                    temporary.write(chunk)
                if size < declared_size:
                    raise UploadRefused("truncated_upload",
                                        f"The upload ended after {size} of the {declared_size} bytes it announced.")
                digest = "sha256:" + hasher.hexdigest()
                if digest != expected_digest:
                    raise UploadRefused("digest_mismatch",
                                        f"The bytes hash to {digest}, not the declared {expected_digest}.")
                temporary.flush()
                os.fsync(temporary.fileno())
                if check is not None:
                    check(path)
            except BaseException:
                temporary.close()
                path.unlink()
                raise
        try:
            self.keep(path, digest)
        finally:
            path.unlink(missing_ok=True)  # a backend that moved the file away leaves nothing here
        return Received(digest=digest, size=size)


class FileStore(Store):
    def __init__(self, root: Path | None = None):
        self.root = Path(root or Path(settings.DATA_DIR) / "artifacts")
        self.staging = self.root / "incoming"

    def path_for(self, digest: str) -> Path:
        return self.root / relative_key(digest)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def open(self, digest: str):
        return self.path_for(digest).open("rb")

    @contextmanager
    def local_copy(self, digest: str):
        yield self.path_for(digest)

    def keep(self, temporary: Path, digest: str) -> None:
        target = self.path_for(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():  # else identical bytes are already held
            shutil.move(temporary, target)


@lru_cache(maxsize=8)
def _s3_client(endpoint_url, region, access_key_id, secret_access_key):
    # One client per configuration: creating one is slow, and clients are thread-safe.
    # S3-compatible servers (MinIO, Ceph) are reliably reached with path-style addressing.
    addressing = {"addressing_style": "path"} if endpoint_url else {}
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(s3=addressing, retries={"mode": "standard", "max_attempts": 5}))


class S3Store(Store):
    """Artifacts in an S3-compatible bucket, under ``ARTIFACT_S3_PREFIX`` + ``sha256/<xx>/<hex>``.

    Uploads are checked locally first, so a refused upload never reaches the bucket; bytes
    read back for verification are hashed again, since the bucket is not trusted blindly.
    """

    # Multipart above 64 MiB, in 64 MiB parts: up to 10,000 parts covers 625 GiB.
    MULTIPART_BYTES = 64 * 1024 * 1024

    def __init__(self):
        self.bucket = settings.ARTIFACT_S3_BUCKET
        if not self.bucket:
            raise ImproperlyConfigured("ARTIFACT_S3_BUCKET must be set when ARTIFACT_STORE is workflows.store.S3Store.")
        if bool(settings.ARTIFACT_S3_ACCESS_KEY_ID) != bool(settings.ARTIFACT_S3_SECRET_ACCESS_KEY):
            raise ImproperlyConfigured(
                "ARTIFACT_S3_ACCESS_KEY_ID and ARTIFACT_S3_SECRET_ACCESS_KEY are set together, or neither.")
        prefix = settings.ARTIFACT_S3_PREFIX or ""
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.client = _s3_client(settings.ARTIFACT_S3_ENDPOINT_URL or None, settings.ARTIFACT_S3_REGION or None,
                                 settings.ARTIFACT_S3_ACCESS_KEY_ID or None,
                                 settings.ARTIFACT_S3_SECRET_ACCESS_KEY or None)
        self.staging = Path(settings.DATA_DIR) / "artifacts" / "incoming"

    def key_for(self, digest: str) -> str:
        return self.prefix + relative_key(digest)

    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(multipart_threshold=self.MULTIPART_BYTES, multipart_chunksize=self.MULTIPART_BYTES)

    @staticmethod
    def _is_missing(error) -> bool:
        return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def exists(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(digest))
        except ClientError as error:
            if self._is_missing(error):
                return False
            raise
        return True

    def open(self, digest: str):
        """The object's streaming body (a readable file object; it checks the length it was sent)."""
        key = self.key_for(digest)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as error:
            if self._is_missing(error):
                raise FileNotFoundError(f"s3://{self.bucket}/{key} does not exist.") from None
            raise

    @contextmanager
    def local_copy(self, digest: str):
        """Download the object to a temporary file, check its digest, yield its path, remove it."""
        key = self.key_for(digest)
        self.staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.staging, prefix="download-") as scratch:
            path = Path(scratch) / hex_of(digest)
            try:
                self.client.download_file(self.bucket, key, str(path), Config=self._transfer_config())
            except ClientError as error:
                if self._is_missing(error):
                    raise FileNotFoundError(f"s3://{self.bucket}/{key} does not exist.") from None
                raise
            actual = file_digest(path)
            if actual != digest:
                raise StoredBytesChanged(
                    f"The artifact store's bytes for {digest} hash to {actual}: "
                    f"s3://{self.bucket}/{key} was changed after upload.")
            yield path

    def keep(self, temporary: Path, digest: str) -> None:
        if not self.exists(digest):  # else identical bytes are already held
            self.client.upload_file(str(temporary), self.bucket, self.key_for(digest),
                                    Config=self._transfer_config())


def get_store():
    return import_string(settings.ARTIFACT_STORE)()
