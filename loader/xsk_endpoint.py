"""A Python AF_XDP endpoint: the counterpart of loader/tap.TapEndpoint for a VM that gets its
sockets from xdpbr's broker.

It sends and receives Ethernet frames through the handed-over sockets (one XskSocket per queue)
and, with an IPv4 address, plays the guest kernel's part a peer needs first: it answers ARP
requests and ICMP echo requests for its address. Everything else it receives waits in `inbox`.
`start()` runs that in a thread, so a test or the demo can ping it from a container while it
sends; the TX ring is shared by both, so sends take a lock.

Socket-level drops (XDP_STATISTICS) are only readable with the socket, which the consumer holds
(this kernel has no AF_XDP sock_diag): `statistics()` reports them for this endpoint.
"""

import collections
import select
import socket
import struct
import threading

from .afxdp import XskSocket, from_fd
from .packets import csum16, ether, ipv4, mac, udp4

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa


class AfxdpEndpoint:
    def __init__(self, sockets, mac_address, ip=None):
        self.sockets = sockets
        self.mac, self.ip = mac_address, ip
        self._mac, self._ip = mac(mac_address), socket.inet_aton(ip) if ip else None
        self.inbox = collections.deque()
        self.arp_replies = self.echo_replies = 0
        self._tx_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    @classmethod
    def adopt(cls, reply, fds, mac_address, ip=None):
        """What a VMM does with the broker's answer: UMEM and rings on each handed-over socket,
        then bind it to (the endpoint's interface, its queue)."""
        sockets = []
        try:
            for offset, fd in enumerate(fds):
                sockets.append(XskSocket(from_fd(fd), reply["ifindex"], reply["start_queue"] + offset))
        except BaseException:
            for xsk in sockets:
                xsk.close()
            raise
        return cls(sockets, mac_address, ip)

    def send(self, frames):
        """Frames out of queue 0's TX ring; returns how many were queued."""
        with self._tx_lock:
            return self.sockets[0].send(frames)

    def poll(self, timeout=0.0):
        """Receive, answer ARP and ping, keep the rest in `inbox`; returns how many arrived."""
        if timeout and not any(xsk.rx.available() for xsk in self.sockets):
            select.select([xsk.fd for xsk in self.sockets], [], [], timeout)
        arrived = []
        for xsk in self.sockets:
            arrived += xsk.recv()
        answers = []
        for frame in arrived:
            answer = self.answer(frame)
            if answer is None:
                self.inbox.append(frame)
            else:
                answers.append(answer)
        if answers:
            self.send(answers)
        return len(arrived)

    def answer(self, frame):
        """The reply a guest kernel gives to an ARP request or ICMP echo request for our
        address, or None (malformed frames included)."""
        if self._ip is None or len(frame) < 14:
            return None
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == ETH_P_ARP and len(frame) >= 14 + _ARP.size:
            htype, ptype, hlen, plen, op, sha, spa, _, tpa = _ARP.unpack_from(frame, 14)
            if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, ARP_REQUEST) or tpa != self._ip:
                return None
            self.arp_replies += 1
            arp = _ARP.pack(1, ETH_P_IP, 6, 4, ARP_REPLY, self._mac, self._ip, sha, spa)
            return sha + self._mac + struct.pack("!H", ETH_P_ARP) + arp
        if ethertype == ETH_P_IP and len(frame) >= 14 + 20 + 8 and frame[14] == 0x45 and frame[23] == 1:
            if frame[30:34] != self._ip or frame[0:6] != self._mac:
                return None
            total = struct.unpack_from("!H", frame, 16)[0]
            icmp = frame[34 : 14 + total]
            if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REQUEST or csum16(icmp) != 0xFFFF:
                return None
            body = bytes([ICMP_ECHO_REPLY, 0, 0, 0]) + icmp[4:]
            body = body[:2] + struct.pack("!H", 0xFFFF ^ csum16(body)) + body[4:]
            self.echo_replies += 1
            src = socket.inet_ntoa(frame[26:30])
            return frame[6:12] + self._mac + struct.pack("!H", ETH_P_IP) + ipv4(self.ip, src, 1, body) + body
        return None

    def udp(self, dst_mac, dst_ip, payload, sport=4000, dport=4000):
        """A UDP/IPv4 frame from this endpoint (checksums complete)."""
        return ether(dst_mac, self.mac, ETH_P_IP, udp4(self.ip, dst_ip, payload, sport=sport, dport=dport))

    def take(self, match=lambda frame: True):
        """Frames from the inbox that `match`, removed from it, in arrival order."""
        kept, taken = collections.deque(), []
        while self.inbox:
            frame = self.inbox.popleft()
            (taken if match(frame) else kept).append(frame)
        self.inbox.extendleft(reversed(kept))
        return taken

    def start(self):
        """Answer and receive in a thread until stop()."""
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"afxdp-{self.mac}")
        self._thread.start()
        return self

    def _serve(self):
        while not self._stop.is_set():
            self.poll(timeout=0.05)

    def statistics(self):
        """XDP_STATISTICS of every socket, summed."""
        total = collections.Counter()
        for xsk in self.sockets:
            total.update(xsk.statistics())
        return dict(total)

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for xsk in reversed(self.sockets):
            xsk.close()
        self.sockets = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
