"""Benchmark worker: stdlib only, so the same file runs under any Einhorn master.

    python ack_worker.py ack   TAG [BOOT]  # ACK at once (or after BOOT seconds), then idle until SIGUSR2/SIGTERM
    python ack_worker.py serve TAG [BOOT]  # the same, then answer one line per connection on EINHORN_FD_0
    python ack_worker.py go    TAG         # ACK once the file TAG/go exists (all at the same instant), then idle

TAG is ignored; the benchmark puts its temp dir there so that it can recognise
(and kill) exactly its own workers by their command line.
"""

import json
import os
import signal
import socket
import sys
import time

stopping = False


def _stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True


signal.signal(signal.SIGUSR2, _stop)


def ack() -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["EINHORN_SOCK_PATH"])
    conn.sendall((json.dumps({"command": "worker:ack", "pid": os.getpid()}) + "\n").encode())
    conn.close()


def serve() -> None:
    listener = socket.socket(fileno=int(os.environ["EINHORN_FD_0"]))
    # Every worker polls with a timeout (the fd's O_NONBLOCK flag is shared by all
    # workers, so all of them must tolerate a lost accept race).
    listener.settimeout(0.2)
    reply = b"hello from %d\n" % os.getpid()
    while not stopping:
        try:
            conn, _ = listener.accept()
        except (TimeoutError, BlockingIOError, InterruptedError):
            continue
        try:
            conn.settimeout(5)
            conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ack"
    if mode == "go":
        go = os.path.join(sys.argv[2], "go")
        while not os.path.exists(go) and not stopping:
            time.sleep(0.005)
    elif len(sys.argv) > 3:
        time.sleep(float(sys.argv[3]))  # a worker that takes this long to boot
    ack()
    if mode == "serve":
        serve()
    else:
        while not stopping:
            signal.pause()


if __name__ == "__main__":
    main()
