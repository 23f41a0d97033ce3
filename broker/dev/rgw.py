"""A second local S3-compatible store: Ceph RGW, as a one-node cluster on loopback.

For people whose production store is Ceph, and so that every store test runs against two
stores that enforce POST policies differently (docs/LOCAL.md has the matrix). It needs Debian's
``ceph-mon``, ``ceph-osd`` and ``radosgw`` packages (``scripts/install-ceph.sh``) and starts, in
about 12 seconds:

- a monitor (``ceph-mon``) on ``host:mon_port``, messenger v2 only, no cephx;
- one OSD (``ceph-osd``) with the ``memstore`` object store: **every object lives in memory and
  is gone when the cluster stops**; pools of size 1;
- ``radosgw`` serving S3 (and the SNS-style topic API for bucket notifications) on
  ``host:rgw_port``;
- one S3 user, ``broker``, whose keys are generated on the first start and kept in
  ``data_dir/credentials.json`` (created with ``radosgw-admin user create``).

Layout of ``data_dir``: ``ceph.conf``, ``credentials.json``, ``keyring``, ``monmap``, ``log/``
(one log per daemon, plus ``<daemon>.out`` with its console output), and ``mon/``, ``osd/``,
``run/`` (rebuilt at every start: the data is in memory anyway).

:class:`Rgw` has the same surface as :class:`broker.dev.store.Store` (``start``, ``stop``,
``endpoint_url``, ``s3_client``, ``ensure_bucket``, ``set_lifecycle``, ``config.access_key`` ...),
so tests and ``make run`` use either. Events: :meth:`Rgw.notify` points a bucket's object-created
events at an HTTP endpoint (the broker's ``POST /events/s3``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.dev.store import (
    ENV_BASE_PORT,
    ENV_S3_PORT,
    LocalStoreConfig,
    S3Endpoint,
    StoreError,
    _load_or_create_credentials,
    _int_env,
    _tail,
    port_is_free,
)
from broker.errors import StoreUnavailable
from broker.s3.store import S3Store

KIND = "rgw"
NAME = "Ceph RGW"
DEFAULT_RGW_PORT = 8334
DEFAULT_MON_PORT = 19340
#: The Debian packages that hold the programs below (scripts/install-ceph.sh installs them).
PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
USER = "broker"
#: Bytes the in-memory OSD may hold (it takes memory only as objects arrive).
MEMSTORE_BYTES = 4 * 1024 * 1024 * 1024
LOG_DIR = "log"


def find_programs() -> dict[str, str]:
    """Every Ceph program the cluster needs, by name; StoreError naming how to install the missing ones."""
    found = {name: shutil.which(name) for name in PROGRAMS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise StoreError(
            f"Ceph RGW cannot start: {', '.join(missing)} not found on PATH; install Debian's "
            f"{' '.join(PACKAGES)} packages: `bash scripts/install-ceph.sh` (runs "
            f"`apt-get install -y --no-install-recommends {' '.join(PACKAGES)}`)"
        )
    return {name: str(path) for name, path in found.items()}


@dataclass
class RgwConfig(LocalStoreConfig):
    """Where the cluster keeps its files, the two ports it binds, and the S3 user's keys."""

    s3_port: int = DEFAULT_RGW_PORT
    mon_port: int = DEFAULT_MON_PORT

    @classmethod
    def generate(cls, data_dir: str | os.PathLike[str], *, s3_port: int = DEFAULT_RGW_PORT,
                 mon_port: int = DEFAULT_MON_PORT, host: str = "127.0.0.1") -> RgwConfig:
        """A config whose keys are read from data_dir, or generated and saved there."""
        data = Path(data_dir)
        access_key, secret_key = _load_or_create_credentials(data)
        return cls(data, access_key, secret_key, host, s3_port, mon_port)

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> RgwConfig:
        """Like generate(), with the S3 port from BROKER_STORE_PORT and the monitor's from BROKER_STORE_BASE_PORT."""
        env = os.environ if environ is None else environ
        return cls.generate(data_dir, s3_port=_int_env(env, ENV_S3_PORT, DEFAULT_RGW_PORT),
                            mon_port=_int_env(env, ENV_BASE_PORT, DEFAULT_MON_PORT))

    def all_ports(self) -> dict[str, int]:
        """Every port the cluster listens on by role (the OSD binds ports the kernel picks)."""
        return {"s3": self.s3_port, "monitor": self.mon_port}

    def ceph_conf(self, fsid: str) -> str:
        """The cluster's ceph.conf: one monitor, one memstore OSD, radosgw; no cephx, messenger v2 only."""
        d = self.data_dir
        return f"""\
# Written at each start: a one-node Ceph cluster on loopback for the broker's tests and make run.
[global]
fsid = {fsid}
mon host = v2:{self.host}:{self.mon_port}
mon initial members = a
public addr = {self.host}
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms bind msgr1 = false
ms bind msgr2 = true
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/{LOG_DIR}/$name.log
log to stderr = false
err to stderr = true
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd op num shards = 2
osd op num threads per shard = 2
mon allow pool delete = true
# Each map change waits paxos propose interval (1 s by default); radosgw makes about ten at its first start.
paxos propose interval = 0.01
paxos min wait = 0.001
# radosgw's first requests wait for the OSD to boot; its client looks again every tick (5 s by default).
objecter tick interval = 0.2
[client]
ms mon client mode = crc
auth client required = none
[client.rgw.a]
rgw frontends = beast endpoint={self.host}:{self.s3_port}
rgw enable apis = s3, admin, notifications
rgw data = {d}/rgw
rgw thread pool size = 64
rgw dns name = {self.host}
"""


class Rgw(S3Endpoint):
    """A one-node Ceph cluster with radosgw serving S3 on config.s3_port (started by start())."""

    kind = KIND
    name = NAME

    def __init__(self, config: RgwConfig) -> None:
        self.config = config
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._programs: dict[str, str] = {}
        #: Seconds each start step took (``make test`` reports them; so does the fixture).
        self.timings: dict[str, float] = {}

    # -- paths and addresses -------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:8334``."""
        return self.config.endpoint_url

    @property
    def conf_path(self) -> Path:
        """The cluster's ceph.conf."""
        return self.config.data_dir / "ceph.conf"

    @property
    def log_path(self) -> Path:
        """radosgw's log (the monitor's and the OSD's are next to it)."""
        return self.config.data_dir / LOG_DIR / "client.rgw.a.log"

    @property
    def running(self) -> bool:
        """True while every daemon start() started is alive."""
        return bool(self._processes) and all(p.poll() is None for p in self._processes.values())

    @property
    def pid(self) -> int | None:
        """radosgw's process id, if it runs."""
        process = self._processes.get("radosgw")
        return process.pid if process is not None and process.poll() is None else None

    def bucket_url(self, bucket: str) -> str:
        """The path-style URL of a bucket, where browsers POST uploads."""
        return f"{self.endpoint_url}/{bucket}"

    # -- life cycle ----------------------------------------------------------

    def start(self, timeout: float = 60) -> Rgw:
        """Build and start the cluster, create the S3 user, and wait until S3 answers signed requests."""
        if self._processes:
            raise StoreError(f"the RGW cluster is already running at {self.endpoint_url}")
        self._programs = find_programs()
        c = self.config
        for role, port in c.all_ports().items():
            if not port_is_free(c.host, port):
                env = ENV_S3_PORT if role == "s3" else ENV_BASE_PORT
                raise StoreError(
                    f"port {port} ({role}) on {c.host} is already in use, so Ceph RGW cannot start; "
                    f"stop the program listening there (another store?) or choose another port with {env}"
                )
        deadline = time.monotonic() + timeout
        atexit.register(self.stop)
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _step(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 2)

    def _start(self, deadline: float) -> None:
        c = self.config
        d = c.data_dir
        for sub in ("mon", "osd", "run", "rgw", LOG_DIR):
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf_path.write_text(c.ceph_conf(fsid), encoding="utf-8")
        t = time.monotonic()
        self._run("ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *", conf=False)
        self._run("monmaptool", "--create", "--clobber", "--fsid", fsid,
                  "--addv", "a", f"[v2:{c.host}:{c.mon_port}]", str(d / "monmap"), conf=False)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--keyring", str(d / "keyring"))
        self._spawn("ceph-mon", "-f", "-i", "a")
        self._step("monitor", t)
        t = time.monotonic()
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "--connect-timeout", str(max(5, int(deadline - time.monotonic()))),
                           "osd", "new", osd_uuid).strip()
        if not osd_id.isdigit():
            raise StoreError(f"`ceph osd new` answered {osd_id!r}, not an OSD id; see {d / LOG_DIR}")
        (d / "osd" / f"ceph-{osd_id}").mkdir(parents=True, exist_ok=True)
        self._run("ceph-osd", "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid)
        self._spawn("ceph-osd", "-f", "-i", osd_id)
        self._step("osd", t)
        t = time.monotonic()
        self._spawn("radosgw", "-f", "-n", "client.rgw.a")
        self._wait_http(deadline)
        self._step("radosgw", t)
        t = time.monotonic()
        self._run("radosgw-admin", "-n", "client.rgw.a", "user", "create", f"--uid={USER}",
                  f"--display-name={USER}", f"--access-key={c.access_key}", f"--secret={c.secret_key}")
        self._wait_signed(deadline)
        self._step("user", t)

    def _command(self, program: str, args: Sequence[str], conf: bool = True) -> list[str]:
        return [self._programs[program], *(["-c", str(self.conf_path)] if conf else []), *args]

    def _run(self, program: str, *args: str, conf: bool = True) -> str:
        command = self._command(program, args, conf)
        shown = " ".join("--secret=..." if a.startswith("--secret=") else a for a in command)  # never the key
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.config.data_dir)
        except subprocess.TimeoutExpired:
            raise StoreError(f"`{shown}` did not finish within 60 s; "
                             f"logs: {self.config.data_dir / LOG_DIR}") from None
        if done.returncode != 0:
            raise StoreError(f"`{shown}` failed with exit code {done.returncode}:\n"
                             f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def _spawn(self, program: str, *args: str) -> None:
        out = self.config.data_dir / LOG_DIR / f"{program}.out"
        with open(out, "ab") as log:  # the child keeps its own copy of the descriptor
            self._processes[program] = subprocess.Popen(
                self._command(program, args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.config.data_dir, start_new_session=True)

    def _check_alive(self) -> None:
        for program, process in self._processes.items():
            code = process.poll()
            if code is not None:
                logs = self.config.data_dir / LOG_DIR
                raise StoreError(f"{program} exited with code {code} while Ceph RGW was starting; "
                                 f"{logs / (program + '.out')} ends with:\n{_tail(logs / (program + '.out'))}\n"
                                 f"(all logs: {logs})")

    def _wait_http(self, deadline: float) -> None:
        import urllib.error
        import urllib.request

        last = "no answer yet"
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=2) as answer:
                    answer.read()
                return
            except urllib.error.HTTPError:
                return  # radosgw answered (an anonymous request may be refused): it serves
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise StoreError(f"radosgw did not answer at {self.endpoint_url} in time (last error: {last}); "
                                 f"its log {self.log_path} ends with:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def _wait_signed(self, deadline: float) -> None:
        probe = S3Store(self.s3_client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
        while True:
            self._check_alive()
            try:
                probe.list_buckets()
                return
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise StoreError(f"radosgw refused the user {USER}'s keys: {exc.message}; "
                                     f"its log {self.log_path} ends with:\n{_tail(self.log_path)}") from None
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """Stop radosgw, the OSD and the monitor (in that order): SIGTERM, then SIGKILL after timeout."""
        atexit.unregister(self.stop)
        processes, self._processes = self._processes, {}
        for program in ("radosgw", "ceph-osd", "ceph-mon"):
            process = processes.get(program)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- clients and buckets: S3Endpoint's; and notifications ---------------------

    def notify(self, bucket: str, push_endpoint: str, prefixes: Sequence[str] = ("",)) -> str:
        """Send ``bucket``'s object-created events under ``prefixes`` to ``push_endpoint`` (HTTP POST of
        S3 event records); returns the topic's ARN."""
        from broker.s3.notify import subscribe_http

        try:
            return subscribe_http(self.endpoint_url, self.config.access_key, self.config.secret_key,
                                  bucket=bucket, topic=f"{bucket}-verifier", push_endpoint=push_endpoint,
                                  prefixes=list(prefixes))
        except Exception as exc:  # noqa: BLE001 - botocore's errors, named in the message
            raise StoreError(f"cannot point {bucket}'s events at the verifier: {type(exc).__name__}: {exc}") from exc


__all__ = ["DEFAULT_MON_PORT", "DEFAULT_RGW_PORT", "PACKAGES", "Rgw", "RgwConfig", "find_programs"]


if __name__ == "__main__":  # python -m broker.dev.rgw DIR: start a cluster, print its timings, stop it
    import sys
    import tempfile

    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="rgw-"))
    began = time.monotonic()
    with Rgw(RgwConfig.generate(where)) as rgw:
        print(f"up in {time.monotonic() - began:.1f} s at {rgw.endpoint_url}: {rgw.timings}")
