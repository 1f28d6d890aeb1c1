"""Real sockets in lab namespaces: TCP and UDP that check every byte arrived intact.

Sockets are created inside the namespace (setns) and keep it; transfers are bounded in size
and time.
"""

import hashlib
import os
import socket
import threading

from xdpbr.loader.netns import entered
from xdpbr.loader.packets import mac

SO_RCVBUFFORCE = 33


ETH_P_ALL = 0x0003


def packet_socket(netns, ifname, receive=True, timeout=2.0):
    """An AF_PACKET socket on `ifname` in `netns` that sends whole frames and, with `receive`,
    gets every frame the interface sees (ETH_P_ALL; CPython applies htons() at bind)."""
    proto = ETH_P_ALL if receive else 0
    with entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    try:
        sock.bind((ifname, proto))
    except OSError:
        sock.close()
        raise
    sock.settimeout(timeout)
    return sock


def frames_on(sock, count, *, src=None, dst=None):
    """The next `count` frames an AF_PACKET socket receives from MAC `src` and/or to MAC `dst`;
    others (the hosts' own IPv6 multicast) are skipped. The socket's timeout bounds each wait."""
    want_src, want_dst = mac(src) if src else None, mac(dst) if dst else None
    frames = []
    while len(frames) < count:
        data = sock.recv(65536)
        if want_src in (None, data[6:12]) and want_dst in (None, data[:6]):
            frames.append(data)
    return frames


def xsk_frames(xsk, count, dst=None, tries=50, timeout=0.05):
    """Frames (to MAC `dst`, or all) an XskSocket receives, until `count` arrived or `tries`
    waits of `timeout` s passed."""
    want = mac(dst) if dst else None
    frames = []
    for _ in range(tries):
        frames += [f for f in xsk.recv(timeout=timeout) if want in (None, f[:6])]
        if len(frames) >= count:
            break
    return frames


def _socket(netns, kind):
    with entered(netns):
        return socket.socket(socket.AF_INET, kind)


def tcp_transfer(src, dst, nbytes=4 << 20, port=5001, timeout=20.0):
    """Send nbytes of random data from src to dst; returns True when the digest matches."""
    payload = os.urandom(nbytes)
    server = _socket(dst.netns, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((dst.ip, port))
    server.listen(1)
    server.settimeout(timeout)
    got = {}

    def serve():
        try:
            conn, _ = server.accept()
            conn.settimeout(timeout)
            digest, total = hashlib.sha256(), 0
            while total < nbytes:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
            got["digest"], got["bytes"] = digest.digest(), total
            conn.close()
        except OSError as exc:
            got["error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    client = _socket(src.netns, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect((dst.ip, port))
        client.sendall(payload)
    finally:
        client.close()
        t.join(timeout)
        server.close()
    return got.get("digest") == hashlib.sha256(payload).digest()


def udp_exchange(src, dst, count=100, size=1000, port=5002, timeout=3.0):
    """Send `count` datagrams with distinct payloads; returns how many arrived intact."""
    rx = _socket(dst.netns, socket.SOCK_DGRAM)
    # room for every datagram: the receiver reads only after the sender is done
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    rx.bind((dst.ip, port))
    rx.settimeout(0.5)
    tx = _socket(src.netns, socket.SOCK_DGRAM)
    sent = {}
    try:
        for i in range(count):
            body = i.to_bytes(4, "big") + os.urandom(size - 4)
            sent[i] = body
            tx.sendto(body, (dst.ip, port))
            if i % 10 == 9:
                # a little pacing: the VM stand-in's relay is a Python loop
                threading.Event().wait(0.002)
        intact = 0
        try:
            while intact < count:
                data = rx.recv(65536)
                if sent.get(int.from_bytes(data[:4], "big")) == data:
                    intact += 1
        except TimeoutError:
            pass
        return intact
    finally:
        rx.close()
        tx.close()
