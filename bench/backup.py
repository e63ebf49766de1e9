"""Issue 21's goal 1: backup throughput against the best shell pipeline, same tree and cipher.

    uv run python -m bench.backup [--quick] [--rounds N] [--no-paramiko]

Starts an sshd on loopback (`deployments.system.local_target`) serving the cached tree of
`bench.tree`, then alternates, round by round (the order rotates each round):

- the reference: `ssh -c aes128-gcm@openssh.com -o Compression=no host TAR | tee file |
  sha256sum`, then an fsync of the file: the same remote tar (`tasks.backup.tar_command`), an
  archive with its sha256 and durable on disk, as ours is; the goal is ours >= 1.0x of it;
- ours: `tasks.backup.transfer_archive`, the function the backup flow's task runs (its body,
  `.fn`, outside Prefect): connect, stream, sha256, written atomically (fsync + rename);
- plain ssh, for information: the same ssh and remote tar with stdout redirected into a file
  (no digest, no fsync), the fastest a copy can be;
- ours encrypted: the same with the manifest's recipients set (one age key made for the run),
  so the tar streams through `age --encrypt` with its plaintext hashed and listed
  (`tasks.encryption`); its goal is >= 0.9x of ours plain, same tree, same rounds;
- for information, in the first two rounds: ours with `MM_SSH_CLIENT=paramiko`, the fallback.

Then zstd, two rounds, reported only (`tar ... | zstd -T0 -3 -q` against our `compression:
zstd`). Figures are medians of the rounds in MB/s of archive bytes, connect time included;
ratios are the median of each round's ratio (the two sides of a round ran back to back, so a
change in the machine's load between rounds cancels out). Dirty pages are flushed (`sync`)
before each timed transfer, so one side's writeback does not land in the other's time (ours
and the pipeline include their own fsync; plain ssh leaves its writeback untimed). The first
round checks that all sides wrote byte-identical archives (for zstd: the same tar; for the
encrypted one: the same tar once decrypted) and that the pipeline's sha256sum printed our
digest; each of our archives is checked against its size and sha256 every round.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.report import BenchConfig, Row, median, table
from bench.tree import FULL, QUICK, ensure_tree
from deployments.system.local_target import LocalTarget, descendants
from tasks import openssh
from tasks.backup import BackupPlan, tar_command, transfer_archive
from tasks.core.inventory import Server
from tasks.core.settings import get_settings
from tasks.progress import Progress
from tasks.repository import BackupRepository, Compression, Manifest, utcnow

CIPHER = "aes128-gcm@openssh.com"
#: Ours over the pipeline; encrypted over ours plain.
GOAL_RATIO = 1.0
ENCRYPTED_GOAL_RATIO = 0.9


class QuietProgress(Progress):
    """Progress that records nothing: the benchmark runs outside a flow run."""

    def _record(self, percent: float, message: str) -> None:
        pass


@dataclass
class Side:
    """One way of making the archive, and its time in each round it ran in."""

    name: str
    make: Callable[[], Path]
    #: Rounds it takes part in (the first ones); None: all of them.
    rounds: int | None = None
    seconds: dict[int, float] = field(default_factory=dict)
    #: CPU seconds both ends used in each round (`BackupBench.cpu_seconds`).
    cpu: dict[int, float] = field(default_factory=dict)

    def rate(self, size: int) -> float:
        """MB/s of the median round."""
        return size / median(list(self.seconds.values())) / 1e6

    def ratio(self, other: Side) -> float:
        """Median over the rounds both ran in of this side's speed over `other`'s: each round's
        two figures were taken minutes apart at most, so drifts of the load cancel out."""
        both = self.seconds.keys() & other.seconds.keys()
        return median([other.seconds[n] / self.seconds[n] for n in both])


def run(config: BenchConfig, *, paramiko: bool = True) -> list[Row]:
    spec = QUICK if config.quick else FULL
    tree = ensure_tree(spec)
    # The order rotates each round, so every side goes first as often over a multiple of four
    # rounds. The fallback is for information and joins the first two only; zstd is slow and
    # reported.
    rounds = config.rounds or (2 if config.quick else 4)
    info_rounds = min(rounds, 2)
    zstd_rounds = 1 if config.quick else 2
    with tempfile.TemporaryDirectory(prefix="mm-bench-backup-") as tmp:
        work = Path(tmp)
        target = LocalTarget(home=work / "target").start()
        try:
            bench = BackupBench(target, tree, work / "out")
            sides = [
                Side("pipeline", bench.pipeline),
                Side("ours", partial(bench.ours, "none", "auto")),
                Side("ssh", partial(bench.reference, "none")),
                Side("age", partial(bench.ours, "none", "auto", encrypted=True)),
            ]
            if paramiko:
                sides.append(Side("paramiko", partial(bench.ours, "none", "paramiko"), info_rounds))
            size = bench.compare("none", sides, rounds)
            rows = _rows("none", sides, size, spec.name, bench.our_path())
            sides = [
                Side("ssh", partial(bench.reference, "zstd")),
                Side("ours", partial(bench.ours, "zstd", "auto")),
            ]
            size = bench.compare("zstd", sides, zstd_rounds)
            return rows + _rows("zstd", sides, size, spec.name, bench.our_path())
        finally:
            target.stop()


class BackupBench:
    """All sides of the comparison against one sshd."""

    def __init__(self, target: LocalTarget, tree: Path, out: Path) -> None:
        self.target = target
        self.tree = tree
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        entry = target.server_entry(str(uuid.uuid4()), "bench", backup={"paths": [str(tree)]})
        self.server = Server.model_validate(entry)
        os.environ["MM_BACKUP_ROOT"] = str(self.out / "repository")
        #: The key pair of the encrypted side: made here, gone with the run's directory.
        self.identity = self.out / "identity.txt"
        subprocess.run(["age-keygen", "-o", str(self.identity)], check=True, capture_output=True)
        self.recipient = subprocess.run(
            ["age-keygen", "-y", str(self.identity)], check=True, capture_output=True, text=True
        ).stdout.strip()
        #: What the manifest of each of our archives says: size and sha256.
        self.expected: dict[Path, tuple[int | None, str | None]] = {}
        #: The digest the pipeline's sha256sum printed for its latest file.
        self.printed: str | None = None

    def our_path(self) -> str:
        """How `transfer_archive` streams from this server with the default settings."""
        reason = openssh.unusable(self.server)
        return "system ssh, aes128-gcm first" if reason is None else f"paramiko ({reason})"

    def cpu_seconds(self) -> float:
        """CPU used so far at both ends: this process, its children that were waited for (ssh),
        and the sshd's children it reaped (sessions with their tar and zstd)."""
        assert self.target.process is not None
        # A session's CPU reaches sshd's children times once sshd has reaped it.
        deadline = time.monotonic() + 5
        while descendants(self.target.process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        own = os.times()
        stat = Path(f"/proc/{self.target.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        sshd_children = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        return own.user + own.system + own.children_user + own.children_system + sshd_children

    def compare(self, compression: Compression, sides: list[Side], rounds: int) -> int:
        """Time every side `rounds` times, rotating who goes first; the archive size."""
        size = 0
        for n in range(rounds):
            # Rotate the order, so a drift in the machine's load hits every side alike.
            active = [side for side in sides if side.rounds is None or n < side.rounds]
            order = active[n % len(active) :] + active[: n % len(active)]
            files: dict[str, Path] = {}
            for side in order:
                os.sync()
                cpu = self.cpu_seconds()
                began = time.perf_counter()
                files[side.name] = side.make()
                side.seconds[n] = time.perf_counter() - began
                side.cpu[n] = self.cpu_seconds() - cpu
            size = files["ours"].stat().st_size
            for path in files.values():
                if path in self.expected and self.expected.pop(path) != (
                    path.stat().st_size,
                    _file_digest(path),
                ):
                    raise AssertionError(f"{path} does not match its manifest's size and sha256")
            if n == 0:
                self.check_same(compression, files)
            for path in files.values():
                path.unlink()
            print(
                f"  {compression} round {n + 1}: "
                + ", ".join(f"{s.name} {size / s.seconds[n] / 1e6:.0f} MB/s" for s in active),
                flush=True,
            )
        return size

    def reference(self, compression: Compression) -> Path:
        """The system ssh into a file: no digest, no fsync."""
        remote = shlex.join(tar_command([str(self.tree)], "none"))
        if compression == "zstd":
            remote += " | zstd -T0 -3 -q"
        path = self.out / f"reference.{compression}"
        with path.open("wb") as out:
            subprocess.run(self._ssh(remote), stdout=out, check=True)
        return path

    def pipeline(self) -> Path:
        """`ssh ... tar | tee file | sha256sum`, then fsync the file: what a shell does for an
        archive with its digest, durable, as our atomic write is."""
        path = self.out / "pipeline.none"
        remote = shlex.join(tar_command([str(self.tree)], "none"))
        ssh = subprocess.Popen(self._ssh(remote), stdout=subprocess.PIPE)
        tee = subprocess.Popen(["tee", str(path)], stdin=ssh.stdout, stdout=subprocess.PIPE)
        sha256sum = subprocess.Popen(["sha256sum"], stdin=tee.stdout, stdout=subprocess.PIPE)
        # Only the next stage holds each pipe, so a stage that dies ends the ones before it.
        assert ssh.stdout is not None and tee.stdout is not None
        ssh.stdout.close()
        tee.stdout.close()
        printed, _ = sha256sum.communicate()
        codes = [ssh.wait(), tee.wait(), sha256sum.returncode]
        if any(codes):
            raise RuntimeError(f"ssh | tee | sha256sum exited {codes}")
        with path.open("rb") as written:
            os.fsync(written.fileno())
        self.printed = printed.split()[0].decode()
        return path

    def _ssh(self, remote: str) -> list[str]:
        """The system ssh running `remote` on the target, cipher pinned, no compression."""
        target = self.target
        return [
            *("ssh", "-F", "/dev/null", "-c", CIPHER, "-o", "Compression=no"),
            *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
            *("-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "IdentitiesOnly=yes"),
            *("-i", str(target.user_key), "-p", str(target.port)),
            f"{target.username}@127.0.0.1",
            remote,
        ]

    def ours(self, compression: Compression, client: str, *, encrypted: bool = False) -> Path:
        """`transfer_archive` with `MM_SSH_CLIENT=client`, encrypted to `recipient` if asked;
        checks size and sha256 afterwards."""
        os.environ["MM_SSH_CLIENT"] = client
        get_settings.cache_clear()
        recipients = [self.recipient] if encrypted else []
        manifest = _manifest(self.server, compression, recipients)
        plan = BackupPlan(compression=compression, estimated_bytes=1 << 30, estimated_files=0)
        done = transfer_archive.fn(self.server, manifest, plan, QuietProgress())
        path = BackupRepository(get_settings().paths.backup_root).archive_path(done)
        # Renamed, so no other side's file name clashes; checked outside the timed part below.
        checked = path.with_name(f"{client}.{compression}{'.age' if encrypted else ''}")
        path.rename(checked)
        self.expected[checked] = (done.size, done.sha256)
        return checked

    def check_same(self, compression: Compression, files: dict[str, Path]) -> None:
        """Every side wrote the same archive (for zstd: the same tar inside; an encrypted one
        once decrypted), and the pipeline's sha256sum printed its digest."""
        digests = {name: self.tar_digest(compression, path) for name, path in files.items()}
        if len(set(digests.values())) != 1:
            raise AssertionError(f"the sides wrote different archives: {digests}")
        if "pipeline" in files and self.printed != digests["ours"]:
            raise AssertionError(f"sha256sum printed {self.printed}, ours is {digests['ours']}")

    def tar_digest(self, compression: Compression, path: Path) -> str:
        """sha256 of the tar inside `path`, streamed: decrypted and unpacked as needed."""
        stages = []
        if path.suffix == ".age":
            stages.append(shlex.join(["age", "--decrypt", "-i", str(self.identity), str(path)]))
        if compression == "zstd":
            stages.append("zstd -dcq" if stages else shlex.join(["zstd", "-dcq", str(path)]))
        if not stages:
            return _file_digest(path)
        pipeline = subprocess.Popen(" | ".join(stages), shell=True, stdout=subprocess.PIPE)
        assert pipeline.stdout is not None
        with pipeline.stdout:
            digest = hashlib.file_digest(pipeline.stdout, "sha256").hexdigest()
        if pipeline.wait() != 0:
            raise AssertionError(f"{path}: {' | '.join(stages)} failed")
        return digest


def _manifest(server: Server, compression: Compression, recipients: list[str]) -> Manifest:
    backup_id = uuid.uuid4()
    assert server.backup is not None
    return Manifest(
        backup_id=backup_id,
        server_id=server.id,
        server_name=server.name,
        job_type="backup:manual",
        compression=compression,
        paths=list(server.backup.paths),
        archive=BackupRepository.archive_name(backup_id, compression, encrypted=bool(recipients)),
        recipients=recipients,
        started_at=utcnow(),
    )


def _file_digest(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _rows(
    compression: Compression, sides: list[Side], size: int, tree: str, path: str
) -> list[Row]:
    by_name = {side.name: side for side in sides}
    ssh, ours = by_name["ssh"], by_name["ours"]
    rounds = len(ours.seconds)
    where = f"{tree} tree, {size / 1e9:.2f} GB archive, {rounds} alternating rounds"
    paired = "median of the rounds' ratios"
    if compression == "zstd":
        return [
            Row(
                f"backup throughput, zstd -3 ({where})",
                f"{ours.rate(size):.0f} MB/s",
                f"{ssh.rate(size):.0f} MB/s `ssh host 'tar \\| zstd -T0 -3' > file`",
                f"{ours.ratio(ssh):.2f}x",
                "reported",
                None,
            )
        ]
    ref = by_name["pipeline"]
    gigabytes = size / 1e9
    rows = [
        Row(
            f"backup throughput, tar + sha256 + atomic write ({where}; via {path}; {paired})",
            f"{ours.rate(size):.0f} MB/s",
            f"{ref.rate(size):.0f} MB/s `ssh -c {CIPHER} host tar \\| tee file \\| sha256sum`"
            " + fsync",
            f"{ours.ratio(ref):.2f}x",
            f">= {GOAL_RATIO}x",
            ours.ratio(ref) >= GOAL_RATIO,
        ),
        Row(
            f"backup throughput against plain `ssh -c {CIPHER} host tar > file` (no digest, no"
            " fsync)",
            f"{ours.rate(size):.0f} MB/s (ours, as above)",
            f"{ssh.rate(size):.0f} MB/s",
            f"{ours.ratio(ssh):.2f}x",
            "reported",
            None,
        ),
    ]
    if encrypted := by_name.get("age"):
        rows.append(
            Row(
                f"encrypted backup throughput, age to one recipient + plaintext sha256 + listing"
                f" ({len(encrypted.seconds)} rounds alternating with ours plain, same tree)",
                f"{encrypted.rate(size):.0f} MB/s",
                f"{ours.rate(size):.0f} MB/s ours plain (as above)",
                f"{encrypted.ratio(ours):.2f}x",
                f">= {ENCRYPTED_GOAL_RATIO}x",
                encrypted.ratio(ours) >= ENCRYPTED_GOAL_RATIO,
            )
        )
        rows.append(
            Row(
                "CPU of an encrypted backup, both ends, per GB (age, the plaintext's sha256 and"
                " listing added)",
                f"{median(list(encrypted.cpu.values())) / gigabytes:.2f} CPU-s/GB",
                f"{median(list(ours.cpu.values())) / gigabytes:.2f} CPU-s/GB ours plain",
                f"{median(list(ours.cpu.values())) / median(list(encrypted.cpu.values())):.2f}x",
                "reported",
                None,
            )
        )
    rows.append(
        Row(
            "CPU of a backup, both ends (sshd + tar, ssh, hashing), per GB, against the"
            " pipeline's: a transfer that has to share 2 busy cores runs at about the inverse"
            " ratio",
            f"{median(list(ours.cpu.values())) / gigabytes:.2f} CPU-s/GB",
            f"{median(list(ref.cpu.values())) / gigabytes:.2f} CPU-s/GB",
            f"{median(list(ref.cpu.values())) / median(list(ours.cpu.values())):.2f}x",
            "reported",
            None,
        )
    )
    if fallback := by_name.get("paramiko"):
        rows.append(
            Row(
                f"backup throughput, paramiko fallback (`MM_SSH_CLIENT=paramiko`; "
                f"{len(fallback.seconds)} rounds)",
                f"{fallback.rate(size):.0f} MB/s",
                f"{ref.rate(size):.0f} MB/s (the pipeline)",
                f"{fallback.ratio(ref):.2f}x",
                "reported",
                None,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the 128 MiB tree, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-paramiko", action="store_true", help="skip the fallback's figure")
    args = parser.parse_args()
    config = BenchConfig(quick=args.quick, rounds=args.rounds)
    print(table(run(config, paramiko=not args.no_paramiko)))


if __name__ == "__main__":
    main()
