"""The AF_XDP broker: a launcher asks for an endpoint's sockets on /run/xdpbr/BRIDGE.sock and
gets them as SCM_RIGHTS, so the VMM needs neither CAP_NET_ADMIN nor CAP_BPF.

Protocol (one request per connection, then xdpbr closes it):
  client -> {"endpoint": "NAME"}\\n
  xdpbr  -> {"ok": true, "ifname": ..., "ifindex": ..., "queues": N, "start_queue": 0,
             "mode": "native"|"skb"}\\n  plus one AF_XDP socket fd per queue (SCM_RIGHTS), or
            {"ok": false, "error": "..."}\\n  and no fds.
The sockets are created by xdpbr and already in the endpoint's XSKMAP at their queue's index,
not bound: the receiver registers its UMEM on them and binds (loader/afxdp.XskSocket). xdpbr
closes its own copies once sent, so a VMM that stops frees its sockets and XSKMAP slots. The
peer's credentials (SO_PEERCRED) must match the endpoint's --owner or --group (root always).
"""

import json
import logging
import os
import socket
import struct
import threading

from control import endpoints
from loader import bpfsys, instance
from loader.afxdp import new_socket
from loader.bridge_id import BridgeId
from loader.errors import NotFound
from loader.layouts import I32, U32
from loader.netns import interface_index

log = logging.getLogger("xdpbr.broker")

MAX_REQUEST = 4096
REQUEST_TIMEOUT_S = 2.0


def socket_path(bridge, netns=None):
    return BridgeId(bridge, netns).socket_path


def _peer(conn):
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups |= {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return uid, groups


def allowed(record, uid, groups):
    """Root, the endpoint's owner, or a member of its group (owner/group 0: root only)."""
    return (
        uid == 0
        or (record["owner"] and uid == record["owner"])
        or (record["group"] and record["group"] in groups)
    )


class Broker:
    """Serves one bridge's socket from a thread; stop() removes it."""

    def __init__(self, bridge, netns=None, group=None):
        self.bridge, self.netns = bridge, netns
        self.path = socket_path(bridge, netns)
        os.makedirs(instance.run_dir(), exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a previous daemon's
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.server.bind(self.path)
        os.chmod(self.path, 0o660)
        os.chown(self.path, 0, _gid(group))
        self.server.listen(16)
        self.alive = True
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"broker-{bridge}")
        self.thread.start()

    def _serve(self):
        while self.alive:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    self.handle(conn)
                except Exception as exc:  # noqa: BLE001 - one bad client must not stop the broker
                    log.warning("%s: broker request failed: %s", self.bridge, exc)

    def handle(self, conn):
        conn.settimeout(REQUEST_TIMEOUT_S)
        data = b""
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        uid, groups = _peer(conn)
        reply, fds = self.answer(data.split(b"\n", 1)[0], uid, groups)
        try:
            socket.send_fds(conn, [json.dumps(reply).encode() + b"\n"], [s.fileno() for s in fds])
        finally:
            for s in fds:
                s.close()  # the VMM holds them now: when it stops, the sockets and slots go

    def answer(self, line, uid, groups):
        def refuse(error):
            log.info("%s: refused a request from uid %d: %s", self.bridge, uid, error)
            return {"ok": False, "error": error}, []

        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return refuse('malformed request: expected one JSON line {"endpoint": "NAME"}')
        if not isinstance(request, dict) or not isinstance(request.get("endpoint"), str):
            return refuse('malformed request: expected one JSON line {"endpoint": "NAME"}')
        name = request["endpoint"]
        try:
            record = endpoints.find(self.bridge, self.netns, name)
        except NotFound:
            return refuse(f"no endpoint {name!r} on {endpoints.label(self.bridge, self.netns)}")
        if not allowed(record, uid, groups):
            return refuse(f"permission denied: uid {uid} is not the owner or in the group of endpoint {name}")
        if record["path"] != "afxdp":
            return refuse(f"endpoint {name} runs on TAP: {record['why']}")
        return self._sockets(record)

    def _sockets(self, record):
        xsks = bpfsys.obj_get(os.path.join(record["pins"], "xsks"))
        made = []
        try:
            for queue in range(record["queues"]):
                sock = new_socket(self.netns)
                made.append(sock)
                bpfsys.map_update(xsks, U32(queue), I32(sock.fileno()))
        except BaseException:
            for sock in made:
                sock.close()
            raise
        finally:
            os.close(xsks)
        ifindex = interface_index(self.netns, record["ifname"])
        reply = {
            "ok": True,
            "ifname": record["ifname"],
            "ifindex": ifindex,
            "queues": record["queues"],
            "start_queue": 0,
            "mode": "native",
        }
        log.info("%s: handed %d AF_XDP socket(s) of endpoint %s", self.bridge, len(made), record["name"])
        return reply, made

    def stop(self):
        self.alive = False
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def _gid(group):
    if group is None:
        return 0
    import grp

    return grp.getgrnam(group).gr_gid


def request(path, name, timeout=5.0):
    """The client side (what a launcher does): (reply, [fds])."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"endpoint": name}).encode() + b"\n")
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 64)
    return json.loads(msg.split(b"\n", 1)[0]), fds
