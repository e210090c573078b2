"""The victim of the store-level SIGKILL loop: writes cycles, acknowledging each one.

``python -m tests.faults.kill_writer URL NODE CHUNK_SPAN`` opens the store with a short
chunk span (so chunk cuts, which delete head-log rows and insert chunks in one
transaction, happen every fraction of a second), then writes one cycle of ``SERIES``
samples every ~10 ms and prints ``ack <t_ms>`` once ``Store.write`` has returned for it:
the moment the store promises the cycle is durable. The test kills it at random and
checks that every acknowledged cycle is there, once.
"""

from __future__ import annotations

import sys
import time

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import open_store

SIGNAL = "fault_probe"
SERIES = 8


def main() -> None:
    url, node, span = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = open_store(url, node=node, chunk_span=span)
    print("ready", flush=True)
    last_ms = 0
    while True:
        t_ms = max(round(time.time() * 1000), last_ms + 1)  # strictly increasing
        last_ms = t_ms
        store.write([Sample(SIGNAL, make_labels(node=node, k=str(k)), float(k), t_ms / 1000)
                     for k in range(SERIES)])
        print(f"ack {t_ms}", flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
