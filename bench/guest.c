/* The two guests of `xdpbr bench vm`, in C as QEMU's TAP backend is: a Python guest spent
 * ~1 us of interpreter per frame around each syscall, which QEMU does not, and which diluted
 * every path's difference (the writer's CPU carries the bridge's work, inside writev).
 *
 *   xdpbr-guest write FD SECONDS HDRLEN HEX
 *       guest A: writev(FD, [header, frame]) flat out for SECONDS, HEX being the header's and
 *       the frame's bytes; on EAGAIN it waits for POLLOUT (QEMU's tap_send / tap_writable).
 *       Prints "sent N".
 *   xdpbr-guest read FD SECONDS WARMUP HDRLEN DSTMAC
 *       guest B: read(FD) until SECONDS are up, counting the frames to DSTMAC (12 hex digits;
 *       the host's own chatter is not counted) that arrive after WARMUP seconds. Prints
 *       "received N SECONDS_COUNTED".
 *
 * FD is a TAP opened by the benchmark (IFF_VNET_HDR, O_NONBLOCK), inherited across exec. Both
 * end at their deadline: bounded in time whatever the kernel does.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int unhex(const char *hex, unsigned char *out, size_t max)
{
	size_t n = strlen(hex);
	if (n % 2 || n / 2 > max)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int byte;
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return -1;
		out[i] = byte;
	}
	return n / 2;
}

static int guest_write(int fd, double seconds, int hdrlen, const char *hex)
{
	unsigned char buf[2048];
	int len = unhex(hex, buf, sizeof(buf));
	if (len <= hdrlen) {
		fprintf(stderr, "xdpbr-guest: bad header length or frame\n");
		return 2;
	}
	struct iovec iov[2] = { { buf, hdrlen }, { buf + hdrlen, len - hdrlen } };
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	unsigned long long sent = 0;
	double deadline = now() + seconds;
	while (now() < deadline) {
		for (int i = 0; i < 64; i++) { /* the clock once per 64 frames */
			if (writev(fd, iov, 2) >= 0) {
				sent++;
				continue;
			}
			if (errno != EAGAIN && errno != ENOBUFS) {
				perror("xdpbr-guest: writev");
				return 1;
			}
			poll(&pfd, 1, 50);
			break;
		}
	}
	printf("sent %llu\n", sent);
	return 0;
}

static int guest_read(int fd, double seconds, double warmup, int hdrlen, const char *mac_hex)
{
	unsigned char mac[6], buf[65536 + 64];
	if (unhex(mac_hex, mac, sizeof(mac)) != 6) {
		fprintf(stderr, "xdpbr-guest: bad MAC\n");
		return 2;
	}
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	unsigned long long received = 0;
	double start = now(), deadline = start + seconds, counting_from = start + warmup;
	double first = 0;
	while (now() < deadline) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno != EAGAIN) {
				perror("xdpbr-guest: read");
				return 1;
			}
			poll(&pfd, 1, 20);
			continue;
		}
		if (n < hdrlen + 6 || memcmp(buf + hdrlen, mac, 6))
			continue;
		double t = now();
		if (t >= counting_from) {
			if (!first)
				first = t;
			received++;
		}
	}
	printf("received %llu %.6f\n", received, first ? now() - first : 0.0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "write"))
		return guest_write(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), argv[5]);
	if (argc == 7 && !strcmp(argv[1], "read"))
		return guest_read(atoi(argv[2]), atof(argv[3]), atof(argv[4]), atoi(argv[5]), argv[6]);
	fprintf(stderr, "usage: xdpbr-guest write FD SECONDS HDRLEN HEX | read FD SECONDS WARMUP HDRLEN DSTMAC\n");
	return 2;
}
