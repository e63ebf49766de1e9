"""Encrypted backups: recipients as settings and inventory take them, which backups are
encrypted to whom, and the archive through the real `age` binary (local, no network): written
while it streams, read back with the identity, refused without one.

Against a real sshd and Prefect: tests/integration/test_encrypted_backup.py.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import main as cli
from deployments.control.jobs import Enqueued
from flows.backup import backup
from tasks.archive_files import restore
from tasks.archive_listing import Member, listing_file, load_listing
from tasks.atomic import atomic_file
from tasks.backup import plan_command, tar_command
from tasks.core.errors import (
    ArchiveInvalid,
    IdentityRequired,
    InvalidOptions,
    InventoryError,
    RepositoryFull,
)
from tasks.core.inventory import BackupSpec, load_inventory
from tasks.core.jobs import BackupOptions, backup_recipients
from tasks.core.recipients import check_recipient
from tasks.core.settings import EncryptionSettings, SettingsError, get_settings, read_settings
from tasks.encryption import PlaintextTap, check_tools, encrypting, read_plaintext
from tasks.repository import BackupRepository, BackupStatus, Compression, Manifest, utcnow
from tests.support.age import Identity, make_identity
from tests.support.offline import Offline, offline

__all__ = ["offline"]

runner = CliRunner()

#: Public keys of `age-keygen` pairs whose private keys were thrown away.
KEY_A = "age1nh942zkuqderu3a4xdk7jfrghwa8fhkxxhv30y3egcrd330ykypsqtzvhm"
KEY_B = "age1zcphr3aulsr6lfzxa6vzw0a4emauews43fakpxcgfr8frmns4v6s7pmjhd"
PATHS = ["/srv/app"]
PLAN_ANSWER = b"codec\tzstd\ncodec\tgzip\nestimate\t2\t3000\n"


def tar_bytes(files: dict[str, bytes], compression: Compression = "none") -> bytes:
    """A tar archive holding `files`, as the remote tar would send it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    plain = out.getvalue()
    if compression == "none":
        return plain
    program = ["gzip", "-c"] if compression == "gzip" else ["zstd", "-c", "-q"]
    return subprocess.run(program, input=plain, capture_output=True, check=True).stdout


FILES = {"srv/app/a.txt": b"a" * 1000, "srv/app/b.bin": bytes(range(256)) * 8}


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    return make_identity(tmp_path / "keys" / "identity.txt")


# --- recipients, settings, inventory ------------------------------------------------------------


def test_an_age_public_key_is_accepted_with_its_checksum(identity: Identity) -> None:
    assert check_recipient(identity.recipient) == identity.recipient
    assert check_recipient(KEY_A) == KEY_A


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (KEY_A[:-1] + ("q" if KEY_A[-1] != "q" else "p"), "checksum does not match"),
        (KEY_A.upper(), "not an age public key"),
        ("age1short", "not an age public key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "not an age public key"),
    ],
)
def test_a_key_that_is_not_an_age_public_key_is_refused(key: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_recipient(key)


def test_a_private_key_given_as_a_recipient_is_refused_without_being_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    monkeypatch.setenv("MM_BACKUP_RECIPIENTS", secret)
    with pytest.raises(SettingsError) as raised:
        read_settings()
    assert "MM_BACKUP_RECIPIENTS" in str(raised.value)
    assert "private key" in str(raised.value)
    assert "QQQQ" not in str(raised.value)


@pytest.mark.parametrize("separator", [",", " ", ", ", "\n"])
def test_mm_backup_recipients_is_a_list_of_keys(
    monkeypatch: pytest.MonkeyPatch, separator: str
) -> None:
    monkeypatch.setenv("MM_BACKUP_RECIPIENTS", f" {KEY_A}{separator}{KEY_B} ")
    assert read_settings().encryption.recipients == [KEY_A, KEY_B]


def test_no_recipients_and_no_identity_by_default() -> None:
    settings = read_settings().encryption
    assert settings.recipients == []
    assert settings.identity is None


def test_a_bad_key_in_the_inventory_names_the_server_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "servers:\n- id: 6a1f7f0e-0000-4000-8000-000000000001\n  name: web1\n  host: h\n"
        "  username: u\n  private_key_file: /k\n"
        f"  backup: {{paths: [/srv], encrypt: true, recipients: ['{KEY_A}', 'age1oops']}}\n"
    )
    with pytest.raises(InventoryError) as raised:
        load_inventory(path)
    assert "server #1 (web1): backup.recipients.1:" in str(raised.value)


# --- which backups are encrypted, to whom -------------------------------------------------------

ENV = EncryptionSettings(recipients=[KEY_A])
NO_ENV = EncryptionSettings(recipients=[])


@pytest.mark.parametrize(
    ("asked", "spec", "settings", "recipients"),
    [
        # Not asked for anywhere: plain, whatever keys are configured.
        (False, BackupSpec(paths=PATHS, recipients=[KEY_B]), ENV, []),
        (False, None, ENV, []),
        # Asked by the request: the server's keys, else MM_BACKUP_RECIPIENTS.
        (True, BackupSpec(paths=PATHS), ENV, [KEY_A]),
        (True, BackupSpec(paths=PATHS, recipients=[KEY_B]), ENV, [KEY_B]),
        (True, None, ENV, [KEY_A]),
        # The server's `encrypt: true` holds even when the request says false.
        (False, BackupSpec(paths=PATHS, encrypt=True), ENV, [KEY_A]),
        (False, BackupSpec(paths=PATHS, encrypt=True, recipients=[KEY_B, KEY_A]), NO_ENV,
         [KEY_B, KEY_A]),
    ],
)  # fmt: skip
def test_the_recipients_of_a_backup(
    asked: bool, spec: BackupSpec | None, settings: EncryptionSettings, recipients: list[str]
) -> None:
    assert backup_recipients(BackupOptions(encryption=asked), spec, settings) == recipients


@pytest.mark.parametrize(
    ("asked", "spec"),
    [(True, BackupSpec(paths=PATHS)), (False, BackupSpec(paths=PATHS, encrypt=True))],
)
def test_encryption_without_any_recipient_is_refused_never_a_plain_archive(
    asked: bool, spec: BackupSpec
) -> None:
    with pytest.raises(
        InvalidOptions, match="no recipient is configured: set MM_BACKUP_RECIPIENTS"
    ):
        backup_recipients(BackupOptions(encryption=asked), spec, NO_ENV)


def test_a_backup_host_without_age_is_told_before_any_transfer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InvalidOptions, match="needs the `age` program on the backup host"):
        check_tools("none")


def test_an_encrypted_zstd_backup_needs_zstd_on_the_backup_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "age").symlink_to(subprocess.check_output(["which", "age"], text=True).strip())
    monkeypatch.setenv("PATH", str(tmp_path))
    check_tools("gzip")
    with pytest.raises(InvalidOptions, match="needs `zstd` on the backup host"):
        check_tools("zstd")


# --- the archive through age ----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_an_archive_is_encrypted_as_it_streams_and_the_age_cli_reads_it(
    tmp_path: Path, identity: Identity, compression: Compression
) -> None:
    sent = tar_bytes(FILES, compression)
    path = tmp_path / "backup.tar.age"
    with atomic_file(path) as archive, encrypting(archive, [identity.recipient], compression) as w:
        for offset in range(0, len(sent), 700):  # many small writes, as a transport makes them
            w.write(sent[offset : offset + 700])

    stored = path.read_bytes()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert sent not in stored
    assert (archive.size, archive.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert (w.size, w.sha256) == (len(sent), hashlib.sha256(sent).hexdigest())
    assert [(m.path, m.type, m.size) for m in w.members] == [
        ("srv/app/a.txt", "file", 1000),
        ("srv/app/b.bin", "file", 2048),
    ]
    decrypted = subprocess.run(
        ["age", "--decrypt", "-i", str(identity.path), str(path)], capture_output=True, check=True
    ).stdout
    assert decrypted == sent
    plain = read_plaintext(path, identity.path, compression)
    assert (plain.sha256, plain.members) == (w.sha256, w.members)


def test_bytes_from_a_child_process_are_encrypted_too(tmp_path: Path, identity: Identity) -> None:
    """The OpenSSH path: ssh writes into `fileno()`, `catch_up` accounts for it."""
    sent = tar_bytes(FILES)
    (tmp_path / "sent.tar").write_bytes(sent)
    path = tmp_path / "backup.tar.age"
    with atomic_file(path) as archive, encrypting(archive, [identity.recipient], "none") as w:
        subprocess.run(["cat", str(tmp_path / "sent.tar")], stdout=w.fileno(), check=True)
        w.catch_up()
    assert w.sha256 == hashlib.sha256(sent).hexdigest()
    assert archive.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(w.members) == 2


def test_a_failed_encryption_leaves_no_file_behind(tmp_path: Path) -> None:
    # A key that passed no check of ours: age itself refuses it.
    with pytest.raises(ArchiveInvalid, match="age --encrypt failed"):
        with atomic_file(tmp_path / "backup.tar.age") as archive:
            with encrypting(archive, ["age1notakey"], "none") as w:
                w.write(tar_bytes(FILES))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_age_is_repository_full_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity: Identity
) -> None:
    """age's own words for ENOSPC, from a stand-in that fails as age does on a full disk."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "age"
    fake.write_text(
        "#!/bin/sh\nhead -c 100000 >/dev/null\n"
        "echo 'age: error: failed to write: write /dev/stdout: no space left on device' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "repo"
    with pytest.raises(RepositoryFull, match="disk is full"):
        with atomic_file(out / "backup.tar.age") as archive:
            with encrypting(archive, [identity.recipient], "none") as w:
                for _ in range(64):  # far more than the stand-in reads before it fails
                    w.write(tar_bytes(FILES) * 4)
    assert list(out.iterdir()) == []


def test_what_is_not_tar_fails_the_archive(tmp_path: Path, identity: Identity) -> None:
    with pytest.raises(ArchiveInvalid, match="not a whole tar archive"):
        with atomic_file(tmp_path / "backup.tar.age") as archive:
            with encrypting(archive, [identity.recipient], "none") as w:
                w.write(b"no tar here" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


# --- the repository: verify and restore -------------------------------------------------------


def encrypted_backup(
    tmp_path: Path, identity: Identity, compression: Compression = "gzip"
) -> tuple[BackupRepository, Manifest]:
    repo = BackupRepository(tmp_path / "backups")
    backup_id = uuid.uuid4()
    manifest = Manifest(
        backup_id=backup_id,
        server_id=uuid.uuid4(),
        server_name="web1",
        job_type="backup:manual",
        compression=compression,
        paths=PATHS,
        archive=BackupRepository.archive_name(backup_id, compression, encrypted=True),
        recipients=[identity.recipient],
        started_at=utcnow(),
    )
    with repo.open_archive(manifest) as archive, listing_file(repo.listing_path(manifest)) as ls:
        with encrypting(archive, manifest.recipients, compression, ls.add) as writer:
            writer.write(tar_bytes(FILES, compression))
    assert (ls.count, ls.files, writer.members) == (2, 2, []), "members kept in memory"
    done = manifest.model_copy(
        update={
            "size": archive.size,
            "sha256": archive.sha256,
            "plaintext_sha256": writer.sha256,
            "file_count": 2,
            "status": BackupStatus.COMPLETED,
        }
    )
    repo.save(done)
    return repo, done


def test_verify_without_the_identity_checks_the_stored_bytes(
    tmp_path: Path, identity: Identity
) -> None:
    repo, manifest = encrypted_backup(tmp_path, identity)
    result = repo.verify(manifest)
    assert (result.sha256, result.file_count, result.decrypted) == (manifest.sha256, 2, False)

    path = repo.archive_path(manifest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveInvalid, match="does not match the manifest"):
        repo.verify(manifest)


def test_verify_with_the_identity_checks_the_plaintext_and_the_listing(
    tmp_path: Path, identity: Identity
) -> None:
    repo, manifest = encrypted_backup(tmp_path, identity, "zstd")
    result = repo.verify(manifest, identity.path)
    assert (result.file_count, result.decrypted) == (2, True)

    wrong = manifest.model_copy(update={"plaintext_sha256": "0" * 64})
    with pytest.raises(ArchiveInvalid, match="decrypted sha256"):
        repo.verify(wrong, identity.path)
    listing = repo.listing_path(manifest)
    listing.write_text(listing.read_text().replace("a.txt", "z.txt"))
    with pytest.raises(ArchiveInvalid, match="decrypted members differ"):
        repo.verify(manifest, identity.path)


def test_another_identity_cannot_decrypt(tmp_path: Path, identity: Identity) -> None:
    repo, manifest = encrypted_backup(tmp_path, identity)
    other = make_identity(tmp_path / "other.txt")
    with pytest.raises(ArchiveInvalid, match="age could not decrypt"):
        repo.verify(manifest, other.path)
    with pytest.raises(InvalidOptions, match="not found"):
        repo.verify(manifest, tmp_path / "missing.txt")


def test_restore_needs_the_identity_and_unpacks_the_plaintext(
    tmp_path: Path, identity: Identity
) -> None:
    repo, manifest = encrypted_backup(tmp_path, identity)
    with pytest.raises(IdentityRequired, match="is encrypted; restoring it needs its age identity"):
        restore(repo, manifest, tmp_path / "out")
    restore(repo, manifest, tmp_path / "out", identity=identity.path)
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data


# --- the backup flow, over the fake SSH server ------------------------------------------------


def test_an_encrypted_backup_records_both_checksums_the_recipients_and_the_listing(
    offline: Offline, identity: Identity
) -> None:
    server = offline.add_server(
        backup={"paths": PATHS, "encrypt": True, "recipients": [identity.recipient]}
    )
    sent = tar_bytes(FILES)
    offline.fake.reply(plan_command(PATHS), stdout=PLAN_ANSWER)
    offline.fake.reply(tar_command(PATHS, "none"), stdout=sent)
    backup_id = uuid.uuid4()

    result = backup.fn(server_id=server.id, backup_id=backup_id, options=BackupOptions())

    repo = BackupRepository(offline.tmp_path / "backups")
    manifest = repo.read(server.id, backup_id)
    assert manifest is not None and manifest.status is BackupStatus.COMPLETED
    assert manifest.archive == f"{backup_id}.tar.age"
    assert manifest.recipients == [identity.recipient]
    assert manifest.plaintext_sha256 == hashlib.sha256(sent).hexdigest()
    stored = repo.archive_path(manifest).read_bytes()
    assert manifest.sha256 == result["sha256"] == hashlib.sha256(stored).hexdigest()
    assert manifest.file_count == result["fileCount"] == 2
    assert [m.path for m in load_listing(repo.listing_path(manifest))] == list(FILES)
    assert repo.verify(manifest, identity.path).decrypted


def test_encryption_without_a_recipient_fails_before_the_server_is_asked(
    offline: Offline,
) -> None:
    server = offline.add_server(backup={"paths": PATHS})
    with pytest.raises(InvalidOptions, match="no recipient"):
        backup.fn(
            server_id=server.id, backup_id=uuid.uuid4(), options=BackupOptions(encryption=True)
        )
    assert offline.fake.commands == []


# --- the CLI ------------------------------------------------------------------------------------


def test_the_cli_asks_for_encryption_with_encrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, object]] = []

    async def enqueue(
        job_type: object, parameters: dict[str, object], priority: object, due: object
    ) -> object:
        sent.append(parameters)
        return Enqueued(job_id=uuid.uuid4(), deployment="x/x", queue="pool/queue", parameters={})

    monkeypatch.setattr(cli, "enqueue", enqueue)
    result = runner.invoke(cli.app, ["backup", str(uuid.uuid4()), "--encrypt"])
    assert result.exit_code == 0, result.output
    assert sent[0]["options"] == {"backup_type": "full", "compression": False, "encryption": True}


def test_the_cli_verifies_and_restores_with_the_identity(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, manifest = encrypted_backup(tmp_path, identity)
    monkeypatch.setenv("MM_BACKUP_ROOT", str(repo.root))
    backup_id = str(manifest.backup_id)

    stored = runner.invoke(cli.app, ["verify", backup_id])
    assert stored.exit_code == 0, stored.output
    assert "stored bytes checked, not decrypted (no --identity)" in stored.stdout
    decrypted = runner.invoke(cli.app, ["verify", backup_id, "--identity", str(identity.path)])
    assert decrypted.exit_code == 0, decrypted.output
    assert (
        "2 files" in decrypted.stdout and "decrypted and its plaintext checked" in decrypted.stdout
    )

    refused = runner.invoke(cli.app, ["restore", backup_id, str(tmp_path / "r")])
    assert refused.exit_code == 2  # bad input: no identity given
    assert "needs its age identity (--identity FILE or MM_BACKUP_IDENTITY)" in refused.stderr
    # MM_BACKUP_IDENTITY stands in for --identity.
    monkeypatch.setenv("MM_BACKUP_IDENTITY", str(identity.path))
    get_settings.cache_clear()  # as a new process of the CLI would read it
    restored = runner.invoke(cli.app, ["restore", backup_id, str(tmp_path / "r")])
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "r" / "srv/app/a.txt").read_bytes() == FILES["srv/app/a.txt"]


def test_a_listing_that_finds_no_room_fails_the_backup_as_a_full_repository() -> None:
    """The tap's `each` writes the listing on the tap's own thread: a full disk there fails
    `finish` (not the thread alone, which would leave the listing cut and the backup whole)."""

    def no_room(member: Member) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    tap = PlaintextTap("none", no_room)
    data = tar_bytes(FILES) * 40  # more than a pipe holds: the tap must keep reading
    for start in range(0, len(data), 4096):
        tap.feed(data[start : start + 4096])
    with pytest.raises(RepositoryFull, match="disk is full"):
        tap.finish()
