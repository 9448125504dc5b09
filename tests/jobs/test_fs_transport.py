"""The embedded queue's transport: messages written by many producers while a consumer drains them all arrive whole."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection

from scarches_api.jobs.fs_transport import SCHEME


def test_concurrent_producers_and_a_consumer_lose_no_message(tmp_path: Path) -> None:
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    options = {"data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
               "store_processed": True, "processed_folder": str(folders["processed"]),
               "control_folder": str(folders["control"]), "polling_interval": 0.01}
    producers, per_producer = 8, 150
    body = "x" * 20_000  # large enough that a write is not one syscall's worth of page cache
    received: list[str] = []
    done = threading.Event()

    def produce(i: int) -> None:
        with Connection(f"{SCHEME}://", transport_options=options) as conn, conn.SimpleQueue("jobs") as queue:
            for j in range(per_producer):
                queue.put({"id": f"{i}-{j}", "body": body})

    def consume() -> None:
        with Connection(f"{SCHEME}://", transport_options=options) as conn, conn.SimpleQueue("jobs") as queue:
            while len(received) < producers * per_producer and not done.is_set():
                try:
                    message = queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                assert message.payload["body"] == body
                received.append(message.payload["id"])
                message.ack()

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    consumer.join(timeout=60)
    done.set()
    assert sorted(received) == sorted(f"{i}-{j}" for i in range(producers) for j in range(per_producer))
    assert not list(folders["queue"].iterdir())  # nothing left behind, no stray .part files
