"""A throwaway network of hosts in network namespaces, for tests (root only).

    with NetLab(["srv1", "srv2", "cli"]) as lab:      # or NetLab(3): hosts h0, h1, h2
        lab.address("srv1")                           # "10.77.0.1" (hosts in order, from .1)
        proc = lab.popen("srv1", [python, "-c", ...]) # a subprocess in srv1 (ip netns exec)
        lab.run("srv1", ["ip", "addr"])               # the same, waited for (CompletedProcess)
        lab.call("srv1", fn, *args)                   # fn(*args) in a forked child inside srv1,
                                                      # its (picklable) result returned
        with lab.inside("cli"):                       # the calling thread is in cli's namespace:
            ...                                       # sockets and threads made here stay there
        lab.cut("srv1"); lab.restore("srv1")          # take srv1's link down / up again
        lab.netns("srv1")                             # the namespace's name (for ip netns exec)
        lab.leftovers()                               # this lab's namespaces still present
    remove_stale()                                    # remove namespaces of dead labs' processes

Layout: one "switch" namespace holds a bridge (multicast snooping off, so mDNS floods to every
port); each host namespace has `lo` and `eth0` (ADDRESS/24, a route for 224.0.0.0/4 so
multicast needs no default route), the other end of its veth pair enslaved to the bridge.
No namespace has a route out, so nothing a test does can leave this network.

Teardown (on exit, also after an error in the body or half-way through setting up): the
processes started by popen/run are killed with their process groups, then every process left
in one of the lab's namespaces, then the namespaces are removed (which destroys the veths and
the bridge). Namespaces are named jcclab-<pid>-<n>-<host>; a lab also removes the namespaces of
earlier labs whose process is gone (a test run that was killed). A process that a test's
process left behind inside a namespace is killed too, but, orphaned, it stays a zombie on a
machine whose PID 1 does not reap: keep what runs in a lab as children of popen or call.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pickle
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute, netns

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
PREFIX = "jcclab"
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ns_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _kill_processes_in(inode: tuple[int, int]) -> None:
    """SIGKILL every process whose network namespace is this one (device, inode)."""
    me = os.getpid()
    for _ in range(50):
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == me or _ns_inode(f"/proc/{pid}/ns/net") != inode:
                continue
            found = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.02)


def remove_stale() -> None:
    """Remove the namespaces of labs whose process has died."""
    for name in netns.listnetns():
        parts = name.split("-")
        dead = len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit()
        if dead and not os.path.exists(f"/proc/{parts[1]}"):
            with contextlib.suppress(OSError):
                inode = _ns_inode(os.path.join(NETNS_DIR, name))
                if inode is not None:
                    _kill_processes_in(inode)
                netns.remove(name)


class NetLab:
    def __init__(self, hosts: int | Sequence[str], subnet: str = "10.77.0") -> None:
        self.hosts = [f"h{i}" for i in range(hosts)] if isinstance(hosts, int) else list(hosts)
        if len(set(self.hosts)) != len(self.hosts) or not 0 < len(self.hosts) < 250:
            raise ValueError("hosts must be 1 to 249 distinct names")
        self.subnet = subnet
        self.tag = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.switch = f"{self.tag}-switch"
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    # Names and addresses.
    def netns(self, host: str) -> str:
        if host not in self.hosts:
            raise KeyError(host)
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    def _port(self, host: str) -> str:
        return f"v{self.hosts.index(host)}"

    # Setting up and tearing down.
    def __enter__(self) -> NetLab:
        try:
            remove_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self, name: str) -> None:
        netns.create(name)
        self.created.append(name)

    def _build(self) -> None:
        self._create(self.switch)
        with IPRoute(netns=self.switch) as sw:
            sw.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
            bridge = sw.link_lookup(ifname="br0")[0]
            for host in self.hosts:
                name = self.netns(host)
                self._create(name)
                port = self._port(host)
                sw.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
                sw.link("set", index=sw.link_lookup(ifname=port)[0], master=bridge, state="up")
                with IPRoute(netns=name) as ipr:
                    eth0 = ipr.link_lookup(ifname="eth0")[0]
                    ipr.addr("add", index=eth0, address=self.address(host), prefixlen=24)
                    ipr.link("set", index=eth0, state="up", multicast="on")
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                    ipr.route("add", dst="224.0.0.0/4", oif=eth0)
            sw.link("set", index=bridge, state="up")

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()
        for name in reversed(self.created):
            path = os.path.join(NETNS_DIR, name)
            inode = _ns_inode(path)
            if inode is not None:
                _kill_processes_in(inode)
            with contextlib.suppress(OSError):
                netns.remove(name)
        self.created.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this lab still present (empty after close())."""
        return [n for n in netns.listnetns() if n.startswith(self.tag + "-")]

    # Running things inside.
    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A subprocess in host's namespace, in its own process group; killed at teardown."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns(host), *argv], start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        if kwargs.pop("capture_output", False):
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc = self.popen(host, argv, **kwargs)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def call(self, host: str, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        """fn(*args) in a forked child that entered host's namespace; its result, or its
        exception re-raised here. Keep fn simple: the child is a fork of a threaded process."""
        fd = os.open(os.path.join(NETNS_DIR, self.netns(host)), os.O_RDONLY)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                os.close(read_end)
                _setns(fd)
                try:
                    payload = pickle.dumps((True, fn(*args)))
                except Exception as exc:
                    payload = pickle.dumps((False, exc))
                with os.fdopen(write_end, "wb") as out:
                    out.write(payload)
                status = 0
            finally:
                os._exit(status)
        os.close(fd)
        os.close(write_end)
        deadline = time.monotonic() + timeout
        chunks = []
        try:
            with os.fdopen(read_end, "rb") as pipe:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"call in {host} took over {timeout} s")
                    if select.select([pipe], [], [], remaining)[0]:
                        chunk = pipe.read1(65536)
                        if not chunk:
                            break
                        chunks.append(chunk)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if not chunks:
            raise RuntimeError(f"call in {host} died without a result")
        ok, value = pickle.loads(b"".join(chunks))
        if not ok:
            raise value
        return value

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Switch the calling thread into host's namespace for the block. Sockets opened and
        threads started in the block stay in that namespace after it ends."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(os.path.join(NETNS_DIR, self.netns(host)), os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)

    # Failures.
    def _set_link(self, host: str, state: str) -> None:
        with IPRoute(netns=self.switch) as sw:
            sw.link("set", index=sw.link_lookup(ifname=self._port(host))[0], state=state)

    def cut(self, host: str) -> None:
        """Take host's link down (at the switch: the host sees its carrier go)."""
        self._set_link(host, "down")

    def restore(self, host: str) -> None:
        self._set_link(host, "up")
