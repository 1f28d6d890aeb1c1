"""The AF_XDP broker: a launcher asks for an endpoint's sockets on /run/xdpbr/BRIDGE.sock and
gets them as SCM_RIGHTS, so the VMM needs neither CAP_NET_ADMIN nor CAP_BPF.

Protocol (one request per connection, then xdpbr closes it):
  client -> {"endpoint": "NAME"}\\n
  xdpbr  -> {"ok": true, "ifname": ..., "ifindex": ..., "queues": N, "start_queue": 0,
             "mode": "native"|"skb"}\\n  plus one AF_XDP socket fd per queue (SCM_RIGHTS), or
            {"ok": false, "error": "..."}\\n  and no fds.
The sockets are created by xdpbr and already in the endpoint's XSKMAP at their queue's index,
not bound: the receiver registers its UMEM on them and binds (loader/afxdp.XskSocket). xdpbr
closes its own copies once sent, so a VMM that stops frees its sockets and XSKMAP slots.

The peer's credentials are taken at accept (SO_PEERCRED, SO_PEERGROUPS): a peer who may use no
endpoint of the bridge is refused before its request is read, the others per endpoint (its
--owner or --group; root always). The whole request must arrive within REQUEST_DEADLINE_S of
the accept and fit MAX_REQUEST bytes; anything else gets one {"ok": false, ...} line.
"""

import errno
import grp
import json
import logging
import os
import socket
import struct

from ...loader import bpfsys, instance
from ...loader.afxdp import new_socket
from ...loader.errors import NotFound
from ...loader.layouts import I32, U32
from ...loader.netns import interface_index
from ..connections import RequestLoop, listening_unix
from . import lifecycle as endpoints
from .client import socket_path

log = logging.getLogger("xdpbr.broker")

MAX_REQUEST = 4096
REQUEST_DEADLINE_S = 2.0  # the whole request, from accept: not per recv()
WRITE_DEADLINE_S = 2.0
# Connections open at once per bridge. Answers take milliseconds, so only slow or idle clients
# stay; one more evicts the oldest of those (control/connections.py).
MAX_CONNECTIONS = 32
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; Python 3.11 lacks the name
MAX_GROUPS = 65536  # NGROUPS_MAX

MALFORMED = 'malformed request: expected one JSON line {"endpoint": "NAME"}'


def _line(reply):
    return json.dumps(reply).encode() + b"\n"


def peer_credentials(sock):
    """(uid, groups) the kernel recorded when the peer connected: SO_PEERCRED's uid and gid and
    SO_PEERGROUPS' supplementary groups. Read at accept, never from /proc/PID later: that PID
    may have exited, changed its groups or been reused by another process by then."""
    _pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            break
        except OSError as exc:  # ERANGE: more groups than the buffer holds
            if exc.errno != errno.ERANGE or size >= MAX_GROUPS * 4:
                raise
            size *= 4
    groups = {gid, *struct.unpack(f"{len(raw) // 4}I", raw)}
    return uid, groups


def allowed(record, uid, groups):
    """Root, the endpoint's owner, or a member of its group (owner/group 0: root only)."""
    return (
        uid == 0
        or (record["owner"] and uid == record["owner"])
        or (record["group"] and record["group"] in groups)
    )


class Broker:
    """Serves one bridge's socket from one thread (control/connections.RequestLoop: concurrent
    clients, bounded in number, time and size); stop() removes it."""

    def __init__(self, bridge, netns=None, group=None):
        self.bridge, self.netns = bridge, netns
        self.path = socket_path(bridge, netns)
        os.makedirs(instance.run_dir(), exist_ok=True)
        listener = listening_unix(self.path, 0o660, group_id(group))
        self.loop = RequestLoop(
            listener,
            self,
            name=f"broker-{bridge}",
            max_connections=MAX_CONNECTIONS,
            max_request=MAX_REQUEST,
            deadline_s=REQUEST_DEADLINE_S,
            write_deadline_s=WRITE_DEADLINE_S,
        )

    def set_group(self, gid):
        """The socket's group, as the configuration says now (SIGHUP): connected clients stay."""
        os.chown(self.path, 0, gid)

    # the protocol of connections.RequestLoop
    too_long = _line({"ok": False, "error": f"malformed request: longer than {MAX_REQUEST} bytes"})
    timed_out = _line({"ok": False, "error": f"timed out: send the request within {REQUEST_DEADLINE_S:g} s"})
    busy = _line({"ok": False, "error": "busy: too many clients at once, try again"})

    def admit(self, sock):
        """Credentials at accept; a peer who may use no endpoint of this bridge is refused
        before anything it sent is read."""
        uid, groups = peer_credentials(sock)
        if uid != 0 and not any(allowed(r, uid, groups) for r in self._records()):
            error = (
                f"permission denied: uid {uid} (groups {','.join(map(str, sorted(groups)))}) may use "
                f"no endpoint of {endpoints.label(self.bridge, self.netns)}"
            )
            log.info("%s: refused a client at accept: %s", self.bridge, error)
            return None, _line({"ok": False, "error": error})
        return (uid, groups), None

    def _records(self):
        try:
            return endpoints.records(self.bridge, self.netns)
        except (OSError, ValueError) as exc:  # a record being written: refuse now, not crash
            log.warning("%s: cannot read endpoint records: %s", self.bridge, exc)
            return []

    @staticmethod
    def end(data):
        newline = data.find(b"\n")
        return None if newline < 0 else newline + 1

    def answer(self, context, line):
        uid, groups = context
        try:
            reply, fds = self.decide(line.rstrip(b"\r\n"), uid, groups)
        except Exception as exc:  # noqa: BLE001 - a record or pin that vanished: the client gets a line
            log.warning("%s: broker request failed: %s", self.bridge, exc)
            reply, fds = {"ok": False, "error": " ".join(f"failed: {exc}".split())}, []
        return _line(reply), fds

    def decide(self, line, uid, groups):
        """(reply, [AF_XDP sockets]) for one request line."""

        def refuse(error):
            log.info("%s: refused a request from uid %d: %s", self.bridge, uid, error)
            return {"ok": False, "error": error}, []

        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: arrays or objects nested ~1,000 deep
            return refuse(MALFORMED)
        if not isinstance(request, dict) or not isinstance(request.get("endpoint"), str):
            return refuse(MALFORMED)
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
        self.loop.stop()
        if os.path.exists(self.path):
            os.unlink(self.path)


def group_id(group):
    """The gid of a configured group name (None: root's group); KeyError if there is none."""
    return 0 if group is None else grp.getgrnam(group).gr_gid
