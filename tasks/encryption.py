"""Archives encrypted to age public keys while they stream in; read back with an identity.

Writing (a backup, on a host that holds no private key):

    ssh stdout --pipe--> pump thread --stdin--> `age --encrypt -r KEY...` --> archive file
                          |  sha256 of the plaintext                  (`HashingWriter`: the
                          '--pipe--> [zstd -dc] --> listing thread      stored bytes' sha256,
                                     (`archive_listing.read_members`)   read back behind age)

`EncryptingWriter` is the `tasks.atomic.ArchiveSink` the transports write into, so the SSH
layer is the same for plain and encrypted archives. The `age` binary rather than pyrage: in a
process of its own, the whole pipeline took 0.7x the CPU it took with pyrage's `encrypt_io` in
ours, and on two cores shared with ssh, sshd and tar CPU is throughput (BENCHMARKS.md,
"Encrypted backups"); the file is what the `age` CLI reads, so no lock-in either way.

Reading (verify and restore, by the CLI with the operator's identity): `decrypting` streams
`age --decrypt`'s plaintext; `read_plaintext` hashes it and lists its members as the backup did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tasks.archive_listing import Member, read_members
from tasks.atomic import HashingWriter
from tasks.core.errors import ArchiveInvalid, InvalidOptions, JobError
from tasks.lifeline import tied_to_this_process
from tasks.remote import NO_ROOM, repository_full

#: Bytes moved per read from a pipe.
CHUNK = 1 << 20
#: Pipe buffer asked for (Linux's default ceiling, /proc/sys/fs/pipe-max-size): fewer wake-ups.
PIPE_SIZE = 1 << 20
#: Bytes of a helper's stderr kept for its error message.
STDERR_KEEP = 4096


def age_binary() -> str:
    """The `age` program of this host; `InvalidOptions` before any transfer when there is none."""
    found = shutil.which("age")
    if found is None:
        raise InvalidOptions(
            "encryption needs the `age` program on the backup host (Debian package `age`);"
            " none is on PATH"
        )
    return found


def check_tools(compression: str) -> None:
    """What an encrypted backup of this compression runs on the backup host is there."""
    age_binary()
    if compression == "zstd" and shutil.which("zstd") is None:
        # The members are listed from the plaintext at backup time, when zstd must unpack it.
        raise InvalidOptions(
            "an encrypted zstd backup needs `zstd` on the backup host to list its members;"
            " install it or ask for gzip"
        )


def _big_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # a smaller ceiling only costs wake-ups
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stderr_of(process: subprocess.Popen[bytes]) -> str:
    """The tail of a helper's stderr, read to its end and closed (empty the second time)."""
    if process.stderr is None or process.stderr.closed:
        return ""
    with process.stderr:
        text = process.stderr.read()[-STDERR_KEEP:]
    return text.decode("utf-8", "replace").strip()


class PlaintextTap:
    """The sha256 and the member listing of a tar stream (as the server sent it: compressed
    or not), fed chunk by chunk; listed in a thread of its own, from a pipe.

    `each`, when given, gets every member in order on that thread (a backup writes them to its
    listing), and none is kept; without it `finish` returns them.
    """

    def __init__(self, compression: str, each: Callable[[Member], object] | None = None) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._members: list[Member] = []
        self._each = self._members.append if each is None else each
        self._error: JobError | OSError | None = None
        self._unzstd: subprocess.Popen[bytes] | None = None
        listing_read, self._feed = _big_pipe()
        if compression == "zstd":
            # read_members reads gzip itself; zstd is unpacked by the zstd program.
            self._unzstd = subprocess.Popen(
                ["zstd", "-dcq"],
                stdin=listing_read,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=tied_to_this_process(),
            )
            os.close(listing_read)
            assert self._unzstd.stdout is not None
            stream: IO[bytes] = self._unzstd.stdout
        else:
            # Closed by the listing thread.
            stream = open(listing_read, "rb", buffering=CHUNK)
        self._lister = threading.Thread(
            target=self._list,
            args=(stream, "gzip" if compression == "gzip" else "none"),
            name="archive listing",
            daemon=True,
        )
        self._lister.start()

    def feed(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.size += len(chunk)
        if self._feed >= 0:
            try:
                _write_all(self._feed, chunk)
            except BrokenPipeError:
                # zstd quit (what it unpacked is not zstd): `finish` says why.
                self._close_feed()

    def finish(self) -> list[Member]:
        """The members (none if `each` took them), once the stream has ended; `ArchiveInvalid`
        if it was not whole tar."""
        self._close_feed()
        self._lister.join()
        if self._unzstd is not None:
            status = self._unzstd.wait()
            message = _stderr_of(self._unzstd)
            if status != 0 and self._error is None:
                self._error = ArchiveInvalid(f"zstd could not unpack the archive: {message}")
        if self._error is not None:
            raise self._error
        return self._members

    def abort(self) -> None:
        """Stop listing; called once nothing feeds it any more."""
        self._close_feed()
        if self._unzstd is not None:
            self._unzstd.kill()
            self._unzstd.wait()
            _stderr_of(self._unzstd)
        self._lister.join()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def _close_feed(self) -> None:
        if self._feed >= 0:
            os.close(self._feed)
            self._feed = -1

    def _list(self, stream: IO[bytes], compression: str) -> None:
        with stream:
            try:
                for member in read_members(stream, compression):
                    self._each(member)
            except ArchiveInvalid as exc:
                self._error = exc
            except OSError as exc:
                # `each`'s own write (the listing's file on a full disk): the backup fails
                # with it at `finish`, rather than this thread ending with the listing cut.
                self._error = repository_full(self.size) if exc.errno in NO_ROOM else exc
            # tar's padding after its end, or all the rest after an error: read, so that the
            # feeding side never blocks on a full pipe.
            with contextlib.suppress(OSError):
                while stream.read(CHUNK):
                    pass


class EncryptingWriter:
    """The `ArchiveSink` of an encrypted archive: plaintext in, age's output into `archive`.

    `size` and `sha256` are the plaintext's (what the server sent); `archive` has counted and
    hashed the stored bytes, and `members` holds the listing, once `finish` returned, unless
    `each` took every member as it came (`PlaintextTap`). Made and finished by `encrypting`.
    """

    def __init__(
        self,
        archive: HashingWriter,
        recipients: Sequence[str],
        compression: str,
        each: Callable[[Member], object] | None = None,
    ) -> None:
        argv = [age_binary(), "--encrypt"]
        for recipient in recipients:
            argv += ["--recipient", recipient]
        self._archive = archive
        self._reported = 0
        self._failure: BaseException | None = None
        self._age_error: JobError | None = None
        self.members: list[Member] = []
        self.tap = PlaintextTap(compression, each)
        self._plain_read, self._plain_write = _big_pipe()
        age_read, self._age_stdin = _big_pipe()
        try:
            self._age = subprocess.Popen(
                argv,
                stdin=age_read,
                stdout=archive.fileno(),
                stderr=subprocess.PIPE,
                preexec_fn=tied_to_this_process(),
            )
        finally:
            os.close(age_read)
        self._pump = threading.Thread(target=self._move, name="encrypt", daemon=True)
        self._pump.start()

    @property
    def size(self) -> int:
        return self.tap.size

    @property
    def sha256(self) -> str:
        return self.tap.sha256

    def fileno(self) -> int:
        return self._plain_write

    def storage_fd(self) -> int:
        return self._archive.fileno()

    def write(self, data: bytes) -> None:
        try:
            _write_all(self._plain_write, data)
        except BrokenPipeError:
            # The pump stopped because age did: age's reason, not the pipe's.
            raise self._age_failure() from None
        self._archive.catch_up()

    def catch_up(self) -> int:
        """Plaintext bytes encrypted since the last call; hashes what age stored meanwhile."""
        self._archive.catch_up()
        moved = self.tap.size - self._reported
        self._reported += moved
        return moved

    def finish(self) -> None:
        """Wait for the end of the stream and of age; then the stored bytes are all hashed and
        `members` is the listing."""
        self._close_plain_write()
        self._pump.join()
        if self._age.wait() != 0 or self._failure is not None:
            self.tap.abort()
            raise self._age_failure()
        _stderr_of(self._age)
        while self._archive.catch_up():
            pass
        self.members = self.tap.finish()

    def abort(self) -> None:
        """Stop age and the threads after a failed transfer; the caller removes the file."""
        self._close_plain_write()
        self._age.kill()
        # Without a timeout: the tap's pipe is closed next, and a pump still writing to that fd
        # number could write into whatever file reuses it. It ends promptly: age is gone (EPIPE)
        # and the sender with it (EOF).
        self._pump.join()
        self._age.wait()
        _stderr_of(self._age)
        self.tap.abort()

    def failure(self) -> JobError | None:
        """Our own failure, if age or the pump stopped early: then the cause of the broken
        pipe or link a transport reports."""
        if self._failure is not None or self._age.poll() not in (None, 0):
            return self._age_failure()
        return None

    def _age_failure(self) -> JobError:
        if self._age_error is None:
            self._age.wait()
            message = _stderr_of(self._age)
            if "no space left on device" in message.lower():
                self._age_error = repository_full(self.tap.size)
            else:
                reason = message or repr(self._failure)
                self._age_error = ArchiveInvalid(
                    f"age --encrypt failed (status {self._age.returncode}): {reason}"
                )
        return self._age_error

    def _move(self) -> None:
        try:
            while chunk := os.read(self._plain_read, CHUNK):
                self.tap.feed(chunk)
                _write_all(self._age_stdin, chunk)
        except BaseException as exc:
            self._failure = exc
        finally:
            # Closing the read end fails the sender's next write at once (EPIPE), rather than
            # letting it stream on into a pipe nobody reads.
            os.close(self._plain_read)
            os.close(self._age_stdin)

    def _close_plain_write(self) -> None:
        if self._plain_write >= 0:
            os.close(self._plain_write)
            self._plain_write = -1


@contextlib.contextmanager
def encrypting(
    archive: HashingWriter,
    recipients: Sequence[str],
    compression: str,
    each: Callable[[Member], object] | None = None,
) -> Iterator[EncryptingWriter]:
    """An `EncryptingWriter` in front of `archive` (its members to `each`, when given),
    finished when the block ends.

    When the block fails because age did (a full disk, say), the error raised is age's, not the
    broken pipe or link the transport saw as its consequence.
    """
    writer = EncryptingWriter(archive, recipients, compression, each)
    try:
        yield writer
    except BaseException as exc:
        own = writer.failure()
        writer.abort()
        if own is not None and own is not exc:
            raise own from exc
        raise
    writer.finish()


@contextlib.contextmanager
def decrypting(archive: Path, identity: Path) -> Iterator[IO[bytes]]:
    """The plaintext of an age-encrypted `archive`, as a stream; `ArchiveInvalid` when age
    cannot decrypt it (a wrong identity, a damaged or cut file)."""
    if not identity.is_file():
        raise InvalidOptions(f"identity file {identity} not found")
    process = subprocess.Popen(
        [age_binary(), "--decrypt", "--identity", str(identity), str(archive)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=tied_to_this_process(),
    )
    assert process.stdout is not None
    try:
        with process.stdout:
            yield process.stdout
            while process.stdout.read(CHUNK):
                pass
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.wait() != 0:
        raise ArchiveInvalid(f"age could not decrypt {archive}: {_stderr_of(process)}")
    _stderr_of(process)


@dataclass(frozen=True)
class Plaintext:
    """An encrypted archive's content as its identity shows it."""

    sha256: str
    size: int
    members: list[Member]


def read_plaintext(archive: Path, identity: Path, compression: str) -> Plaintext:
    """Decrypt `archive` once: the plaintext's sha256 and size, and its members."""
    tap = PlaintextTap(compression)
    try:
        with decrypting(archive, identity) as plain:
            while chunk := plain.read(CHUNK):
                tap.feed(chunk)
    except BaseException:
        tap.abort()
        raise
    return Plaintext(sha256=tap.sha256, size=tap.size, members=tap.finish())
