"""Deterministic packing of model directories and safe unpacking of untrusted tars (no database)."""

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from workflows.archive import pack_directory, unpack_archive



@pytest.fixture
def model_dir(tmp_path):
    """About 2 MB of model in nested directories, with an empty directory."""
    return make_model(tmp_path / "model", seed=b"")


def make_model(root: Path, *, seed: bytes) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "weights.safetensors").write_bytes(_bytes(1_500_000, seed))
    (root / "tokenizer" / "vocab.bin").write_bytes(_bytes(300_000, seed + b"vocab"))
    (root / "config.json").write_text('{"hidden_size": 256}')
    (root / "a.txt").write_text("a file whose name sorts before the directories")
    return root


def _bytes(size: int, seed: bytes) -> bytes:
    """Reproducible pseudo-random bytes, so two directories can hold the same content."""
    blocks = (hashlib.sha256(seed + index.to_bytes(8, "big")).digest() for index in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def packed(path: Path) -> bytes:
    out = io.BytesIO()
    pack_directory(path, out)
    return out.getvalue()


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file's content and every directory (None) below `root`, by relative name."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def crafted_tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp_path / "crafted.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def entry(name: str, kind=tarfile.REGTYPE, **attributes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attributes.items():
        setattr(info, key, value)
    return info


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message, message


# Packing -------------------------------------------------------------------------------------


def test_the_same_directory_packs_to_the_same_bytes(model_dir):
    assert packed(model_dir) == packed(model_dir)


def test_mtimes_modes_and_location_do_not_change_the_bytes(model_dir, tmp_path):
    first = packed(model_dir)
    elsewhere = make_model(tmp_path / "copy" / "other-name", seed=b"")
    os.utime(elsewhere / "weights.safetensors", (1_700_000_000, 1_700_000_000))
    os.utime(elsewhere / "tokenizer", (1_000_000, 1_000_000))
    (elsewhere / "config.json").chmod(0o600)
    (elsewhere / "tokenizer" / "vocab.bin").chmod(0o755)
    assert packed(elsewhere) == first
    assert hashlib.sha256(packed(elsewhere)).hexdigest() == hashlib.sha256(first).hexdigest()


def test_different_content_packs_to_different_bytes(model_dir, tmp_path):
    other = make_model(tmp_path / "other", seed=b"another model")
    assert packed(other) != packed(model_dir)


def test_the_archive_holds_sorted_names_with_fixed_metadata(model_dir):
    with tarfile.open(fileobj=io.BytesIO(packed(model_dir))) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["a.txt", "config.json", "empty", "tokenizer", "tokenizer/vocab.bin",
                                         "weights.safetensors"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in members if m.isdir()} == {"empty": 0o755, "tokenizer": 0o755}
    assert {m.mode for m in members if m.isfile()} == {0o644}


def test_a_round_trip_restores_every_file_and_directory(model_dir, tmp_path):
    archive = tmp_path / "model.tar"
    archive.write_bytes(packed(model_dir))
    unpack_archive(archive, tmp_path / "restored")
    assert tree(tmp_path / "restored") == tree(model_dir)
    assert packed(tmp_path / "restored") == archive.read_bytes()


def test_packing_refuses_a_symbolic_link(model_dir):
    (model_dir / "tokenizer" / "shortcut").symlink_to(model_dir / "config.json")
    with pytest.raises(ValueError, match="tokenizer/shortcut: it is a symbolic link") as refused:
        packed(model_dir)
    assert_one_sentence(str(refused.value))


def test_packing_refuses_a_link_to_a_directory(model_dir, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("not part of the model")
    (model_dir / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="linked: it is a symbolic link"):
        packed(model_dir)


def test_packing_refuses_a_path_that_is_not_a_directory(model_dir):
    with pytest.raises(ValueError, match="it is not a directory"):
        packed(model_dir / "config.json")


# Unpacking -----------------------------------------------------------------------------------


def refused(tar_path: Path, into: Path, **limits) -> str:
    with pytest.raises(ValueError) as raised:
        unpack_archive(tar_path, into, **limits)
    message = str(raised.value)
    assert_one_sentence(message)
    return message


def test_a_parent_directory_escape_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("ok.txt"), b"fine"), (entry("../evil"), b"escaped"))
    message = refused(tar_path, tmp_path / "into")
    assert message == "The archive member '../evil' points outside the archive with '..'."
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "into" / "ok.txt").exists()  # nothing is written before every member is checked


def test_a_nested_escape_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("weights/../../evil"), b"escaped"))
    assert "points outside the archive" in refused(tar_path, tmp_path / "into")
    assert not (tmp_path / "evil").exists()


def test_an_absolute_path_is_refused(tmp_path):
    target = tmp_path / "absolute-evil"
    tar_path = crafted_tar(tmp_path, (entry(str(target)), b"escaped"))
    assert refused(tar_path, tmp_path / "into") == f"The archive member '{target}' has an absolute path."
    assert not target.exists()


def test_a_symbolic_link_member_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("passwd", tarfile.SYMTYPE, linkname="/etc/passwd"), b""))
    assert "'passwd' is a link" in refused(tar_path, tmp_path / "into")
    assert not (tmp_path / "into" / "passwd").exists()


def test_a_hard_link_member_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("config.json"), b"{}"),
                           (entry("copy", tarfile.LNKTYPE, linkname="config.json"), b""))
    assert "'copy' is a link" in refused(tar_path, tmp_path / "into")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_a_device_or_pipe_is_refused(tmp_path, kind):
    tar_path = crafted_tar(tmp_path, (entry("null", kind, devmajor=1, devminor=3), b""))
    assert "'null' is a device or pipe" in refused(tar_path, tmp_path / "into")
    assert not (tmp_path / "into" / "null").exists()


def test_too_many_members_are_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, *[(entry(f"shard-{index}"), b"x") for index in range(6)])
    assert refused(tar_path, tmp_path / "into", max_members=5) == "The archive holds more than 5 members, the limit."
    unpack_archive(tar_path, tmp_path / "enough", max_members=6)
    assert len(list((tmp_path / "enough").iterdir())) == 6


def test_too_many_bytes_are_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("a"), b"x" * 600), (entry("b"), b"y" * 600))
    message = refused(tar_path, tmp_path / "into", max_total_bytes=1000)
    assert message == "The archive's files add up to more than 1,000 bytes, the limit."
    assert not (tmp_path / "into" / "a").exists()


def test_a_name_given_twice_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("weights"), b"signed"), (entry("weights"), b"swapped"))
    assert refused(tar_path, tmp_path / "into") == "The archive holds 'weights' more than once."


def test_a_member_below_a_file_is_refused(tmp_path):
    tar_path = crafted_tar(tmp_path, (entry("weights"), b"a file"), (entry("weights/extra"), b"below it"))
    assert "lies below a file" in refused(tar_path, tmp_path / "into")


def test_a_file_that_is_not_a_tar_is_refused(tmp_path):
    not_tar = tmp_path / "weights.bin"
    not_tar.write_bytes(b"\x93NUMPY" + os.urandom(4096))
    assert refused(not_tar, tmp_path / "into").startswith("The file is not a readable tar archive")
