"""Which ports of a bridge netfilter rules could see, and so must stay on the Linux bridge.

The fast path skips bridge netfilter (br_netfilter's calls into the ip, ip6 and arp families,
and the bridge family's hooks), where libvirt, OpenStack and Docker keep their rules. With
`--netfilter respect` (the default) every port a rule can see is held in `bridge` mode, and
frames towards it go to the bridge; every other port stays accelerated.

- rules.py: the rulesets a bridged frame can meet, in the terms the walk evaluates;
- policy.py: the per-port walk and its decision (which ports are held, by which rule);
- snapshot.py: a namespace's rulesets read through loader/ (legacy tables, nft, sysctls);
- poll.py: the one owner of a namespace's poll state (fingerprint, kept files, changed flag);
- store.py: each bridge's last decision, for `show` and the metrics.
"""
