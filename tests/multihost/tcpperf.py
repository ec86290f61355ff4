#!/usr/bin/env python3
"""iperf-style check of the multi-host harness's links (no MPI, no busy polling): TCP round-trip
latency of 1 byte and one-way bulk bandwidth between two hosts.

  scripts/multihost.sh exec h2 python3 tests/multihost/tcpperf.py server &
  scripts/multihost.sh exec h1 python3 tests/multihost/tcpperf.py client 10.77.0.12 [MB]
"""
import socket
import sys
import time

PORT = 5201


def server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(2)
    for _ in range(2):  # one connection for latency, one for bandwidth
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = c.recv(1)
        if mode == b"L":  # echo single bytes until the client closes
            while (b := c.recv(1)):
                c.sendall(b)
        else:  # swallow bytes, then answer with one byte
            total = 0
            while (chunk := c.recv(1 << 20)):
                total += len(chunk)
                if chunk.endswith(b"E"):
                    break
            c.sendall(b"A")
        c.close()


def client(host, megabytes):
    c = socket.create_connection((host, PORT))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"L")
    rtts = []
    for _ in range(2000):
        t = time.perf_counter()
        c.sendall(b"x")
        c.recv(1)
        rtts.append(time.perf_counter() - t)
    c.close()
    rtts.sort()
    print(f"tcp rtt 1 B: median {rtts[len(rtts) // 2] * 1e6:.1f} us, min {rtts[0] * 1e6:.1f} us, "
          f"p90 {rtts[len(rtts) * 9 // 10] * 1e6:.1f} us (2000 round trips)")
    c = socket.create_connection((host, PORT))
    c.sendall(b"B")
    block = b"\0" * (1 << 20)
    t = time.perf_counter()
    for _ in range(megabytes):
        c.sendall(block)
    c.sendall(b"E")
    c.recv(1)
    dt = time.perf_counter() - t
    print(f"tcp bulk {megabytes} MiB: {megabytes * (1 << 20) * 8 / dt / 1e9:.3f} Gbit/s ({dt:.2f} s)")
    c.close()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        server()
    elif len(sys.argv) >= 3 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 512)
    else:
        sys.exit(__doc__)
