"""Configuration of the IPython kernels that labkit starts to run notebooks (papermill).

:func:`labkit.notebooks.run_notebook` hands this file to the kernel (``--config``); traitlets
executes it there before the kernel opens its sockets. A filter on the kernel's own logger drops
two kinds of record and passes every other one:

- ipykernel's warning, on every start, that its TCP sockets are not encrypted. The kernels
  labkit starts listen on 127.0.0.1 for the process that started them, so it says nothing a
  user could act on (the pipeline printed it once per stage).
- a message handler's failure to send its reply on a socket that is already closed: the kernel
  is being shut down under a running cell (Ctrl-C in ``labkit pipeline``), nobody is left to
  receive the reply, and the traceback would bury the one line that says how to go on.
- ipykernel's "KeyboardInterrupt caught in kernel." jupyter_client sends every kernel it shuts
  down a SIGINT before the shutdown request; a kernel still inside a message handler at that
  moment logs this line. Papermill shuts the kernel down after the last cell, so the line
  appeared now and then after a notebook that had run to the end (a Ctrl-C that stops a run
  is reported by labkit itself, in one line).

``LABKIT_DEBUG=1`` starts kernels without this file (their log as it is). Importing the module
only defines the filter.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

# the start of ipykernel's message (ipykernel/kernelapp.py, init_sockets)
TRANSPORT_NOTICE = "Kernel is running over TCP without encryption"
# ipykernel's record when a SIGINT lands in a message handler (kernelbase.py)
INTERRUPT_NOTICE = "KeyboardInterrupt caught in kernel"
# a socket closed under the sender (ENOTSOCK) or its context terminated (ETERM)
_CLOSED_SOCKET = (zmq.ENOTSOCK, zmq.ETERM)


class KernelNoise(logging.Filter):
    """Drops the unencrypted-TCP warning, the shutdown's interrupt notice and replies that fail
    on closed sockets; nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(TRANSPORT_NOTICE):
            return False
        if record.levelno == logging.ERROR and str(record.msg).startswith(INTERRUPT_NOTICE):
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, zmq.ZMQError) and error.errno in _CLOSED_SOCKET)


# merged by traitlets into the kernel application's logging configuration (logging.config
# dictConfig): the filter sits on the kernel's own logger, its level and handlers stay
KERNEL_LOGGING: dict[str, Any] = {
    "filters": {"labkit_kernel_noise": {"()": KernelNoise}},
    "loggers": {"IPKernelApp": {"filters": ["labkit_kernel_noise"]}},
}

# traitlets executes this file with get_config() in its namespace; an import has none
if "get_config" in globals():
    globals()["get_config"]().IPKernelApp.logging_config = KERNEL_LOGGING
