"""The netfilter poll of one network namespace: the one owner of what it needs between polls
(the legacy tables' fingerprint, the files it keeps open there, whether nftables said its rules
changed).

nftables changes arrive as NFNLGRP_NFTABLES notifications (`mark_changed`); legacy tables have
no change notification, so `read_if_changed` compares a cheap fingerprint of them (and of the
br_netfilter sysctls) with the last one. The fingerprint is stored only once the rules were read:
a read that fails (EMFILE, a table being replaced) is tried again at the next poll. Every
nftables message counts, set elements added or removed (NFT_MSG_NEWSETELEM/DELSETELEM) like
rules; a notification that arrives while a read runs leaves the rules due (the read may have
missed the change).
"""

from ...loader.netns import KeptFiles
from . import snapshot


class RulesPoll:
    def __init__(self, netns):
        self.netns = netns
        self.changed = True  # read the rules at the next poll
        self.marks = 0  # nftables notifications so far
        self.fingerprint = None  # of the legacy tables and sysctls at the last successful read
        self.kept = KeptFiles(netns)  # what the poll reads, open in the namespace

    def mark_changed(self):
        """nftables said the namespace's rules changed (called from its event reader's thread)."""
        self.marks += 1
        self.changed = True

    def read_if_changed(self):
        """A new snapshot.Snapshot when the rules may have changed since the last read, else
        None; raises XdpbrError or OSError when they cannot be read (and stays due)."""
        fingerprint = snapshot.fingerprint(self.netns, self.fingerprint, self.kept)
        if not self.changed and fingerprint == self.fingerprint:
            return None
        self.changed = True  # until the read below succeeds
        marks = self.marks
        snap = snapshot.read(self.netns)
        self.changed, self.fingerprint = self.marks != marks, fingerprint
        return snap

    def close(self):
        self.kept.close()
