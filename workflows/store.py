"""The content-addressed artifact store.

Bytes are stored by their sha256 digest; the server computes the digest itself while it
streams an upload to a temporary file, and refuses a digest mismatch, a truncated upload or
one over the size limit before anything becomes visible. The default backend keeps files
under ``NEOCLOUD_DATA_DIR/artifacts``; ``ARTIFACT_STORE`` names another backend class
(docs/operators.md).
"""

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

CHUNK = 1024 * 1024


class UploadRefused(Exception):
    """An upload the store will not keep; ``code`` is stable, the message is one sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Received:
    digest: str
    size: int


class FileStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or Path(settings.DATA_DIR) / "artifacts")

    def path_for(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def open(self, digest: str):
        return self.path_for(digest).open("rb")

    def receive(self, stream, *, declared_size: int, expected_digest: str, max_bytes: int,
                check=None) -> Received:
        """Stream ``declared_size`` bytes from ``stream`` into the store, checking as it goes.

        ``check(path)`` may refuse the complete bytes (UploadRefused) before they are kept."""
        if declared_size > max_bytes:
            raise UploadRefused("too_large", f"The upload is {declared_size} bytes; the limit is {max_bytes}.")
        target = self.path_for(expected_digest)
        (self.root / "incoming").mkdir(parents=True, exist_ok=True)
        hasher, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.root / "incoming", delete=False) as temporary:
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
                    check(Path(temporary.name))
            except BaseException:
                temporary.close()
                os.unlink(temporary.name)
                raise
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            os.unlink(temporary.name)  # identical bytes are already held
        else:
            shutil.move(temporary.name, target)
        return Received(digest=digest, size=size)


def get_store():
    return import_string(settings.ARTIFACT_STORE)()
