"""Which named namespaces and which bridges exist, cheaply enough to look at every pin scan.

The daemon attaches bridges that match its configuration's patterns as they appear (also in
namespaces made after it started) and forgets those that go. It looks every pin scan (0.5 s):

- `named_namespaces()`: the names in /run/netns with their namespace's inode, one listdir and a
  stat each (a name whose file `ip netns add` is still mounting is left out until next time).
- `BridgeWatch(netns)`: one netlink socket opened inside the namespace once and kept (a socket
  answers for the namespace it was made in, so no setns afterwards), subscribed to its link
  events, which are only drained (a non-blocking recv, ~1.4 us when idle); a RTM_GETLINK dump of
  the bridges (the kernel filters by IFLA_INFO_KIND, so a host with 1,000 ports returns its few
  bridges: ~25 us) is made only when an event came since the last one. One descriptor per
  namespace. Its socket keeps the namespace alive, so the owner closes it when the name goes or
  names another namespace (`identity`).
"""

import errno
import os
import select
import socket
import struct

from . import rtnl
from .errors import XdpbrError
from .netns import NETNS_RUN_DIR, current_inode, entered, netns_path

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTNLGRP_LINK = 1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_EXT_MASK, IFLA_INFO_KIND = (
    rtnl.IFLA_IFNAME,
    rtnl.IFLA_LINKINFO,
    rtnl.IFLA_EXT_MASK,
    rtnl.IFLA_INFO_KIND,
)
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLM_F_DUMP_INTR = 0x10
_IFINFOMSG = rtnl.IFINFOMSG
EVENTS_RCVBUF = 256 << 10
ANSWER_TIMEOUT_MS = 2000


def named_namespaces():
    """{name: inode} of the network namespaces `ip netns` names."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return {}
    out, plain = {}, os.stat(NETNS_RUN_DIR).st_dev
    for name in names:
        try:
            st = os.stat(netns_path(name))
        except OSError:
            continue  # deleted meanwhile
        if st.st_dev != plain:  # a bind mount of nsfs, not the bare file
            out[name] = st.st_ino
    return out


def namespace_inode(netns):
    """The inode of namespace `netns` (None: the caller's), or None where there is none."""
    if not netns:
        return current_inode()
    try:
        return os.stat(netns_path(netns)).st_ino
    except OSError:
        return None


def _link_kind(buf, body, end):
    """(ifname, kind) of one RTM_NEWLINK message."""
    attrs = rtnl.attrs(buf, body + _IFINFOMSG.size, end)
    info = rtnl.attrs(attrs.get(IFLA_LINKINFO, b""))
    return rtnl.string(attrs, IFLA_IFNAME), rtnl.string(info, IFLA_INFO_KIND)


def _request(attributes=b""):
    """RTM_GETLINK's body: an ifinfomsg (any family, any index) and `attributes`."""
    mask = rtnl.nla(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attributes + mask


class BridgeWatch:
    """The bridges of one network namespace (None: the daemon's own), looked at cheaply: one
    netlink socket made inside it, subscribed to its link events and used for the requests too
    (events come with sequence number 0, answers with the request's)."""

    def __init__(self, netns):
        self.netns = netns
        self.sock = None
        self._seq = 0
        self._changed = True  # nothing dumped yet
        self._bridges = {}
        with entered(netns):
            self.identity = current_inode()
            self.sock = rtnl.subscribe(RTNLGRP_LINK, None, EVENTS_RCVBUF)
        self.sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self, timeout_ms):
        """One datagram, or None when none came within `timeout_ms`. An overrun (ENOBUFS: events
        were lost) marks the namespace changed."""
        while True:
            try:
                return self.sock.recv(1 << 16)
            except BlockingIOError:
                if not timeout_ms or not self._poll.poll(timeout_ms):
                    return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._changed = True

    def _answers(self, buf, seq):
        """(type, body, end) of the messages in `buf` that answer request `seq`; an event among
        them marks the namespace changed."""
        for kind, body, end in rtnl.messages(buf):
            msg_seq = struct.unpack_from("=I", buf, body - rtnl.HEADER.size + 8)[0]
            if msg_seq == seq:
                yield kind, body, end
            elif msg_seq == 0:
                self._changed = True

    def _ask(self, flags, body):
        self._seq += 1
        size = rtnl.HEADER.size + len(body)
        self.sock.send(rtnl.HEADER.pack(size, RTM_GETLINK, rtnl.NLM_F_REQUEST | flags, self._seq, 0) + body)
        return self._seq

    def bridges(self):
        """{name: ifindex} of the namespace's bridges, dumped again only after a link event."""
        while (buf := self._recv(0)) is not None:  # events, or what is left of an old answer
            try:
                for _ in self._answers(buf, None):
                    pass
            except XdpbrError:
                continue  # an old request's error
        if self._changed:
            self._changed = False  # an event from now on asks for another dump
            try:
                self._bridges = self._dump()
            except BaseException:
                self._changed = True
                raise
        return dict(self._bridges)

    def _dump(self):
        kind = rtnl.nla(IFLA_INFO_KIND, b"bridge\0")
        seq = self._ask(rtnl.NLM_F_DUMP, _request(rtnl.nla(IFLA_LINKINFO, kind)))
        found = {}
        while True:
            buf = self._recv(ANSWER_TIMEOUT_MS)
            if buf is None:  # its end was lost in an overrun: the next scan asks again
                raise XdpbrError(f"no answer to a link dump within {ANSWER_TIMEOUT_MS} ms")
            for kind_, body, end in self._answers(buf, seq):
                flags = struct.unpack_from("=H", buf, body - rtnl.HEADER.size + 6)[0]
                if flags & NLM_F_DUMP_INTR:
                    self._changed = True  # links changed during the dump: ask again next time
                if kind_ == rtnl.NLMSG_DONE:
                    return found
                if kind_ == RTM_NEWLINK and end - body >= _IFINFOMSG.size:
                    name, link_kind = _link_kind(buf, body, end)
                    if link_kind == "bridge":  # a kernel that ignores the filter sends every link
                        found[name] = _IFINFOMSG.unpack_from(buf, body)[2]

    def link_kind(self, name):
        """The IFLA_INFO_KIND of link `name` ("" for a physical device), or None if there is none."""
        seq = self._ask(0, _request(rtnl.nla(IFLA_IFNAME, name.encode() + b"\0")))
        while True:
            buf = self._recv(ANSWER_TIMEOUT_MS)
            if buf is None:
                raise XdpbrError(f"no answer about link {name} within {ANSWER_TIMEOUT_MS} ms")
            try:
                for kind_, body, end in self._answers(buf, seq):
                    if kind_ == RTM_NEWLINK:
                        return _link_kind(buf, body, end)[1]
            except XdpbrError as exc:
                if exc.errno in (errno.ENODEV, errno.EINVAL):
                    return None
                raise
