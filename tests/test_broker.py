"""The AF_XDP broker: sockets handed over SCM_RIGHTS, refusals, consumers that die, restarts."""

import json
import os
import signal
import socket as so

import pytest

from control import attachment, endpoints, state
from control.broker import request, socket_path
from loader.xsk_endpoint import AfxdpEndpoint
from testbed.frames import udp_frame
from tests.helpers import wait_for
from tests.traffic import packet_socket, xsk_frames

GUEST = "52:54:00:00:00:41"
NOBODY = 65534


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def consumer(lab, reply, fds):
    """What the VMM does with the handed fds: UMEM and rings on each, then bind."""
    return AfxdpEndpoint.adopt(reply, fds, GUEST).sockets


def container_socket(lab):
    return packet_socket(lab.c1.netns, "eth0")


def deliver(lab, xsk, count=10):
    """Frames from the container reach the consumer's socket; returns how many arrived."""
    pkt = container_socket(lab)
    with pkt:
        for i in range(count):
            pkt.send(udp_frame(GUEST, lab.c1.mac, lab.c1.ip, "10.200.0.41", 60 + i))
    return len(xsk_frames(xsk, count, dst=GUEST, tries=40))


@pytest.fixture
def broker_lab(two_containers, daemon):
    lab = two_containers
    assert lab.c1.ping(lab.c2.ip)
    endpoints.add(lab.bridge, lab.switch, "vm1", mac=GUEST)
    endpoints.add(lab.bridge, lab.switch, "vm2", path="tap")
    attachment.attach(lab.bridge, lab.switch)
    lab.daemon = daemon()
    lab.sock = socket_path(lab.bridge, lab.switch)
    assert wait_for(lambda: os.path.exists(lab.sock), timeout=5), "no broker socket"
    yield lab
    for name in ("vm1", "vm2"):
        try:
            endpoints.delete(lab.bridge, lab.switch, name)
        except Exception:  # noqa: BLE001
            pass


@pytest.mark.root
def test_the_broker_hands_over_working_sockets(broker_lab):
    lab = broker_lab
    assert oct(os.stat(lab.sock).st_mode & 0o777) == "0o660"
    reply, fds = request(lab.sock, "vm1")
    assert reply["ok"] and (reply["ifname"], reply["queues"], reply["start_queue"]) == ("vm1", 1, 0)
    assert len(fds) == 1
    (xsk,) = consumer(lab, reply, fds)
    try:
        before = state.forwarded(lab.bridge, lab.switch, lab.c1.port)
        assert deliver(lab, xsk) == 10
        after = state.forwarded(lab.bridge, lab.switch, lab.c1.port)
        assert after >= before + 10  # container -> AF_XDP endpoint on the fast path
        # sockets already handed over keep working when the daemon restarts
        lab.daemon.stop(signal.SIGKILL)
        assert deliver(lab, xsk) == 10
    finally:
        xsk.close()


@pytest.mark.root
def test_a_consumer_that_dies_frees_its_socket_and_the_next_gets_fresh_ones(broker_lab):
    lab = broker_lab
    reply, fds = request(lab.sock, "vm1")
    (xsk,) = consumer(lab, reply, fds)
    assert deliver(lab, xsk) == 10
    xsk.close()  # the VMM stops: its socket, and with it the XSKMAP slot, goes away
    reply, fds = request(lab.sock, "vm1")
    (xsk,) = consumer(lab, reply, fds)  # binding the same queue again works (EBUSY retried)
    try:
        assert deliver(lab, xsk) == 10
    finally:
        xsk.close()


@pytest.mark.root
@pytest.mark.parametrize(
    "line, error",
    [
        (b"not json\n", "malformed request"),
        (b'{"endpoint": 5}\n', "malformed request"),
        (b'{"endpoint": "nope"}\n', "no endpoint 'nope'"),
        (b'{"endpoint": "vm2"}\n', "endpoint vm2 runs on TAP"),
    ],
)
def test_bad_requests_get_a_clear_reply_and_no_fd(broker_lab, line, error):
    lab = broker_lab
    before = open_fds()
    with so.socket(so.AF_UNIX, so.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(lab.sock)
        sock.sendall(line)
        msg, fds, _, _ = so.recv_fds(sock, 65536, 8)
    reply = json.loads(msg)
    assert reply["ok"] is False and error in reply["error"]
    assert fds == []
    assert open_fds() == before


@pytest.mark.root
def test_a_peer_with_the_wrong_uid_is_refused(broker_lab):
    lab = broker_lab
    os.chmod(lab.sock, 0o666)  # let the unprivileged child reach the socket: SO_PEERCRED decides
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            reply, fds = request(lab.sock, "vm1")
            os.write(w, json.dumps({"reply": reply, "fds": len(fds)}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert result["fds"] == 0
    assert result["reply"]["ok"] is False and "permission denied: uid 65534" in result["reply"]["error"]
