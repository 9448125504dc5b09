"""kombu's filesystem transport (the embedded job queue) with message files that appear only when complete.

kombu 5 writes a message by opening its final name and then writing to it, while a consumer polling the folder
renames and reads any file with a matching name, without a lock: it can take a message between the two and read
it empty or cut, and the message is lost. Seen here with 20 concurrent submissions (one job stayed queued, never
received). This channel writes under a name the consumer ignores and renames the file into place once it is
complete (a rename within one folder is atomic). An exchange's table file is likewise created whole.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "scarchesfs"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put ``payload`` onto ``queue``: written as ``<name>.part``, then renamed to the name consumers look for."""
        # kombu's own naming, so messages keep their order: <ms>_<uuid>.<queue>.msg
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        staging = f"{final}.part"
        try:
            with open(staging, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(staging, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """kombu creates an exchange's table file empty and then writes it, so a process declaring at the same moment
        reads "" and fails; here a missing table is created whole (hard-linked into place) before kombu's update."""
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(exist_ok=True)
            staging = table.with_name(f"{table.name}.{uuid.uuid4().hex}.part")
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            staging.write_bytes(str_to_bytes(dumps([entry])))
            try:
                os.link(staging, table)
            except FileExistsError:  # another process created it first: kombu's locked update adds this entry
                pass
            finally:
                staging.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel


# broker_url "scarchesfs://" selects this transport.
TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
