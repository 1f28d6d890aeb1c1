"""xdpbr's product layer: bridge model, FDB mirror, CLI, daemon, metrics."""
