"""Hashing and streaming an artifact's bytes, with an optional progress bar on stderr."""

import contextlib
import hashlib
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from workflows.archive import pack_directory

from .errors import input_error

CHUNK_BYTES = 1024 * 1024
FILE_CONTENT_TYPE = "application/octet-stream"
DIRECTORY_CONTENT_TYPE = "application/x-tar"


def progress_bar(total: int, label: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not enabled, leave=False, dynamic_ncols=True)


def sha256_of(path: Path, *, progress: bool) -> str:
    """'sha256:<hex>' of a file, read in chunks."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as stream, progress_bar(size, f"hashing {path.name}", progress) as bar:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return "sha256:" + digest.hexdigest()


class ProgressReader:
    """A file opened for upload: requests streams it by read() and takes its length from
    len(), so the request carries a Content-Length rather than chunked encoding."""

    def __init__(self, stream, size: int, bar: tqdm):
        self.stream, self.size, self.bar = stream, size, bar

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        chunk = self.stream.read(amount)
        self.bar.update(len(chunk))
        return chunk

    def __iter__(self):
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


@contextlib.contextmanager
def upload_source(path: Path):
    """(file to send, content type): the file itself, or a directory packed as a deterministic tar."""
    if path.is_file():
        yield path, FILE_CONTENT_TYPE
        return
    with tempfile.TemporaryDirectory(prefix="neocloud-") as scratch:
        tar_path = Path(scratch) / f"{path.name or 'artifact'}.tar"
        try:
            with open(tar_path, "wb") as out:
                pack_directory(path, out)
        except ValueError as exc:
            raise input_error(str(exc)) from None
        except OSError as exc:
            raise input_error(f"Cannot pack {exc.filename or path}: {(exc.strerror or str(exc)).lower()}.") from None
        yield tar_path, DIRECTORY_CONTENT_TYPE


@contextlib.contextmanager
def upload_body(path: Path, *, progress: bool):
    """(body for requests, its size). An empty body is b"": requests would send a zero-length
    stream with chunked encoding, and the server requires a Content-Length."""
    size = path.stat().st_size
    if size == 0:
        yield b"", 0
        return
    with open(path, "rb") as stream, progress_bar(size, f"uploading {path.name}", progress) as bar:
        yield ProgressReader(stream, size, bar), size
