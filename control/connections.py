"""One thread, one selector, many clients: the loop behind the AF_XDP broker and the metrics
endpoint.

Both serve one request per connection, then close it. A thread per connection (what they did
before) lets any local user who can connect pile threads into the root daemon, and a timeout
per recv() lets a client that sends a byte now and then hold its thread for hours. Here:
- a connection's whole request must arrive within `deadline_s` of its accept, and its reply
  must be taken within `write_deadline_s`; an idle or slow client is cut at the deadline;
- a request is at most `max_request` bytes (the client gets the protocol's "too long" reply);
- at most `max_connections` are open; one more evicts the oldest still sending its request
  (it gets the "busy" reply): a client that keeps the table full must keep outrunning new
  arrivals, where refusing the newcomer would let it lock everybody out with a few
  connections renewed before each deadline;
- the reply is computed in the loop's thread (the broker's answer and a scrape each take
  milliseconds), so one scrape costs what it cost before and scrapes never run concurrently.

A protocol is an object with: admit(sock) -> (context, refusal bytes or None), called at accept
before anything is read; end(data) -> the length of a complete request in data, or None;
answer(context, request) -> (reply bytes, [sockets to pass as SCM_RIGHTS]); and the one-line
replies too_long, timed_out, busy (bytes).
"""

import errno
import logging
import os
import selectors
import socket
import threading
import time

from ..loader.errors import UsageError

log = logging.getLogger("xdpbr.connections")

ACCEPT_BATCH = 16  # accepts per turn of the loop, so a flood of connects cannot starve reads
ACCEPT_PAUSE_S = 0.2  # out of file descriptors: stop accepting this long rather than spin
LINGER_S = 1.0  # after the reply: wait this long for the client's close (see _finish)
REPORT_S = 60.0  # cut connections are logged as one summary line at most this often

READING, WRITING, DRAINING = "reading", "writing", "draining"


class _Conn:
    __slots__ = ("sock", "context", "data", "out", "fds", "deadline", "state")

    def __init__(self, sock, context, deadline):
        self.sock, self.context, self.deadline = sock, context, deadline
        self.data, self.out, self.fds, self.state = b"", b"", [], READING


class RequestLoop:
    """Serves `listener` (a bound, listening socket it takes over) with `protocol` from one
    daemon thread; stop() ends it and closes every connection and the listener."""

    def __init__(
        self, listener, protocol, *, name, max_connections, max_request, deadline_s, write_deadline_s
    ):
        self.listener, self.protocol, self.name = listener, protocol, name
        self.max_connections, self.max_request = max_connections, max_request
        self.deadline_s, self.write_deadline_s = deadline_s, write_deadline_s
        self.listener.setblocking(False)
        self.conns = {}  # fd -> _Conn, in accept order (dicts keep insertion order)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self.paused_until = 0.0
        self.cut = {"timed_out": 0, "busy": 0, "too_long": 0}
        self.next_report = time.monotonic() + REPORT_S
        self.alive = True
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def stop(self):
        self.alive = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.thread.join(5)

    def _run(self):
        try:
            while self.alive:
                self._turn()
        except Exception:  # a bug here must not go unnoticed: the daemon goes on without this loop
            log.exception("%s: connection loop failed", self.name)
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.selector.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _turn(self):
        now = time.monotonic()
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ)
        wait = min((c.deadline for c in self.conns.values()), default=now + 1.0) - now
        if self.paused_until:
            wait = min(wait, self.paused_until - now)
        for key, mask in self.selector.select(max(0.0, min(wait, 1.0))):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                return
            else:
                conn = self.conns.get(key.fd)
                if conn is None:
                    continue
                # the state check skips a stale event: an fd closed earlier in this batch may
                # already belong to a connection accepted since
                if mask & selectors.EVENT_WRITE and conn.state == WRITING:
                    self._write(conn)
                elif mask & selectors.EVENT_READ and conn.state != WRITING:
                    self._read(conn)
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            if conn.state == READING:
                self._refuse(conn, "timed_out")
            else:
                self._close(conn)  # a reply not taken in time, or a client that never closes
        if now >= self.next_report:
            self._report(now)

    def _accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: cannot accept (%s), pausing %.1f s", self.name, exc, ACCEPT_PAUSE_S)
                    self.selector.unregister(self.listener)
                    self.paused_until = time.monotonic() + ACCEPT_PAUSE_S
                    return
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            if len(self.conns) >= self.max_connections and not self._evict():
                self._send_and_close(sock, self.protocol.busy)
                self.cut["busy"] += 1
                continue
            try:
                context, refusal = self.protocol.admit(sock)
            except Exception as exc:  # noqa: BLE001 - one client's trouble must not end the loop
                log.warning("%s: cannot admit a client: %s", self.name, exc)
                sock.close()
                continue
            if refusal is not None:
                self._send_and_close(sock, refusal)  # before reading anything it sent
                continue
            conn = _Conn(sock, context, time.monotonic() + self.deadline_s)
            self.conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ)

    def _evict(self):
        """Make room by closing the oldest connection still sending its request."""
        for conn in self.conns.values():
            if conn.state == READING:
                self._refuse(conn, "busy")
                return True
        return False

    def _read(self, conn):
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == DRAINING:
            if not chunk:
                self._close(conn)
            return  # what a client sends after its request is read and dropped
        if not chunk:
            self._close(conn)  # gave up before a whole request: nobody to answer
            return
        conn.data += chunk
        length = self.protocol.end(conn.data[: self.max_request])
        if length is None:
            if len(conn.data) >= self.max_request:
                self._refuse(conn, "too_long")
            return
        try:
            reply, fds = self.protocol.answer(conn.context, conn.data[:length])
        except Exception as exc:  # noqa: BLE001 - the protocol answers its own errors; this is a bug
            log.warning("%s: request failed: %s", self.name, exc)
            self._close(conn)
            return
        conn.state, conn.out, conn.fds, conn.data = WRITING, reply, fds, b""
        conn.deadline = time.monotonic() + self.write_deadline_s
        self.selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._write(conn)

    def _write(self, conn):
        try:
            if conn.fds:  # the fds travel with the first byte; the kernel holds its own copies
                sent = socket.send_fds(conn.sock, [conn.out], [s.fileno() for s in conn.fds])
                for s in conn.fds:
                    s.close()
                conn.fds = []
            else:
                sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._finish(conn)

    def _finish(self, conn):
        """The reply is out: half-close and wait briefly for the client's close. Closing at once
        with unread bytes from the client would make TCP reset the connection, and a reset can
        destroy the reply before the client reads it."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state, conn.deadline = DRAINING, time.monotonic() + LINGER_S
        self.selector.modify(conn.sock, selectors.EVENT_READ)

    def _refuse(self, conn, why):
        """Cut a connection that is still sending its request, with the protocol's one line."""
        self.cut[why] += 1
        try:
            conn.sock.send(getattr(self.protocol, why))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # best effort: the line fits any socket buffer, or the client is gone
        self._close(conn)

    def _close(self, conn):
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        for s in conn.fds:
            s.close()
        conn.sock.close()

    @staticmethod
    def _send_and_close(sock, line):
        """A refusal: one non-blocking send (a line fits any socket buffer), then close."""
        try:
            sock.send(line)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _report(self, now):
        self.next_report = now + REPORT_S
        if any(self.cut.values()):
            log.warning(
                "%s: in the last %d s, cut %d connections at the %.1f s request deadline, %d over "
                "the cap of %d, %d with requests over %d bytes",
                self.name,
                REPORT_S,
                self.cut["timed_out"],
                self.deadline_s,
                self.cut["busy"],
                self.max_connections,
                self.cut["too_long"],
                self.max_request,
            )
            self.cut = dict.fromkeys(self.cut, 0)


def listening_unix(path, mode, gid, backlog=64):
    """A Unix stream socket bound at path (a leftover socket file is replaced)."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        os.chown(path, 0, gid)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def parse_listen(spec):
    """'[ADDR:]PORT' -> (addr, port); a bare port binds loopback only."""
    addr, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics {spec!r}: expected [ADDR:]PORT", fix="for example --metrics 9435")
    return (addr.strip("[]") or "127.0.0.1"), int(port)
