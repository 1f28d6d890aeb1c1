"""RTNL event subscriptions, each read by a thread of its own into a callback.

One class serves link events (ports joining, leaving, changing) and FDB events: the daemon runs
one of each per namespace. The thread opens its socket itself and closes it when it ends. A
netlink socket cannot be shut down (EOPNOTSUPP) and closing it under a blocked recv() does not
wake the reader, so the thread polls the socket together with an eventfd that stop() writes:
no timeout wakes an idle reader (a daemon has three per namespace; with a 0.5 s timeout, the
wake-ups of 10 namespaces' readers cost ~0.2 % of a core).

A reader that stops on its own (its namespace deleted, the socket failing with anything but an
overrun) records why in `failure`; the owner restarts it with a full resync, since events were
lost meanwhile. An overrun (ENOBUFS) is delivered as `None`: resync everything.
"""

import errno
import os
import select
import socket
import struct
import threading
import time

from . import neigh, rtnl

RTNLGRP_LINK, RTNLGRP_TC = 1, 4
RTM_NEWLINK, RTM_DELLINK = 16, 17
# qdiscs and filters coming and going (another tool's shaping or policing on a port)
TC_EVENTS = {36: "RTM_NEWQDISC", 37: "RTM_DELQDISC", 44: "RTM_NEWTFILTER", 45: "RTM_DELTFILTER"}
_TCMSG_IFINDEX = struct.Struct("=i")  # struct tcmsg: family, pad, pad, then the ifindex at 4
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_MASTER = 10
LINK_RCVBUF = 4 << 20


class LinkMessage:
    """One RTM_NEWLINK / RTM_DELLINK: the interface and the bridge it is enslaved to; or a
    qdisc or filter change (TC_EVENTS) on the interface (master 0)."""

    __slots__ = ("event", "index", "master")

    def __init__(self, event, index, master):
        self.event, self.index, self.master = event, index, master


def parse_links(buf):
    out = []
    for kind, body, end in rtnl.messages(buf):
        if kind in (RTM_NEWLINK, RTM_DELLINK) and end - body >= _IFINFOMSG.size:
            index = _IFINFOMSG.unpack_from(buf, body)[2]
            master = rtnl.u32(rtnl.attrs(buf, body + _IFINFOMSG.size, end), IFLA_MASTER)
            out.append(LinkMessage("RTM_NEWLINK" if kind == RTM_NEWLINK else "RTM_DELLINK", index, master))
        elif kind in TC_EVENTS and end - body >= 4 + _TCMSG_IFINDEX.size:
            out.append(LinkMessage(TC_EVENTS[kind], _TCMSG_IFINDEX.unpack_from(buf, body + 4)[0], 0))
    return out


NFNLGRP_NFTABLES = 7  # every nftables ruleset change: table, chain, rule, set, generation


def parse_nft(buf):
    """An nftables change notification: only that something changed matters (the owner reads
    the ruleset again), so one marker per datagram."""
    return ["NFT_CHANGE"] if any(True for _ in rtnl.messages(buf)) else []


# what a reader subscribes to: (protocol, group, receive buffer, parser of one datagram)
KINDS = {
    "link": (socket.NETLINK_ROUTE, (RTNLGRP_LINK, RTNLGRP_TC), LINK_RCVBUF, parse_links),
    "fdb": (socket.NETLINK_ROUTE, neigh.RTNLGRP_NEIGH, neigh.RCVBUF, lambda buf: neigh.parse(buf)[0]),
    "nft": (rtnl.NETLINK_NETFILTER, NFNLGRP_NFTABLES, LINK_RCVBUF, parse_nft),
}


class EventReader(threading.Thread):
    """Reads one kind of RTNL event of one namespace; deliver(messages, received_ns) gets each
    datagram's messages, or (None, 0) after an overrun."""

    def __init__(self, kind, netns, deliver):
        super().__init__(daemon=True, name=f"{kind}-events-{netns or 'default'}")
        self.kind, self.netns, self.deliver = kind, netns, deliver
        self.ready = threading.Event()  # subscribed (or failed to): events after it are seen
        self.alive = True
        self.failure = None  # why the reader stopped on its own
        # stop() writes it; only the thread closes it, under the lock, so stop() never writes
        # to a closed (or reused) descriptor
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake_lock = threading.Lock()

    def run(self):
        try:
            self._subscribe_and_read()
        finally:
            with self._wake_lock:
                os.close(self._wake)
                self._wake = None

    def _subscribe_and_read(self):
        protocol, group, rcvbuf, parse = KINDS[self.kind]
        try:
            sock = rtnl.subscribe(group, self.netns, rcvbuf, protocol)
            sock.setblocking(False)
        except Exception as exc:  # noqa: BLE001 - a namespace gone, fds exhausted: reported, not raised
            self.failure = f"cannot subscribe: {exc}"
            self.alive = False
            return
        finally:
            self.ready.set()
        try:
            self._read(sock, parse)
        finally:
            sock.close()

    def _read(self, sock, parse):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        while self.alive:
            try:
                poller.poll()
                if not self.alive:
                    return
                msgs = parse(sock.recv(1 << 20))
            except BlockingIOError:
                continue  # the eventfd, or a datagram another wake-up took
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.deliver(None, 0)
                    continue
                self.failure, self.alive = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc}", False
                return
            except Exception as exc:  # noqa: BLE001 - a datagram the parser refused
                self.failure, self.alive = str(exc), False
                return
            if msgs and self.alive:
                self.deliver(msgs, time.monotonic_ns())

    @property
    def failed(self):
        """True once the reader stopped on its own (not through stop())."""
        return self.failure is not None

    def stop(self):
        self.alive = False
        with self._wake_lock:
            if self._wake is not None:
                os.eventfd_write(self._wake, 1)


def start(kind, netns, deliver, timeout=5.0):
    """A started reader, subscribed when this returns (or failed: see .failed)."""
    reader = EventReader(kind, netns, deliver)
    reader.start()
    reader.ready.wait(timeout)
    return reader
