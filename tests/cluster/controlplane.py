"""A real Kubernetes control plane on loopback, for the tests (DESIGN §9).

The binaries come from ``scripts/build-test-cluster``, which builds them from the Go module
proxy into a cache outside the clone (``${BATCHQ_CACHE:-~/.cache/batchq}``). This module
finds (or builds) them and runs, on 127.0.0.1 with free ports:

* etcd, data in the work dir;
* kube-apiserver: static token auth (one admin token in ``system:masters``), a serving
  certificate from a throw-away CA made here, a service-account key pair, RBAC;
* kube-controller-manager: job, garbage collector, namespace, service account (token),
  TTL-after-finished controllers, with the admin kubeconfig, no leader election;
* kube-scheduler, no leader election;
* kwok, the kubelet of fake nodes annotated ``kwok.x-k8s.io/node: fake``: its stages
  (``kwok-stages.yaml`` beside this file) run every scheduled pod, then complete or fail it
  by the pod's ``batchq.dev/simulate`` annotation, so the real Job controller marks Jobs
  Complete or Failed.

``start()`` returns once /readyz is ok, the fake nodes are Ready and the default service
account exists (the controller manager works). ``stop()`` ends every process (SIGTERM, then
SIGKILL to its process group) and leaves no orphans; children also die with the process that
started them (PR_SET_PDEATHSIG). Each process logs to ``<workdir>/<name>.log``.

Only the standard library is needed to run the control plane; ``cryptography`` is used for
the certificates when installed, else the ``openssl`` command.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest
    from kubernetes import client as k8s

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-test-cluster"
STAGES_FILE = Path(__file__).resolve().with_name("kwok-stages.yaml")
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Users besides the admin, one per reconciler replica in a test: the audit log names them.
REPLICA_USERS = ("batchq-replica-a", "batchq-replica-b")
LIMITED_USER = "batchq-limited"  # in no group: RBAC allows it nothing until a test binds it
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "ttl-after-finished-controller",
    # deploy/ has a PersistentVolumeClaim: without this its protection finalizer is never
    # taken off, and a namespace holding it is never deleted
    "persistentvolumeclaim-protection-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached; the message says which
    piece and carries the tail of its log."""


# --- binaries -----------------------------------------------------------------------------


def _missing(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def expected_bin_dir() -> Path:
    """The bin dir that ``scripts/build-test-cluster`` builds into (builds nothing)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def go_available() -> bool:
    """Whether a Go toolchain is there to build the binaries (as the build script looks)."""
    return bool(
        os.environ.get("BATCHQ_GO") or shutil.which("go") or Path("/usr/local/go/bin/go").is_file()
    )


def find_or_build_binaries(build: bool) -> Path | None:
    """The directory holding every control-plane binary.

    When some are missing: with ``build`` run ``scripts/build-test-cluster`` (a cold build
    takes a long while) and raise :class:`ControlPlaneError` naming the failed piece;
    without it return None.
    """
    bin_dir = expected_bin_dir()
    if not _missing(bin_dir):
        return bin_dir
    if not build:
        return None
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-60:])
        raise ControlPlaneError(
            f"scripts/build-test-cluster failed (exit {proc.returncode}):\n{tail}"
        )
    built = Path(proc.stdout.strip().splitlines()[-1])
    missing = _missing(built)
    if missing:
        raise ControlPlaneError(f"scripts/build-test-cluster left {missing} missing in {built}")
    return built


# --- small helpers --------------------------------------------------------------------


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free now, below the kernel's ephemeral range (32768 and up on Linux), so the
    outbound connections the components make while starting cannot take it before the one
    it is meant for binds it; never the same twice in one session."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port between 20000 and 32000 on 127.0.0.1")


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 200 * lines))
            data = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data.splitlines()[-lines:])


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the thread that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def _write_pki(d: Path) -> None:
    """A CA, an apiserver serving cert signed by it, and a service-account key pair:
    ca.crt ca.key serving.crt serving.key sa.key sa.pub in ``d``."""
    try:
        _write_pki_cryptography(d)
    except ImportError:
        _write_pki_openssl(d)
    for key in ("ca.key", "serving.key", "sa.key"):
        (d / key).chmod(0o600)


SERVING_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1", "10.0.0.1")


def _write_pki_cryptography(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchq-test-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVING_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = ec.generate_private_key(ec.SECP256R1())
    (d / "ca.key").write_bytes(pem_key(ca_key))
    (d / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (d / "serving.key").write_bytes(pem_key(key))
    (d / "serving.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "sa.key").write_bytes(pem_key(sa_key))
    (d / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _write_pki_openssl(d: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("certificates: neither python 'cryptography' nor 'openssl'")

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], cwd=d, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
    ]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
        "-subj", "/CN=batchq-test-ca", *ca_ext)  # fmt: skip
    sans = ",".join([f"DNS:{n}" for n in SERVING_DNS] + [f"IP:{ip}" for ip in SERVING_IPS])
    (d / "serving.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={sans}\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    run("req", "-new", *ec, "-keyout", "serving.key", "-out", "serving.csr",
        "-subj", "/CN=kube-apiserver")  # fmt: skip
    ca = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
    run("x509", "-req", "-in", "serving.csr", *ca, "-days", "7",
        "-extfile", "serving.ext", "-out", "serving.crt")  # fmt: skip
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key")
    run("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")


# --- the control plane ------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class _Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``workdir`` holds the
    etcd data, certificates, kubeconfig and ``<name>.log`` per process.
    """

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path,
        *,
        nodes: Sequence[str] = ("kwok-node-0", "kwok-node-1"),
        startup_timeout: float = 120.0,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.nodes = tuple(nodes)
        self.startup_timeout = startup_timeout
        self.token = "batchq-admin-" + os.urandom(16).hex()
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.audit_log = self.workdir / "audit.log"  # the replica users' writes, JSON lines
        self.user_tokens = {u: f"{u}-{os.urandom(16).hex()}"
                            for u in (*REPLICA_USERS, LIMITED_USER)}
        self._apiserver_args: list[str] = []
        self._ports: _Ports | None = None
        self._procs: list[_Process] = []
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self.startup_seconds: float | None = None

    # -- public surface ------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The apiserver URL, https://127.0.0.1:PORT."""
        if self._ports is None:
            raise ControlPlaneError("the control plane is not started")
        return f"https://127.0.0.1:{self._ports.apiserver}"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every process and wait until the cluster runs pods; on any failure stop
        what was started and raise :class:`ControlPlaneError` with the logs' tails."""
        missing = _missing(self.bin_dir)
        if missing:
            raise ControlPlaneError(f"binaries missing in {self.bin_dir}: {missing}")
        if self._procs:
            raise ControlPlaneError("already started")
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        try:
            atexit.register(self.stop)
            self._prepare()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._start_controllers()
            self._create_nodes()
            self._wait_ready(deadline)
        except BaseException as exc:
            logs = self.logs_tail()
            self.stop()
            if isinstance(exc, ControlPlaneError):
                raise ControlPlaneError(f"{exc}\n{logs}") from None
            if isinstance(exc, OSError):  # e.g. an HTTP error creating the nodes
                raise ControlPlaneError(f"start-up failed: {exc!r}\n{logs}") from exc
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process groups, wait up to ``timeout`` s, then SIGKILL; idempotent.

        etcd goes last: kube-apiserver does not finish shutting down without it.
        """
        with self._lock:
            procs, self._procs = self._procs, []
        atexit.unregister(self.stop)
        clients = [p for p in procs if p.name != "etcd"]
        for wave in (clients, [p for p in procs if p.name == "etcd"]):
            for p in wave:
                self._signal(p, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for p in wave:
                try:
                    p.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._signal(p, signal.SIGKILL)
                    p.popen.wait()
                # Anything the process left in its group goes too.
                self._signal(p, signal.SIGKILL)

    def logs_tail(self, lines: int = 25) -> str:
        """The last lines of every process log, for failure messages."""
        parts = []
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                     "kwok"):  # fmt: skip
            log = self.workdir / f"{name}.log"
            if log.exists():
                parts.append(f"----- {log} (last {lines} lines) -----\n{_tail(log, lines)}")
        return "\n".join(parts)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster."""
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def client_configuration(self) -> k8s.Configuration:
        """A ``kubernetes.client.Configuration`` for the official Python client."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self) -> k8s.ApiClient:
        """A new ``kubernetes.client.ApiClient`` talking to this cluster (close it after)."""
        from kubernetes import client

        return client.ApiClient(self.client_configuration())

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One authenticated JSON request to the apiserver; returns the decoded body."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as resp:
            raw = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    # -- start-up pieces -----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        _write_pki(pki)
        self._ssl = None
        self._ports = _Ports(*(_free_port() for _ in range(6)))
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},batchq-admin,batchq-admin,"system:masters"\n' + "".join(
            f'{t},{u},{u},"system:masters"\n' if u != LIMITED_USER else f"{t},{u},{u}\n"
            for u, t in self.user_tokens.items()))
        tokens.chmod(0o600)
        (self.workdir / "audit-policy.yaml").write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": list(REPLICA_USERS),
                       "verbs": list(WRITE_VERBS)},
                      {"level": "None"}]}))
        self._write_kubeconfig(self.kubeconfig, "batchq-admin", self.token)
        for user, token in self.user_tokens.items():
            self._write_kubeconfig(self.user_kubeconfig(user), user, token)

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig that authenticates as `user` (REPLICA_USERS, LIMITED_USER)."""
        return self.workdir / f"kubeconfig-{user}"

    def audited_writes(self) -> list[dict[str, Any]]:
        """The replica users' write requests so far, as the API server's audit log has
        them (one event each, at ResponseComplete)."""
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def kill_apiserver(self) -> None:
        """SIGKILL kube-apiserver (an outage); `start_apiserver_again` brings it back on the
        same port, with the same etcd and certificates."""
        with self._lock:
            procs = [p for p in self._procs if p.name == "kube-apiserver"]
            self._procs = [p for p in self._procs if p.name != "kube-apiserver"]
        for p in procs:
            self._signal(p, signal.SIGKILL)
            p.popen.wait()

    def start_apiserver_again(self, timeout: float = 60.0) -> None:
        self._spawn("kube-apiserver", self._apiserver_args)

        def ready() -> bool:
            try:
                return bool(self.request("GET", "/readyz", timeout=3) == "ok")
            except urllib.error.HTTPError as exc:
                exc.close()
                return False

        self._wait("kube-apiserver /readyz after a restart", time.monotonic() + timeout, ready)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "batchq-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "batchq-test",
                    "context": {"cluster": "batchq-test", "user": user},
                }
            ],
            "current-context": "batchq-test",
        }
        path.write_text(json.dumps(kubeconfig, indent=2) + "\n")
        path.chmod(0o600)

    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        log = self.workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        on_main = threading.current_thread() is threading.main_thread()
        with log.open("ab") as out:
            out.write(f"+ {' '.join(args)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main else None,
            )
        proc = _Process(name, popen, log)
        with self._lock:
            self._procs.append(proc)
        return proc

    @staticmethod
    def _signal(p: _Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.popen.pid, sig)

    def _check_alive(self) -> None:
        for p in list(self._procs):
            code = p.popen.poll()
            if code is not None:
                raise ControlPlaneError(f"{p.name} exited with code {code} (log: {p.log})")

    def _wait(self, what: str, deadline: float, probe: Callable[[], bool]) -> None:
        last: BaseException | None = None
        while True:
            self._check_alive()
            try:
                if probe():
                    return
            except (OSError, ValueError, KeyError) as exc:  # URLError is an OSError
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()
                last = exc
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {self.startup_timeout:.0f} s waiting for {what}"
                    + (f" (last error: {last!r})" if last else "")
                )
            time.sleep(0.2)

    def _start_etcd(self, deadline: float) -> None:
        assert self._ports is not None
        client = f"http://127.0.0.1:{self._ports.etcd_client}"
        peer = f"http://127.0.0.1:{self._ports.etcd_peer}"
        self._spawn(
            "etcd",
            [
                "--name=batchq-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=batchq-test={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")

        self._wait("etcd /health", deadline, healthy)

    def _start_apiserver(self, deadline: float) -> None:
        assert self._ports is not None
        pki = self.workdir / "pki"
        self._apiserver_args = [
                f"--etcd-servers=http://127.0.0.1:{self._ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={self._ports.apiserver}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # OwnerReferencesPermissionEnforcement as OpenShift enables it: setting
                # blockOwnerDeletion needs `update` on the owner's finalizers subresource
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
                "OwnerReferencesPermissionEnforcement",
                # It taints new nodes not-ready until the node-lifecycle controller, which
                # does not run here, clears the taint.
                "--disable-admission-plugins=TaintNodesByCondition",
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--allow-privileged=true",
                "--profiling=false",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--v=1",
        ]
        self._spawn("kube-apiserver", self._apiserver_args)

        def ready() -> bool:
            try:
                return bool(self.request("GET", "/readyz", timeout=3) == "ok")
            except urllib.error.HTTPError as exc:  # 500 while post-start hooks run
                exc.close()
                return False

        self._wait("kube-apiserver /readyz", deadline, ready)

    def _start_controllers(self) -> None:
        assert self._ports is not None
        pki = self.workdir / "pki"
        kc = str(self.kubeconfig)
        delegated = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                *delegated,
                f"--secure-port={self._ports.controller_manager}",
                f"--cert-dir={self.workdir / 'kube-controller-manager-certs'}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                *delegated,
                f"--secure-port={self._ports.scheduler}",
                f"--cert-dir={self.workdir / 'kube-scheduler-certs'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={kc}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--config={STAGES_FILE}",
                f"--server-address=127.0.0.1:{self._ports.kwok}",
                "--node-ip=10.1.0.1",
                "--cidr=10.2.0.1/16",
            ],
        )

    def _create_nodes(self) -> None:
        # ephemeral-storage as a real kubelet reports it: worker pods request some
        resources = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
        for name in self.nodes:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
                "status": {"allocatable": resources, "capacity": resources},
            }
            self.request("POST", "/api/v1/nodes", node)

    def _wait_ready(self, deadline: float) -> None:
        def nodes_ready() -> bool:
            for name in self.nodes:
                node = self.request("GET", f"/api/v1/nodes/{name}")
                conds = node.get("status", {}).get("conditions") or []
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    return False
            return True

        def default_service_account() -> bool:
            try:
                self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            except urllib.error.HTTPError as exc:
                exc.close()
                return False
            return True

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def healthz(port: int) -> Callable[[], bool]:
            def probe() -> bool:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=3, context=insecure) as resp:
                    return bool(resp.read() == b"ok")

            return probe

        assert self._ports is not None
        self._wait("fake nodes Ready (kwok)", deadline, nodes_ready)
        self._wait("kube-scheduler /healthz", deadline, healthz(self._ports.scheduler))
        self._wait(
            "kube-controller-manager /healthz", deadline, healthz(self._ports.controller_manager)
        )
        self._wait("the default service account (controller manager)", deadline,
                   default_service_account)  # fmt: skip


# --- pytest --------------------------------------------------------------------------------


def cluster_or_skip(
    tmp_path_factory: pytest.TempPathFactory, name: str = "controlplane"
) -> ControlPlane:
    """A started :class:`ControlPlane` for a fixture, which must ``stop()`` it.

    A fixture never builds the control plane (a cold build takes tens of minutes on two
    cores): `scripts/test` builds it before pytest starts when CI=true or
    BATCHQ_SETUP_PARTS=1. Missing binaries fail the test under CI=true and skip it
    elsewhere, naming the command that builds them.
    """
    import pytest

    ci = os.environ.get("CI", "").lower() == "true"
    bin_dir = find_or_build_binaries(build=False)
    if bin_dir is None:
        why = ("Kubernetes test binaries are not built: run scripts/build-test-cluster "
               "(Go >= 1.26), or scripts/test with BATCHQ_SETUP_PARTS=1")
        if not go_available():
            why += "; this machine has no Go toolchain to build them"
        if ci:
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    cp = ControlPlane(bin_dir, tmp_path_factory.mktemp(name))
    cp.start()
    return cp
