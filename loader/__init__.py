"""The only layer that touches the kernel's BPF, netlink and socket APIs."""
