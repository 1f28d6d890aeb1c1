"""The client side of the AF_XDP broker (control/endpoints/broker.py has the protocol): what a
launcher does to get an endpoint's sockets. The stable API for launchers of one's own:
`from xdpbr.control.endpoints.client import request, socket_path`."""

import json
import socket

from ...loader.bridge_id import BridgeId


def socket_path(bridge, netns=None):
    """The broker socket of a bridge (`/run/xdpbr[-INSTANCE]/BRIDGE[@NETNS].sock`)."""
    return BridgeId(bridge, netns).socket_path


def request(path, name, timeout=5.0):
    """Ask the broker at `path` for endpoint `name`'s sockets: (reply, [fds])."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(json.dumps({"endpoint": name}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the request was read: the refusal is waiting to be read
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 64)
    return json.loads(msg.split(b"\n", 1)[0]), fds
