"""What the daemon knows of its configured bridges, beside the loop (control/daemon/service.py):
which bridges exist where an entry may match, which an entry matches, which `xdpbr detach`
holds, which went or were made again, and what it told `show` (config.save_view).

- Where: every pin scan lists /run/netns and keeps a BridgeWatch (loader/bridge_watch.py: one
  netlink socket per namespace, a bridge dump only after a link event) in each namespace an
  entry may match and each one adopted bridges live in; a namespace that goes, or whose name
  now means another, has its watch closed (its socket would keep it alive).
- Identity: the ifindex a bridge had when it was attached or adopted (with its pin directory's
  inode: an attach by hand since is a new one). A bridge made again under its name has another.
- Markers: `xdpbr detach`'s marker holds only the bridge it was written for; one whose bridge or
  namespace is gone or was made again is removed (config.check_hold), also of bridges no entry
  matches (swept every MARKER_SWEEP_S).
"""

import logging
import os
import time

from ...loader import bridge_watch
from ...loader.bridge_id import BridgeId
from ...loader.errors import XdpbrError
from .. import config

log = logging.getLogger("xdpbr.daemon")

MARKER_SWEEP_S = 5.0  # `xdpbr detach` markers of bridges no entry matches are checked this often
HELD = "detached with `xdpbr detach`: left alone until `xdpbr attach`, or until the bridge is gone"


def pin_dir_inode(bridge, netns):
    """The inode of a bridge's pin directory (a new attach makes a new one), or None."""
    try:
        return os.stat(BridgeId(bridge, netns).pin_dir).st_ino
    except (OSError, XdpbrError):
        return None


class ConfiguredBridges:
    def __init__(self):
        self.watches = {}  # netns -> BridgeWatch
        self.watch_failed = {}  # netns -> the error already logged
        self.identity = {}  # (bridge, netns) -> (pin directory inode, the bridge's ifindex)
        self.attached_by = {}  # (bridge, netns) -> {"entry", "pins"}: the entry that attached it
        self.left_alone = {}  # (bridge, netns) -> (entry, why) of configured bridges not attached
        self.view_written = None
        self.next_marker_sweep = 0.0

    def look(self, cfg, adopted):
        """{netns: {bridge: ifindex}} of the namespaces an entry of `cfg` may match (None: the
        daemon's own) and of those in `adopted`. One that cannot be looked at is left out,
        said once."""
        named = bridge_watch.named_namespaces()
        wanted = {ns for ns in cfg.namespaces(named) | set(adopted) if ns is None or ns in named}
        for ns in list(self.watches):
            if ns not in wanted or (ns is not None and named[ns] != self.watches[ns].identity):
                self.watches.pop(ns).close()
        existing = {}
        for ns in sorted(wanted, key=lambda n: n or ""):
            try:
                if ns not in self.watches:
                    self.watches[ns] = bridge_watch.BridgeWatch(ns)
                if ns is not None and self.watches[ns].identity != named[ns]:
                    self.watches.pop(ns).close()  # made again meanwhile: the next scan looks
                    continue
                existing[ns] = self.watches[ns].bridges()
            except (XdpbrError, OSError) as exc:
                watch = self.watches.pop(ns, None)
                if watch:
                    watch.close()
                if self.watch_failed.get(ns) != str(exc):
                    log.warning("%s: cannot list its bridges: %s", ns or "default namespace", exc)
                    self.watch_failed[ns] = str(exc)
                continue
            self.watch_failed.pop(ns, None)
        return existing

    def candidates(self, cfg, existing):
        """(options bound to the bridge, its ifindex) of each existing bridge an entry matches,
        in file order; also a name an entry gives literally that is there but is no bridge
        (ifindex None: attach says what it is)."""
        out = []
        for ns, bridges in existing.items():
            for name, ifindex in bridges.items():
                bc = cfg.match(name, ns)
                if bc:
                    out.append((bc, ifindex))
        for bc in cfg.bridges:
            watch = self.watches.get(bc.netns)
            if bc.patterned or bc.netns not in existing or bc.name in existing[bc.netns] or not watch:
                continue
            try:
                if watch.link_kind(bc.name) is not None:
                    out.append((bc, None))
            except (XdpbrError, OSError):
                continue  # the next scan asks again
        return sorted(out, key=lambda c: (c[0].index, c[0].netns or "", c[0].name))

    def held(self, bc, ifindex):
        """Whether `xdpbr detach` holds this very bridge (`ifindex` in the namespace watched
        now); a marker whose bridge or namespace is gone or was made again is removed, said once."""
        watch = self.watches.get(bc.netns)
        try:
            held, removed = config.check_hold(bc.label, ifindex, watch.identity if watch else None)
        except (XdpbrError, OSError):
            return False  # no marker can name it ('@' in its name): attach says why
        if removed:
            log.info("%s: `xdpbr detach` no longer holds it: %s; marker removed", bc.label, removed)
        return held

    def sweep_markers(self, existing):
        """Every MARKER_SWEEP_S, every `xdpbr detach` marker, also of bridges no entry matches:
        one whose bridge or namespace is gone or was made again is removed (they used to pile up)."""
        if time.monotonic() < self.next_marker_sweep:
            return
        self.next_marker_sweep = time.monotonic() + MARKER_SWEEP_S
        for label in config.held_labels():
            bid = BridgeId.parse(label)
            try:
                if bid.netns in existing:
                    ifindex, inode = existing[bid.netns].get(bid.name), self.watches[bid.netns].identity
                else:
                    ifindex, inode = config.bridge_identity(label)
                _, removed = config.check_hold(label, ifindex, inode)
            except (XdpbrError, OSError):
                continue
            if removed:
                log.info("%s: `xdpbr detach` no longer holds it: %s; marker removed", label, removed)

    def remember(self, bridge, netns, ifindex):
        """The bridge an attachment belongs to: another one under its name later is not it."""
        self.identity[(bridge, netns)] = (pin_dir_inode(bridge, netns), ifindex or None)

    def attached(self, bc, ifindex):
        """`bc` (bound to a bridge) attached the bridge that has `ifindex`."""
        self.attached_by[(bc.name, bc.netns)] = {"entry": bc.entry, "pins": pin_dir_inode(bc.name, bc.netns)}
        self.remember(bc.name, bc.netns, ifindex)

    def vanished(self, present, existing):
        """[((bridge, netns), why)] of attached bridges gone from a namespace that stays, or made
        again under their name (another ifindex than when attached or adopted)."""
        out = []
        for key in sorted(present, key=str):
            bridge, ns = key
            if ns not in existing:
                continue  # not looked at: nothing is known
            now, (pinned, then) = existing[ns].get(bridge), self.identity.get(key, (None, None))
            if pinned != pin_dir_inode(*key):  # attached anew (by hand) since: to the bridge there now
                self.remember(bridge, ns, now)
                then = now
            if now is None:
                out.append((key, "the bridge is gone"))
            elif then and now != then:
                out.append((key, f"the bridge was made again (ifindex {then}, now {now})"))
        return out

    def forget(self, key):
        self.attached_by.pop(key, None)
        self.identity.pop(key, None)

    def report_left_alone(self, left, present):
        """Log what changed among the configured bridges left alone (a failure to attach is
        logged where it happens), and keep them for `show`."""
        for key, (entry, why) in sorted(left.items(), key=str):
            if self.left_alone.get(key) != (entry, why) and why == HELD:
                log.info("%s: left alone (%s): %s", BridgeId(*key).label, entry, why)
        for key in sorted(self.left_alone.keys() - left.keys() - present, key=str):
            log.info("%s: no longer left alone (gone, or no entry matches it)", BridgeId(*key).label)
        self.left_alone = left

    def rematch(self, cfg):
        """After a reload: the entry whose options each bridge follows now."""
        for key, by in list(self.attached_by.items()):
            bc = cfg.match(*key)
            if bc:
                self.attached_by[key] = dict(by, entry=bc.entry)
            else:
                self.attached_by.pop(key)

    def write_view(self, config_path, present):
        """The entry that attached each bridge and what is left alone, for `show`; written when
        it changed."""
        self.attached_by = {k: v for k, v in self.attached_by.items() if k in present}
        self.identity = {k: v for k, v in self.identity.items() if k in present}
        view = {
            "pid": os.getpid(),
            "config": config_path,
            "attached": {BridgeId(*k).label: v for k, v in sorted(self.attached_by.items(), key=str)},
            "left_alone": [
                {"bridge": BridgeId(*k).label, "entry": entry, "reason": why}
                for k, (entry, why) in sorted(self.left_alone.items(), key=str)
            ],
        }
        if view == self.view_written:
            return
        try:
            config.save_view(view)
        except OSError as exc:
            log.warning("cannot keep the configured bridges' state for `show`: %s", exc)
        self.view_written = view

    def load_view(self):
        """Entries that attached bridges under a previous daemon, where the pins are still those
        it made."""
        for label, by in config.load_view().get("attached", {}).items():
            bid = BridgeId.parse(label)
            key = (bid.name, bid.netns)
            if isinstance(by, dict) and by.get("pins") and by.get("pins") == pin_dir_inode(*key):
                self.attached_by[key] = by

    def close(self):
        for watch in self.watches.values():
            watch.close()
        self.watches = {}
