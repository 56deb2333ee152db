"""Reading the user's files, with one-sentence errors (exit code 2) instead of tracebacks."""

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from workflows import certs

from .errors import input_error, usage_error


def read_bytes(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise input_error(f"The {what} {path} is a directory, not a file.") from None
    except OSError as exc:
        raise input_error(f"Cannot read the {what} {path}: {(exc.strerror or str(exc)).lower()}.") from None


def existing_path(path: Path | str, what: str = "artifact") -> Path:
    path = Path(path)
    if not path.exists():
        raise input_error(f"The {what} {path} does not exist.")
    if not (path.is_file() or path.is_dir()):
        raise input_error(f"The {what} {path} is neither a file nor a directory.")
    return path


def password_from(variable: str | None) -> bytes | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise usage_error(f"The environment variable {variable} named by --password-env is not set.")
    return value.encode("utf-8")


def private_key_pem(path: Path | str, password: bytes | None) -> bytes:
    """The PEM bytes of a private key, checked to load (with its password) before use."""
    pem = read_bytes(path, "key file")
    try:
        serialization.load_pem_private_key(pem, password)
    except TypeError:
        if password is None:
            raise input_error(f"The key {path} is encrypted: name the environment variable holding its "
                              "password with --password-env.", code="bad_key") from None
        raise input_error(f"The key {path} is not encrypted, so drop --password-env.", code="bad_key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise input_error(f"The key {path} cannot be loaded: it is not a PEM private key, or its password "
                          "is wrong.", code="bad_key") from None
    return pem


def certificate_pems(paths: list[str], what: str) -> list[bytes]:
    """The PEM bytes of each file, each checked to hold at least one certificate."""
    pems = []
    for path in paths:
        pem = read_bytes(path, what)
        try:
            certs.load_pem_certificates([pem])
        except ValueError:
            raise input_error(f"The {what} {path} holds no PEM certificate.", code="bad_certificate") from None
        pems.append(pem)
    return pems


def public_key_pem(path: Path | str) -> str:
    pem = read_bytes(path, "public key file")
    try:
        serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise input_error(f"The file {path} does not hold a PEM public key.", code="bad_key") from None
    return pem.decode("ascii", "replace")
