"""Kernel feature probes: their answer matches what the kernel then does."""

import os

import pytest
from xdpbr.loader import bpfsys, probe
from xdpbr.loader.errors import XdpbrError


@pytest.mark.root
def test_the_live_frames_probe_agrees_with_a_real_live_run():
    refusal = probe.live_frames_refusal()
    fd = bpfsys.load_xdp_returning(bpfsys.XDP_DROP)
    try:
        frame = probe._PROBE_FRAME
        # without the flag the same program runs: a refusal is about live frames alone
        assert bpfsys.prog_test_run(fd, frame)[0] == bpfsys.XDP_DROP
        ctx = bpfsys.XdpMd(data=0, data_end=len(frame), ingress_ifindex=1)
        if refusal is None:
            bpfsys.prog_test_run(fd, frame, repeat=8, ctx=ctx, flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES)
        else:
            assert "BPF_F_TEST_XDP_LIVE_FRAMES" in refusal and "\n" not in refusal
            with pytest.raises(XdpbrError):
                bpfsys.prog_test_run(fd, frame, ctx=ctx, flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES)
    finally:
        os.close(fd)
