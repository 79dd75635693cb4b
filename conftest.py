"""Project-wide pytest setup: everything runs with the model hubs switched off.

Kernels started by nbval inherit this environment, so notebooks run offline too.

Two settings keep nbval from failing a long training cell on a slow machine:

- nbval reads a cell's messages only after the cell has finished, and ZeroMQ keeps at most 1,000
  unread messages on each side of the channel; past that, messages are dropped, the cell's last
  ones included, and nbval reports "Timeout of 5 seconds exceeded waiting for output". The
  kernel client here keeps every message (no receive limit).
- nbval gives a finished cell 5 seconds per message to deliver its output; a machine busy with
  other work can need longer, so it waits up to ``OUTPUT_TIMEOUT`` seconds.
"""

import os

import zmq
from jupyter_client.manager import KernelManager

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

OUTPUT_TIMEOUT = 120


class _KeepEveryMessage(KernelManager):
    """A kernel manager whose clients never drop a message the kernel sent."""

    def client(self, **kwargs):
        context = zmq.Context()
        context.setsockopt(zmq.RCVHWM, 0)  # 0: no limit on unread messages
        return super().client(context=context, **kwargs)


def pytest_configure(config):
    try:
        import nbval.kernel
    except ImportError:  # nbval not installed: nothing to adjust
        return
    nbval.kernel.KernelManager = _KeepEveryMessage


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # an nbval cell
            item.output_timeout = OUTPUT_TIMEOUT
