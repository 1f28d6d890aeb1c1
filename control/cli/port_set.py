"""`xdpbr port set`: remember a port's mode in bpffs and apply it now."""

from ...loader.errors import NotFound, XdpbrError
from ...loader.journal import Journal
from ...loader.lock import writer_lock
from ..datapath.attachment import reconcile
from ..datapath.session import Session


def set_mode(bridge, netns, port_name, mode):
    with writer_lock(), Session(bridge, netns) as s:
        s.find_bridge()
        try:
            s.open_pins()
        except NotFound:
            raise NotFound(f"bridge {bridge} is not attached", fix=f"xdpbr attach {bridge} first") from None
        ports = {p.name: p for p in s.rtnl.ports(s.bridge)}
        if port_name not in ports:
            if s.rtnl.link_exists(name=port_name):
                raise XdpbrError(
                    f"{port_name} is not a port of bridge {bridge}",
                    fix=f"enslave it with `ip link set {port_name} master {bridge}`",
                )
            raise NotFound(f"interface {port_name} does not exist")
        previous = s.requested_modes().get(port_name, "auto")
        journal = Journal()
        s.set_requested_mode(port_name, mode)
        try:
            reconcile(s, journal)
        except BaseException:
            journal.rollback()
            s.set_requested_mode(port_name, previous)
            reconcile(s)
            raise
