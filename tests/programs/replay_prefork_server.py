"""A pre-forking HTTP server for the process-tree replays: the parent listens, forks
``--workers`` children that each accept ``--requests`` connections on the shared socket
and answer them, then waits for every child and exits with the number of requests served.

    python replay_prefork_server.py PORT [--workers 2] [--requests 2]

Prints ``ready`` once listening on 127.0.0.1:PORT; each worker logs what it served.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys


def serve(listener: socket.socket, requests: int) -> int:
    served = 0
    for _ in range(requests):
        conn, _address = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/"
            body = f"worker {os.getpid()} served {path}\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            sys.stdout.write(f"served {path}\n")
            sys.stdout.flush()
            served += 1
    return served


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2)
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    print("ready", flush=True)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os._exit(serve(listener, args.requests))
        children.append(pid)
    listener.close()
    total = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        total += os.waitstatus_to_exitcode(status)
    print(f"{total} requests served by {len(children)} workers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
