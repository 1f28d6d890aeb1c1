"""What the daemon listens to in one network namespace: its link, FDB and nftables events."""

from ...loader import events
from ..netfilter.poll import RulesPoll


class NamespaceEvents:
    """The link, FDB and nftables event readers of one namespace. Link and FDB events go into
    the daemon's queue; an nftables change only marks the namespace's rules for a re-read. They
    stop together and are restarted together, with a full resync (events were lost meanwhile)."""

    def __init__(self, netns, queue_):
        self.netns = netns
        self.rules = RulesPoll(netns)

        def deliver(msgs, received_ns):
            queue_.put((netns, msgs, received_ns))

        def nft_changed(msgs, received_ns):
            self.rules.mark_changed()

        self.readers = [
            events.start("link", netns, deliver),
            events.start("fdb", netns, deliver),
            events.start("nft", netns, nft_changed),
        ]
        self.retry_at = 0.0  # when a failed set may be started again

    @property
    def failure(self):
        """Why a reader stopped on its own, or None while both run."""
        return next((f"{r.kind} events: {r.failure}" for r in self.readers if r.failed), None)

    def stop(self):
        for reader in self.readers:
            reader.stop()
        self.rules.close()
