"""The victim of the SIGKILL-during-checkpoint test: the daemon's write path, checkpointing.

``python -m tests.storage.wal_victim URL NODE CHUNK_SPAN`` writes cycles as the daemon
does (``Store.append`` on this thread, the :class:`StoreWriter` thread persisting them)
with the writer checkpointing the WAL on every pass (``CHECKPOINT_EVERY_S = 0``), and
prints ``ack <t_ms>`` once a cycle's head-log row is committed (nothing pending): the
moment the store promises the cycle survives. The test kills it at random.
"""

from __future__ import annotations

import sys
import time

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import open_store
from gpuwarden.storage import writer as writer_module

SIGNAL = "wal_probe"
SERIES = 16
ACK_WAIT_S = 5.0


def main() -> None:
    url, node, span = sys.argv[1], sys.argv[2], float(sys.argv[3])
    writer_module.CHECKPOINT_EVERY_S = 0.0
    store = open_store(url, node=node, chunk_span=span)
    writer = writer_module.StoreWriter(store)
    writer.start()
    print("ready", flush=True)
    last_ms = 0
    while True:
        t_ms = max(round(time.time() * 1000), last_ms + 1)  # strictly increasing
        last_ms = t_ms
        store.append([Sample(SIGNAL, make_labels(node=node, k=str(k)), float(k), t_ms / 1000)
                      for k in range(SERIES)])
        writer.kick()
        deadline = time.monotonic() + ACK_WAIT_S
        while store.pending_samples and time.monotonic() < deadline:
            time.sleep(0.001)
        if store.pending_samples:
            sys.exit(f"cycle {t_ms} not written within {ACK_WAIT_S}s")
        print(f"ack {t_ms} {writer.checkpoints_total}", flush=True)


if __name__ == "__main__":
    main()
