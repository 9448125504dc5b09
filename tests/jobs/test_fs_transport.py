"""The embedded queue's transport: messages written by many producers while a consumer drains them all arrive whole."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from scarches_api.jobs.fs_transport import SCHEME


@pytest.mark.fault("8 producers x 150 messages racing a consumer on the embedded (filesystem) job queue")
def test_concurrent_producers_and_a_consumer_lose_no_message(tmp_path: Path, record_property) -> None:
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

    errors: list[BaseException] = []
    jobs = Queue("jobs", Exchange("jobs", type="direct"), routing_key="jobs")

    def produce(i: int) -> None:
        try:
            # A producer only, as the API is (a SimpleQueue would also register a consumer on the producer's side).
            with Connection(f"{SCHEME}://", transport_options=options) as conn:
                producer = conn.Producer(serializer="json")
                for j in range(per_producer):
                    producer.publish({"id": f"{i}-{j}", "body": body}, exchange=jobs.exchange, routing_key="jobs",
                                     declare=[jobs])
        except BaseException as exc:  # a thread's exception would otherwise vanish
            errors.append(exc)
            raise

    def consume() -> None:
        try:
            drain()
        except BaseException as exc:
            errors.append(exc)
            raise

    def drain() -> None:
        with Connection(f"{SCHEME}://", transport_options=options) as conn, conn.SimpleQueue(jobs) as queue:
            while len(received) < producers * per_producer and not done.is_set():
                try:
                    message = queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                assert message.payload["body"] == body
                received.append(message.payload["id"])
                message.ack()

    # The worker declares its queue when it starts, before any job is sent (as here).
    with Connection(f"{SCHEME}://", transport_options=options) as conn:
        jobs(conn.default_channel).declare()
    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    consumer.join(timeout=60)
    done.set()
    assert not errors, errors
    record_property("observed", f"{len(received)} of {producers * per_producer} messages received whole; "
                                f"{len(list(folders['queue'].iterdir()))} files left in the queue folder")
    expected = {f"{i}-{j}" for i in range(producers) for j in range(per_producer)}
    left = sorted(p.name.split(".", 1)[1] for p in folders["queue"].iterdir())
    assert len(received) == len(set(received)) and set(received) == expected, (sorted(expected - set(received))[:20], left[:5])
    assert not list(folders["queue"].iterdir())  # nothing left behind, no stray .part files
