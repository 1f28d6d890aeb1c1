"""The AF_XDP broker: sockets handed over SCM_RIGHTS, refusals, consumers that die, restarts,
hostile and slow clients, group members."""

import grp
import json
import os
import select
import signal
import socket as so
import threading
import time

import pytest
from xdpbr.control.datapath import attachment, state
from xdpbr.control.endpoints import lifecycle as endpoints
from xdpbr.control.endpoints.broker import MAX_REQUEST
from xdpbr.control.endpoints.client import request, socket_path
from xdpbr.loader.xsk_endpoint import AfxdpEndpoint

from testbed.frames import udp_frame
from tests.helpers import wait_for
from tests.traffic import packet_socket, xsk_frames

GUEST = "52:54:00:00:00:41"
NOBODY = 65534
MEMBER = 4242  # a uid and gid of no account: only its supplementary group lets it in
USERS = grp.getgrnam("users").gr_gid  # Debian's stock groups, used for nothing else here
GAMES = grp.getgrnam("games").gr_gid
DEADLINE_S = 2.0  # README: a request must arrive whole within 2 s of the connect
CAP = 32  # README: connections open at once per bridge


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


def make_broker_lab(lab, daemon, *daemon_args, group=0):
    assert lab.c1.ping(lab.c2.ip)
    endpoints.add(lab.bridge, lab.switch, "vm1", mac=GUEST, group=group)
    endpoints.add(lab.bridge, lab.switch, "vm2", path="tap")
    attachment.attach(lab.bridge, lab.switch)
    lab.daemon = daemon(*daemon_args)
    lab.sock = socket_path(lab.bridge, lab.switch)
    assert wait_for(lambda: os.path.exists(lab.sock), timeout=5), "no broker socket"
    return lab


def remove_endpoints(lab):
    for name in ("vm1", "vm2"):
        try:
            endpoints.delete(lab.bridge, lab.switch, name)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def broker_lab(two_containers, daemon):
    yield make_broker_lab(two_containers, daemon)
    remove_endpoints(two_containers)


@pytest.fixture
def group_lab(two_containers, daemon, tmp_path):
    """The broker socket belongs to group `users` (configuration), and so does endpoint vm1."""
    cfg = tmp_path / "xdpbr.toml"
    cfg.write_text('[broker]\ngroup = "users"\n')
    lab = make_broker_lab(two_containers, daemon, "--config", str(cfg), group=USERS)
    lab.config = cfg
    yield lab
    remove_endpoints(lab)


def in_child(uid, groups, action, timeout=10):
    """What action() returns (JSON), run in a forked child as uid (and gid) with supplementary
    groups: a real unprivileged peer, so SO_PEERCRED and SO_PEERGROUPS decide."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(uid)
            os.setuid(uid)
            result = action()
            if result is not None:
                os.write(w, json.dumps(result).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the test, not raised in a fork
            os.write(w, json.dumps({"exception": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)  # reaped: from here on /proc/PID of the child is gone
    return read_all(r, timeout)


def read_all(fd, timeout):
    data, deadline = b"", time.monotonic() + timeout
    try:
        while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return json.loads(data)
            data += chunk
        raise AssertionError(f"no answer from the child within {timeout} s: {data!r}")
    finally:
        os.close(fd)


def ask(path, name):
    """A request as a child does it: the reply and how many fds came (closed at once)."""
    reply, fds = request(path, name)
    for fd in fds:
        os.close(fd)
    return {"reply": reply, "fds": len(fds)}


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
        (b"\xff\xfe\n", "malformed request"),
        # nested 4,096 deep: too long for a request, so never parsed
        (b"[" * 4096 + b"]" * 4096 + b"\n", f"malformed request: longer than {MAX_REQUEST} bytes"),
        # nested 2,000 deep within the size limit: json's parser raises RecursionError
        (b'{"endpoint": ' + b"[" * 2000 + b"]" * 2000 + b"}\n", "malformed request"),
        (b"x" * (MAX_REQUEST + 10), f"malformed request: longer than {MAX_REQUEST} bytes"),
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
    assert msg.endswith(b"\n") and msg.count(b"\n") == 1, f"not one line: {msg[:200]!r}"
    reply = json.loads(msg)
    assert reply["ok"] is False and error in reply["error"]
    assert fds == []
    assert open_fds() == before


@pytest.mark.root
def test_a_peer_with_the_wrong_uid_is_refused(broker_lab):
    lab = broker_lab
    os.chmod(lab.sock, 0o666)  # let the unprivileged child reach the socket: SO_PEERCRED decides
    result = in_child(NOBODY, [], lambda: ask(lab.sock, "vm1"))
    assert result["fds"] == 0
    assert result["reply"]["ok"] is False and "permission denied: uid 65534" in result["reply"]["error"]


@pytest.mark.root
def test_a_peer_who_may_use_no_endpoint_is_refused_before_it_sends_anything(broker_lab):
    lab = broker_lab
    os.chmod(lab.sock, 0o666)

    def connect_and_wait():
        with so.socket(so.AF_UNIX, so.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(lab.sock)
            started = time.monotonic()
            msg = sock.recv(65536)  # nothing sent: the broker must not wait for a request
            return {"msg": msg.decode(), "seconds": time.monotonic() - started}

    result = in_child(NOBODY, [], connect_and_wait)
    assert result["msg"].count("\n") == 1
    reply = json.loads(result["msg"])
    assert reply["ok"] is False and "permission denied: uid 65534" in reply["error"]
    assert result["seconds"] < 0.5, f"refused only after {result['seconds']:.2f} s"


@pytest.mark.root
def test_a_member_of_the_broker_group_is_served_even_after_the_connecting_process_exits(group_lab):
    lab = group_lab
    st = os.stat(lab.sock)
    assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o660", 0, USERS)  # not 0666
    result = in_child(MEMBER, [USERS], lambda: ask(lab.sock, "vm1"))
    assert result.get("reply", {}).get("ok") is True and result["fds"] == 1, result

    r, w = os.pipe()

    def connect_then_hand_over():
        """A launcher connects and hands the connection to a child, then exits: the broker
        must judge the credentials of the connect, not what /proc/PID holds later."""
        sock = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(lab.sock)
        parent = os.getpid()
        if os.fork() != 0:
            return  # exits: the test reaps it before the child speaks
        code = 1
        try:
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{parent}") and time.monotonic() < deadline:
                time.sleep(0.01)
            gone = not os.path.exists(f"/proc/{parent}")
            sock.sendall(b'{"endpoint": "vm1"}\n')
            msg, fds, _, _ = so.recv_fds(sock, 65536, 8)
            os.write(w, json.dumps({"reply": json.loads(msg), "fds": len(fds), "parent_gone": gone}).encode())
            code = 0
        finally:
            os._exit(code)

    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([USERS])
            os.setgid(MEMBER)
            os.setuid(MEMBER)
            connect_then_hand_over()
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    result = read_all(r, 10)
    assert result["parent_gone"]
    assert result["reply"]["ok"] is True and result["fds"] == 1, result
    # and a peer outside the group cannot even connect: the socket is 0660 root:users
    refused = in_child(MEMBER, [], lambda: ask(lab.sock, "vm1"))
    assert "PermissionError" in refused.get("exception", ""), refused


@pytest.mark.root
def test_the_socket_group_follows_a_reload(group_lab):
    lab = group_lab
    assert os.stat(lab.sock).st_gid == USERS
    lab.config.write_text('[broker]\ngroup = "games"\n')
    lab.daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: os.stat(lab.sock).st_gid == GAMES, timeout=5), "the socket kept its group"
    assert oct(os.stat(lab.sock).st_mode & 0o777) == "0o660"
    # a member of games may connect now (and is refused at accept: no endpoint is games'),
    # a member of users no longer may
    result = in_child(MEMBER, [GAMES], lambda: ask(lab.sock, "vm1"))
    assert "permission denied: uid 4242" in result.get("reply", {}).get("error", ""), result
    refused = in_child(MEMBER, [USERS], lambda: ask(lab.sock, "vm1"))
    assert "PermissionError" in refused.get("exception", ""), refused


@pytest.mark.root
def test_a_crowd_with_slow_loris_clients_does_not_delay_an_allowed_vmm(broker_lab):
    """100 clients at once: 10 send a byte every 0.3 s, 45 connect and send nothing, 44 ask for a
    TAP endpoint, and one VMM asks for its sockets. The crowd exceeds the broker's cap
    (CAP), so some are cut as busy; nobody holds a connection past the deadline."""
    lab = broker_lab
    stop = threading.Event()
    results, connected, dribbling = [], threading.Barrier(100, timeout=10), set()

    def client(kind):
        started = time.monotonic()
        with so.socket(so.AF_UNIX, so.SOCK_STREAM) as sock:
            sock.settimeout(DEADLINE_S + 3)
            sock.connect(lab.sock)
            if kind == "tap":
                try:
                    sock.sendall(b'{"endpoint": "vm2"}\n')
                except BrokenPipeError:
                    pass  # cut as busy before it spoke: the line is waiting to be read
            connected.wait()
            if kind == "slow":
                sock.setblocking(False)
                for byte in b'{"endpoint": "vm1"}':
                    try:
                        if sock.recv(65536, so.MSG_PEEK):
                            break  # the broker answered: stop sending
                    except BlockingIOError:
                        pass
                    try:
                        sock.send(bytes([byte]))
                    except OSError:
                        break
                    dribbling.add(threading.get_ident())  # it has sent a byte
                    if stop.wait(0.3):
                        break
                dribbling.add(threading.get_ident())  # or stopped: answered, cut, every byte sent
                sock.settimeout(DEADLINE_S + 3)
            try:
                msg, fds, _, _ = so.recv_fds(sock, 65536, 8)
            except OSError as exc:
                msg, fds = repr(exc).encode(), []
        results.append((kind, msg, len(fds), time.monotonic() - started))

    kinds = ["slow"] * 10 + ["idle"] * 45 + ["tap"] * 44
    threads = [threading.Thread(target=client, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
    connected.wait()  # the 99th party: every client is connected
    # each slow one has sent a byte, or stopped (answered, or cut as busy)
    assert wait_for(lambda: len(dribbling) == 10, timeout=5), f"{len(dribbling)} of the 10 slow ones"
    started = time.monotonic()
    reply, fds = request(lab.sock, "vm1")
    latency = time.monotonic() - started
    for fd in fds:
        os.close(fd)
    stop.set()
    for t in threads:
        t.join(DEADLINE_S + 5)
    assert reply["ok"] is True and len(fds) == 1, reply
    assert latency < 1.0, f"the VMM waited {latency:.2f} s"
    assert len(results) == 99
    for kind, msg, nfds, seconds in results:
        assert msg.endswith(b"\n") and msg.count(b"\n") == 1, (kind, msg)
        error = json.loads(msg)["error"]
        expected = ("runs on TAP", "busy") if kind == "tap" else ("timed out", "busy")
        assert any(e in error for e in expected), (kind, error)
        assert nfds == 0
        assert seconds < DEADLINE_S + 1.5, f"a {kind} client held its connection {seconds:.1f} s"
    tally = {}
    for kind, msg, _, _ in results:
        key = (kind, json.loads(msg)["error"].split(":")[0])
        tally[key] = tally.get(key, 0) + 1
    print(f"\nVMM answered in {latency * 1000:.1f} ms beside 99 clients: {sorted(tally.items())}")


@pytest.mark.root
def test_a_client_sending_a_byte_at_a_time_is_cut_at_the_whole_request_deadline(broker_lab):
    lab = broker_lab
    with so.socket(so.AF_UNIX, so.SOCK_STREAM) as sock:
        sock.connect(lab.sock)
        started, msg = time.monotonic(), b""
        for byte in b'{"endpoint": "vm1"}\n':  # 20 bytes, one every 0.3 s: 6 s in all
            try:
                sock.send(bytes([byte]))
            except BrokenPipeError:
                break
            if select.select([sock], [], [], 0.3)[0]:
                break  # the broker spoke before the request was whole
        sock.settimeout(5)
        msg = sock.recv(65536)
        seconds = time.monotonic() - started
    assert msg.count(b"\n") == 1 and "timed out" in json.loads(msg)["error"], msg
    assert DEADLINE_S <= seconds < DEADLINE_S + 0.5, f"cut after {seconds:.2f} s"
