"""Child server processes for tests: the dev cluster's own (``tokentrace.devcluster.procs``) under test names.

Every child runs in its own process group and gets ``PR_SET_PDEATHSIG = SIGKILL``, so a test run that dies
(even by SIGKILL) takes its servers with it. Linux ties that signal to the *thread* that started the child:
start servers from a thread that outlives them (pytest's main thread does).
"""

from __future__ import annotations

from tokentrace.devcluster.kafka import serve_until_signalled
from tokentrace.devcluster.procs import ChildServer, ServerProcess, free_ports, pid_alive, port_accepts, wait_for
from tokentrace.devcluster.procs import DevClusterError as InfraError

__all__ = [
    "ChildServer",
    "InfraError",
    "ServerProcess",
    "free_ports",
    "pid_alive",
    "port_accepts",
    "serve_until_signalled",
    "wait_for",
]
