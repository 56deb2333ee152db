"""Policy sources and OPA bundles.

The policy *revision* names exactly which Rego decided: ``sha256:<hex>`` over the RFC 8785
canonical JSON of ``{"files": {path: sha256(bytes)}, "roots": ["neocloud"]}`` for every
``*.rego`` under the policy directory except ``*_test.rego``. The bundle's ``.manifest``
carries that revision, so a decision recorded here names the bundle OPA was serving.
"""

import functools
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from audit.hashing import canonical_json

REGO_DIR = Path(__file__).resolve().parent / "rego"
ROOTS = ["neocloud"]


_loaded: dict = {}  # REGO_DIR -> (its files' stamps, the PolicySource read then)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def is_test_module(path: Path) -> bool:
    return path.name.endswith("_test.rego")


@dataclass(frozen=True)
class PolicySource:
    """The Rego modules of one policy directory, keyed by their path relative to it."""

    root: Path
    modules: dict  # relative posix path -> source text
    tests: dict  # relative posix path -> source text of *_test.rego

    @classmethod
    def load(cls, root=None) -> "PolicySource":
        """The sources as they are on disk: read again only when a file was added, removed or
        changed (its size or modification time), so a process hashes them once per revision."""
        root = Path(root or REGO_DIR)
        paths = sorted(root.rglob("*.rego"))
        fingerprint = tuple((path, *_stamp(path)) for path in paths)
        cached = _loaded.get(root)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        modules, tests = {}, {}
        for path in paths:
            rel = path.relative_to(root).as_posix()
            (tests if is_test_module(path) else modules)[rel] = path.read_text(encoding="utf-8")
        source = cls(root=root, modules=modules, tests=tests)
        if root == REGO_DIR:  # the platform's own sources; other folders are read once each
            _loaded[root] = (fingerprint, source)
        return source

    @functools.cached_property
    def revision(self) -> str:
        files = {path: hashlib.sha256(text.encode("utf-8")).hexdigest() for path, text in self.modules.items()}
        return "sha256:" + hashlib.sha256(canonical_json({"files": files, "roots": ROOTS})).hexdigest()

    def manifest(self) -> dict:
        return {"revision": self.revision, "roots": ROOTS}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_bundle(source: PolicySource | None = None) -> bytes:
    """An OPA bundle (tar.gz) of the policy modules: the same sources give the same bytes."""
    source = source or PolicySource.load()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, ".manifest", canonical_json(source.manifest()))
        for path in sorted(source.modules):
            _add(tar, path, source.modules[path].encode("utf-8"))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def read_bundle(data: bytes) -> dict:
    """The files of a bundle, name -> bytes (for tests and operators)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
