"""A bridge's identity, and every name and path xdpbr derives from it, in one place.

A bridge is its name and its network namespace (None: the namespace xdpbr runs in). Its label,
`br0` or `br0@tenant1`, names it in `show`, metrics, logs and configuration, and is the one
path component of its pins, broker socket, endpoint records and held marker. Interface names
cannot contain '/' and xdpbr refuses '@' in bridge names, so a label parses back unambiguously.
"""

import dataclasses
import os

from . import instance
from .errors import XdpbrError


@dataclasses.dataclass(frozen=True, order=True)
class BridgeId:
    name: str
    netns: str | None = None

    @classmethod
    def parse(cls, label):
        """'br0@ns1' -> BridgeId('br0', 'ns1'); 'br0' -> BridgeId('br0')."""
        name, _, netns = label.partition("@")
        return cls(name, netns or None)

    @property
    def label(self):
        return f"{self.name}@{self.netns}" if self.netns else self.name

    def __str__(self):
        return self.label

    def _component(self):
        if "@" in self.name:
            raise XdpbrError(f"bridge name {self.name!r} contains '@', which xdpbr uses in pin paths")
        return self.label

    @property
    def pin_dir(self):
        """Its maps and programs: /sys/fs/bpf/xdpbr[-INSTANCE]/<label>."""
        return os.path.join(instance.bpf_root(), self._component())

    @property
    def socket_path(self):
        """Its AF_XDP broker: /run/xdpbr[-INSTANCE]/<label>.sock."""
        return os.path.join(instance.run_dir(), f"{self._component()}.sock")

    @property
    def record_dir(self):
        """Its endpoints' records: /run/xdpbr[-INSTANCE]/endpoints/<label>/."""
        return os.path.join(instance.endpoint_record_root(), self._component())

    @property
    def endpoint_pin_dir(self):
        """Its AF_XDP endpoints' pins: /sys/fs/bpf/xdpbr-endpoints[-INSTANCE]/<label>/."""
        return os.path.join(instance.endpoint_pin_root(), self._component())

    @property
    def held_marker(self):
        """Present while `xdpbr detach` holds it from the daemon:
        /var/lib/xdpbr[-INSTANCE]/detached/<label>."""
        return os.path.join(instance.held_dir(), self._component())
