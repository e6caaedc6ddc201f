"""A TCP proxy to put between an S3 client and its server, so a test can cut the network (SIGKILL the
proxy) while the server keeps its state, then bring it back on the same port.

    python tcp_proxy.py LISTEN_PORT TARGET_PORT

Prints LISTENING once it accepts connections, then `UP <MiB>` each time another MiB has gone from
clients to the target, so a test can cut an upload in the middle.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

_MIB = 1 << 20


class Counter:
    def __init__(self) -> None:
        self.lock, self.total, self.reported = threading.Lock(), 0, 0

    def add(self, n: int) -> None:
        with self.lock:
            self.total += n
            while self.total >= (self.reported + 1) * _MIB:
                self.reported += 1
                print(f"UP {self.reported}", flush=True)


def pump(src: socket.socket, dst: socket.socket, counter: Counter | None) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
            if counter is not None:
                counter.add(len(data))
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def serve(listen_port: int, target_port: int) -> None:
    counter = Counter()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    print("LISTENING", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream, counter), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
