# Two entry points for a newcomer: `make demo` and `make test`. Both install everything first
# (Debian packages, bpffs, the venv in .venv/) so they work on a fresh Debian 12 host as root.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OVS_STAMP := $(VENV)/ovs/.stamp
OVS_LIBS := libbpf1 libcap-ng0 libnuma1 libssl3 libunbound8 libxdp1

# bcc (python3-bpfcc) needs kernel headers: Debian's linux-headers-amd64 serve when no package
# matches the running kernel (loader/compile.py finds them).
APT_PACKAGES := ca-certificates python3-bpfcc python3-venv python3-pip clang llvm libxdp1 libxdp-dev xdp-tools \
	bpftool iproute2 iputils-ping linux-headers-amd64 iperf3 ethtool nftables iptables arptables procps \
	prometheus python3-matplotlib systemd

.PHONY: setup demo test lint bench clean install-service
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@[ "$$(id -u)" = 0 ] || { echo "make: xdpbr needs root (BPF, netlink, namespaces); run as root"; exit 1; }
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	# pip trusts the system CA store (hosts behind a TLS-inspecting proxy add their CA there)
	PIP_CERT=$${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt} $(PY) -m pip install -q -e '.[dev]'
	# the checkout's bench/ and testbed/ (not part of the installed product) importable too
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/xdpbr-checkout.pth"
	touch $@

demo: setup
	$(PY) -m testbed.demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# every figure to docs/benchmarks.json (and the chart), then the table of that run
bench: setup $(OVS_STAMP)
	$(VENV)/bin/xdpbr -j bench --png docs/benchmarks.png > docs/benchmarks.json.new
	mv docs/benchmarks.json.new docs/benchmarks.json
	$(PY) -m bench.report docs/benchmarks.json

# Open vSwitch (Debian's 3.1 is built with AF_XDP) for the afxdp-loop comparison: its libraries
# from apt, the package itself only unpacked into .venv/ovs, so no OVS service is installed or
# started on the host (bench/ovs.py runs a private instance in the benchmark's namespace).
$(OVS_STAMP): $(STAMP)
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(OVS_LIBS)
	rm -rf $(VENV)/ovs.download && mkdir -p $(VENV)/ovs.download
	cd $(VENV)/ovs.download && apt-get -q -o APT::Sandbox::User=root download openvswitch-common openvswitch-switch
	for deb in $(VENV)/ovs.download/*.deb; do dpkg-deb -x $$deb $(VENV)/ovs; done
	rm -rf $(VENV)/ovs.download
	touch $@

# The daemon as a systemd service, running this checkout's CLI.
install-service: setup
	ln -sf $(CURDIR)/$(VENV)/bin/xdpbr /usr/local/sbin/xdpbr
	install -m 0644 systemd/xdpbr.service /etc/systemd/system/xdpbr.service
	mkdir -p /etc/xdpbr
	[ -e /etc/xdpbr/xdpbr.toml ] || install -m 0644 systemd/xdpbr.toml.example /etc/xdpbr/xdpbr.toml
	systemctl daemon-reload
	@echo "edit /etc/xdpbr/xdpbr.toml, then: systemctl enable --now xdpbr"

clean:
	rm -rf $(VENV) *.egg-info
