"""Updates staged from a background thread reach the front end, under this ipykernel.

ipykernel 7 moved shell messaging to its own thread and changed how output from
other threads is attributed; the widgets' update pump sends from its own thread
after the cell that created the widget has finished. This checks, against a
real kernel, that those comm messages are published on IOPub (coalesced), both
while the kernel is idle and while a cell is busy (``job.wait()`` blocks one).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import anywidget  # noqa: F401  (the notebook extra installs it)
from jupyter_client import manager as jupyter_client  # start_new_kernel lives here

SETUP = """
import threading, time
import traitlets
from cosmic_horizons_lab.notebook.widgets.live import LiveWidget, UpdatePump

class Probe(LiveWidget):
    _esm = "export default { render() {} }"
    value = traitlets.Int(0).tag(sync=True)

pump = UpdatePump(0.05)
w = Probe(pump=pump)

def work():
    for i in range(1, 501):
        w.stage(value=i)
        time.sleep(0.002)

print(w.comm.comm_id)
"""


def updates(kc: Any, comm_id: str, seconds: float) -> list[dict[str, Any]]:
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.1)
        except Exception:
            continue
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            data = msg["content"]["data"]
            if data.get("method") == "update" and "value" in data.get("state", {}):
                found.append(msg)
    return found


@pytest.fixture(scope="module")
def kernel() -> Any:
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def comm_id_of(kc: Any) -> str:
    reply = kc.execute_interactive(SETUP, timeout=60, output_hook=lambda m: outputs.append(m))
    assert reply["content"]["status"] == "ok"
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    return text.strip().splitlines()[-1]


outputs: list[dict[str, Any]] = []


def test_thread_updates_reach_iopub_while_idle(kernel: Any) -> None:
    import ipykernel

    comm_id = comm_id_of(kernel)
    kernel.execute("threading.Thread(target=work).start()")
    msgs = updates(kernel, comm_id, 3.0)
    values = [m["content"]["data"]["state"]["value"] for m in msgs]
    assert values and values[-1] == 500, (ipykernel.__version__, values[-5:])
    # 500 staged updates over ~1 s: coalesced to about one per 50 ms.
    assert len(values) <= 40, len(values)


def test_thread_updates_reach_iopub_while_a_cell_is_busy(kernel: Any) -> None:
    comm_id = comm_id_of(kernel)
    kernel.execute("threading.Thread(target=work).start(); time.sleep(2.0)")
    msgs = updates(kernel, comm_id, 1.5)  # collected before the busy cell ends
    values = [m["content"]["data"]["state"]["value"] for m in msgs]
    assert values and values[-1] == 500
