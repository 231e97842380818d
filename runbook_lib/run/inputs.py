"""Bad input caught before anything changes: the nodes a params file names, checked live, each problem naming the
params file and the key to fix (unreachable seed, wrong password, a seed outside any cluster, a new node that is not
fresh)."""

from __future__ import annotations

import redis

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import Topology, observe, read_view
from runbook_lib.config import Credentials, Params
from runbook_lib.exceptions import BadInput, ParamsError
from runbook_lib.sections.nodes import check_fresh


def secret_key(params: Params) -> str:
    """The params key an authentication failure points at: where the password comes from."""
    c = params.model.cluster
    if c.password_env:
        return "cluster.password_env"
    if c.password_file:
        return "cluster.password_file"
    return "cluster.username" if c.username else "cluster.password_file"


def check_seed(params: Params, creds: Credentials) -> Topology:
    """Reach and authenticate at the seed, make sure it is a member of a cluster, and observe that cluster."""
    path, seed = str(params.path), params.model.cluster.seed
    user = creds.username or "default"
    client = node_client(seed, creds, timeout=5.0)
    try:
        info = client.info("cluster")
        view = read_view(client, seed) if info.get("cluster_enabled") else None
    except redis.AuthenticationError as e:
        raise ParamsError(path, secret_key(params), f"authentication at the seed {seed} as user {user!r} failed "
                                                    f"({e}); check the password there and cluster.username") from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise ParamsError(path, secret_key(params), f"authentication at the seed {seed} as user {user!r} failed "
                                                        f"({e}); check the password there and cluster.username") from None
        if "NOPERM" in str(e):
            raise ParamsError(path, "cluster.username", f"user {user!r} may not read the cluster at {seed} ({e}); "
                                                        "grant the rules in docs/acl.md (`runbook acl`)") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise ParamsError(path, "cluster.seed", f"cannot connect to {seed} ({e}); check that the node runs, the "
                                                "address is right, and cluster.tls matches the node (TLS on or off)") from None
    finally:
        client.close()
    if view is None:
        raise ParamsError(path, "cluster.seed", f"{seed} is not in cluster mode (cluster_enabled:0); point seed at a "
                                                "node of the existing cluster")
    if len(view.entries) == 1 and not view.myself.slots:
        raise ParamsError(path, "cluster.seed", f"{seed} is not part of a cluster: it knows no other node and owns no "
                                                "slot; point seed at a node of the existing cluster")
    return observe(seed, creds)


def check_new_nodes(params: Params, creds: Credentials, topo: Topology) -> None:
    """Each new master and replica not yet in this cluster must be reachable, in cluster mode, empty and alone."""
    for i, node in enumerate(params.model.new_masters):
        for field, address in (("address", node.address), ("replica", node.replica)):
            if not address or topo.by_address(address) is not None:
                continue
            try:
                check_fresh(address, creds)
            except BadInput as e:
                raise ParamsError(str(params.path), f"new_masters.{i}.{field}", str(e)) from None


def check_targets(params: Params, creds: Credentials) -> Topology:
    """Every live check of the params' nodes, in order; the first problem raises a ParamsError (exit code 2)."""
    topo = check_seed(params, creds)
    check_new_nodes(params, creds, topo)
    return topo
