"""`python tests/zygote_exec.py <args>`: run `imessage-channel <args>` as a child of the test fork server.

For code under test that starts the server itself as a command (`doctor`'s channel check, an MCP client's stdio
transport): this front end costs a bare interpreter (no package imports, about 30 ms of CPU) where
`python -m imessage_channel serve` costs about 1 s. It hands its own stdin, stdout and stderr and its
environment to the fork server named by `IMESSAGE_TEST_ZYGOTE` (a socket path; see `zygote_client.ZYGOTE_VARIABLE`),
passes SIGINT and SIGTERM on to the child, and exits with the child's status (128 + N for signal N, as a shell
reports it). Tests about start-up itself keep the real command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["IMESSAGE_TEST_ZYGOTE"])
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reader = conn.makefile("rb")
    pid = int(json.loads(reader.readline())["pid"])

    def forward(signum: int, _frame: object) -> None:
        os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    line = reader.readline()
    code = int(json.loads(line)["exit"]) if line else 1
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
