"""Deterministic directory archives, and safe extraction of untrusted ones.

A model directory travels to the server as a plain (uncompressed) tar. `pack_directory`
writes the same bytes for the same directory contents every time: names in sorted order,
every timestamp 0, owner 0/0 with empty owner names, mode 0644 for files and 0755 for
directories. Only regular files and directories are packed; a symbolic link (or any other
kind of file) is refused rather than followed, as the signing library refuses them.

`unpack_archive` is for archives from anyone: it checks every member before writing anything,
then extracts with tarfile's "data" filter as a second line of defence. It imports no Django,
so both the CLI and the server use it.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_TOTAL_BYTES = 10 * 1024**3  # the server's default artifact size limit
FILE_MODE = 0o644
DIRECTORY_MODE = 0o755


# Packing -------------------------------------------------------------------------------------


def pack_directory(path: Path, out: BinaryIO) -> None:
    """Write `path`'s contents to `out` as a deterministic tar (names relative to `path`).

    Raises ValueError for a path that is not a directory, a symbolic link or special file
    inside it, or a file name that is not UTF-8.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"Cannot pack {root}: it is not a directory.")
    entries = sorted(_walk(root), key=lambda entry: entry[0].parts)
    # Stream mode ("w|") needs no seeking, so `out` may be a pipe or a socket.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for relative, absolute, is_directory in entries:
            _add_entry(archive, relative, absolute, is_directory)


def _walk(root: Path, relative: PurePosixPath | None = None):
    """(relative name, absolute path, is directory) for everything below `root`, links refused."""
    relative = relative or PurePosixPath()
    with os.scandir(root / relative) as scan:
        entries = list(scan)
    for entry in entries:
        name = relative / entry.name
        if entry.is_symlink():
            raise ValueError(f"Cannot pack {name}: it is a symbolic link, and archives hold no links.")
        if entry.is_dir(follow_symlinks=False):
            yield name, Path(entry.path), True
            yield from _walk(root, name)
        elif entry.is_file(follow_symlinks=False):
            yield name, Path(entry.path), False
        else:
            raise ValueError(f"Cannot pack {name}: it is neither a regular file nor a directory.")


def _add_entry(archive: tarfile.TarFile, relative: PurePosixPath, absolute: Path, is_directory: bool) -> None:
    info = tarfile.TarInfo(_utf8_name(relative))
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if is_directory:
        info.type, info.mode = tarfile.DIRTYPE, DIRECTORY_MODE
        archive.addfile(info)
        return
    with open(absolute, "rb") as stream:
        info.type, info.mode = tarfile.REGTYPE, FILE_MODE
        info.size = os.fstat(stream.fileno()).st_size
        archive.addfile(info, stream)


def _utf8_name(relative: PurePosixPath) -> str:
    name = str(relative)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"Cannot pack {name!r}: its name is not UTF-8.") from None
    return name


# Unpacking -----------------------------------------------------------------------------------


def unpack_archive(tar_path: Path, into: Path, *, max_members: int = DEFAULT_MAX_MEMBERS,
                   max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
    """Extract an untrusted plain tar into the directory `into` (created if missing).

    Only regular files and directories with relative names inside `into` are accepted.
    Every member is checked before anything is written; any problem raises ValueError with
    one plain sentence. Extract into a fresh directory: after a failure it may hold part of
    the archive.
    """
    try:
        with tarfile.open(tar_path, mode="r:") as archive:
            members = _checked_members(archive, max_members, max_total_bytes)
            Path(into).mkdir(parents=True, exist_ok=True)
            archive.extractall(into, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise ValueError(f"The archive was refused while extracting ({_one_line(exc)}).") from None
    except tarfile.TarError as exc:
        raise ValueError(f"The file is not a readable tar archive ({_one_line(exc)}).") from None
    except OSError as exc:
        raise ValueError(f"The archive cannot be extracted ({_one_line(exc.strerror or exc)}).") from None


def check_archive(tar_path: Path, *, max_members: int = DEFAULT_MAX_MEMBERS,
                  max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
    """Read every header of an untrusted plain tar and apply unpack_archive's checks, writing
    nothing: links, devices, names outside the archive and clashes raise ValueError."""
    try:
        with tarfile.open(tar_path, mode="r:") as archive:
            _checked_members(archive, max_members, max_total_bytes)
    except tarfile.TarError as exc:
        raise ValueError(f"The file is not a readable tar archive ({_one_line(exc)}).") from None


def _one_line(error) -> str:
    return " ".join(str(error).split()).rstrip(".")


def _checked_members(archive: tarfile.TarFile, max_members: int, max_total_bytes: int) -> list[tarfile.TarInfo]:
    members, files, directories, total = [], set(), set(), 0
    for member in archive:  # iterating reads one header at a time, so the count stops a flood early
        if len(members) >= max_members:
            raise ValueError(f"The archive holds more than {max_members:,} members, the limit.")
        name = _checked_name(member)
        _check_kind(member, name)
        _check_no_clash(name, member.isdir(), files, directories)
        total += member.size if member.isfile() else 0
        if total > max_total_bytes:
            raise ValueError(f"The archive's files add up to more than {max_total_bytes:,} bytes, the limit.")
        members.append(member)
    return members


def _checked_name(member: tarfile.TarInfo) -> str:
    raw = member.name
    if raw.startswith(("/", "\\")) or PurePosixPath(raw).is_absolute():
        raise ValueError(f"The archive member '{raw}' has an absolute path.")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise ValueError(f"The archive member '{raw}' points outside the archive with '..'.")
    name = "/".join(part for part in parts if part != ".")
    if not name and not member.isdir():
        raise ValueError(f"The archive member '{raw}' has no file name.")
    return name or "."


def _check_kind(member: tarfile.TarInfo, name: str) -> None:
    if member.issym() or member.islnk():
        raise ValueError(f"The archive member '{name}' is a link; only files and directories are accepted.")
    if member.isdev():
        raise ValueError(f"The archive member '{name}' is a device or pipe; only files and directories are accepted.")
    if not (member.isreg() or member.isdir()):
        raise ValueError(f"The archive member '{name}' is of an unsupported kind; only files and directories "
                         "are accepted.")


def _check_no_clash(name: str, is_directory: bool, files: set[str], directories: set[str]) -> None:
    """Refuse a name given twice, or used both as a file and as a directory (which would
    make extraction fail half-way, or let a later member replace an earlier one)."""
    ancestors = {str(parent) for parent in PurePosixPath(name).parents if str(parent) != "."}
    if name in files or (not is_directory and name in directories):
        raise ValueError(f"The archive holds '{name}' more than once.")
    if ancestors & files:
        raise ValueError(f"The archive member '{name}' lies below a file of the same archive.")
    (directories if is_directory else files).add(name)
    directories.update(ancestors)
