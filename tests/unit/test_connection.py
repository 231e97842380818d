"""NodeClients: one client per address even when threads race for it (no server needed: clients connect lazily)."""

import threading

from runbook_lib.cluster.connection import NodeClients, migrate_auth_args
from runbook_lib.config import Credentials


def test_threads_racing_for_one_address_share_one_client():
    clients = NodeClients(Credentials(password="pw"))
    start = threading.Barrier(16)
    got = []

    def ask():
        start.wait()
        got.append(clients.get("127.0.0.1:1"))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 16 and len({id(c) for c in got}) == 1
    assert clients.get("127.0.0.1:2") is not got[0]
    clients.close()
    assert clients.get("127.0.0.1:1") is not got[0], "close() forgets the closed clients"


def test_migrate_auth_args_follow_the_credentials():
    assert migrate_auth_args(Credentials(password="pw")) == ["AUTH", "pw"]
    assert migrate_auth_args(Credentials(username="ops", password="pw")) == ["AUTH2", "ops", "pw"]
    assert migrate_auth_args(Credentials()) == []
