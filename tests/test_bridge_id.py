"""A bridge's identity: the label parses back, and every path carries the instance and the
label as one component."""

import pytest
from xdpbr.loader import instance
from xdpbr.loader.bridge_id import BridgeId
from xdpbr.loader.errors import XdpbrError


@pytest.mark.parametrize("bridge", [BridgeId("br0"), BridgeId("br0", "tenant1"), BridgeId("vmbr-x", "a_b")])
def test_a_label_parses_back_to_the_same_bridge(bridge):
    assert BridgeId.parse(bridge.label) == bridge
    assert str(bridge) == bridge.label


def test_paths_carry_the_instance_and_the_label(monkeypatch):
    monkeypatch.setenv(instance.ENV, "")
    b = BridgeId("br0", "ns1")
    assert b.pin_dir == "/sys/fs/bpf/xdpbr/br0@ns1"
    assert b.socket_path == "/run/xdpbr/br0@ns1.sock"
    assert b.record_dir == "/run/xdpbr/endpoints/br0@ns1"
    assert b.endpoint_pin_dir == "/sys/fs/bpf/xdpbr-endpoints/br0@ns1"
    assert b.held_marker == "/var/lib/xdpbr/detached/br0@ns1"
    monkeypatch.setenv(instance.ENV, "blue")
    assert BridgeId("br0").pin_dir == "/sys/fs/bpf/xdpbr-blue/br0"
    assert BridgeId("br0").socket_path == "/run/xdpbr-blue/br0.sock"
    assert instance.config_path() == "/etc/xdpbr/xdpbr-blue.toml"


def test_a_bridge_name_with_an_at_sign_has_no_paths():
    with pytest.raises(XdpbrError, match="contains '@'"):
        _ = BridgeId("br@0").pin_dir


@pytest.mark.parametrize("name", ["../x", "a/b", "Upper", "-x", "endpoints", "endpoints-1", "x" * 33])
def test_instance_names_that_would_leave_their_directory_are_refused(name):
    with pytest.raises(XdpbrError, match="instance name"):
        instance.check(name)
