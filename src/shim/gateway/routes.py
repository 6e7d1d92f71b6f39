"""The gateway's paths: each is one gRPC method, as etcd 3.5 registers them (the
``google.api.http`` options of its .proto files). Every one is POST with the whole request
message as the JSON body. (etcd 3.5 gives HashKV the same path as Hash, where Hash answers,
so HashKV has none.)"""

from __future__ import annotations

_KV = "etcdserverpb.KV"
_WATCH = "etcdserverpb.Watch"
_LEASE = "etcdserverpb.Lease"
_CLUSTER = "etcdserverpb.Cluster"
_MAINTENANCE = "etcdserverpb.Maintenance"
_AUTH = "etcdserverpb.Auth"
_LOCK = "v3lockpb.Lock"
_ELECTION = "v3electionpb.Election"

# path -> gRPC method path ("/service/Method")
ROUTES: dict[str, str] = {
    path: f"/{service}/{method}"
    for path, service, method in (
        ("/v3/kv/range", _KV, "Range"),
        ("/v3/kv/put", _KV, "Put"),
        ("/v3/kv/deleterange", _KV, "DeleteRange"),
        ("/v3/kv/txn", _KV, "Txn"),
        ("/v3/kv/compaction", _KV, "Compact"),
        ("/v3/watch", _WATCH, "Watch"),
        ("/v3/lease/grant", _LEASE, "LeaseGrant"),
        ("/v3/lease/revoke", _LEASE, "LeaseRevoke"),
        ("/v3/kv/lease/revoke", _LEASE, "LeaseRevoke"),
        ("/v3/lease/keepalive", _LEASE, "LeaseKeepAlive"),
        ("/v3/lease/timetolive", _LEASE, "LeaseTimeToLive"),
        ("/v3/kv/lease/timetolive", _LEASE, "LeaseTimeToLive"),
        ("/v3/lease/leases", _LEASE, "LeaseLeases"),
        ("/v3/kv/lease/leases", _LEASE, "LeaseLeases"),
        ("/v3/cluster/member/add", _CLUSTER, "MemberAdd"),
        ("/v3/cluster/member/remove", _CLUSTER, "MemberRemove"),
        ("/v3/cluster/member/update", _CLUSTER, "MemberUpdate"),
        ("/v3/cluster/member/list", _CLUSTER, "MemberList"),
        ("/v3/cluster/member/promote", _CLUSTER, "MemberPromote"),
        ("/v3/maintenance/alarm", _MAINTENANCE, "Alarm"),
        ("/v3/maintenance/status", _MAINTENANCE, "Status"),
        ("/v3/maintenance/defragment", _MAINTENANCE, "Defragment"),
        ("/v3/maintenance/hash", _MAINTENANCE, "Hash"),
        ("/v3/maintenance/snapshot", _MAINTENANCE, "Snapshot"),
        ("/v3/maintenance/transfer-leadership", _MAINTENANCE, "MoveLeader"),
        ("/v3/maintenance/downgrade", _MAINTENANCE, "Downgrade"),
        ("/v3/auth/enable", _AUTH, "AuthEnable"),
        ("/v3/auth/disable", _AUTH, "AuthDisable"),
        ("/v3/auth/status", _AUTH, "AuthStatus"),
        ("/v3/auth/authenticate", _AUTH, "Authenticate"),
        ("/v3/auth/user/add", _AUTH, "UserAdd"),
        ("/v3/auth/user/get", _AUTH, "UserGet"),
        ("/v3/auth/user/list", _AUTH, "UserList"),
        ("/v3/auth/user/delete", _AUTH, "UserDelete"),
        ("/v3/auth/user/changepw", _AUTH, "UserChangePassword"),
        ("/v3/auth/user/grant", _AUTH, "UserGrantRole"),
        ("/v3/auth/user/revoke", _AUTH, "UserRevokeRole"),
        ("/v3/auth/role/add", _AUTH, "RoleAdd"),
        ("/v3/auth/role/get", _AUTH, "RoleGet"),
        ("/v3/auth/role/list", _AUTH, "RoleList"),
        ("/v3/auth/role/delete", _AUTH, "RoleDelete"),
        ("/v3/auth/role/grant", _AUTH, "RoleGrantPermission"),
        ("/v3/auth/role/revoke", _AUTH, "RoleRevokePermission"),
        ("/v3/lock/lock", _LOCK, "Lock"),
        ("/v3/lock/unlock", _LOCK, "Unlock"),
        ("/v3/election/campaign", _ELECTION, "Campaign"),
        ("/v3/election/proclaim", _ELECTION, "Proclaim"),
        ("/v3/election/leader", _ELECTION, "Leader"),
        ("/v3/election/observe", _ELECTION, "Observe"),
        ("/v3/election/resign", _ELECTION, "Resign"),
    )
}
