-- Leases: granted TTLs survive a restart. A key is attached to a lease through the lease column
-- of its current version in the log; revoking or expiring a lease deletes those keys.

CREATE TABLE lease (
    id         bigint PRIMARY KEY,   -- etcd lease id
    ttl        bigint NOT NULL,      -- granted TTL in seconds
    granted_ms bigint NOT NULL,      -- wall-clock time of the grant (for people; expiry is in memory)
    node_id    text   NOT NULL       -- node that granted it
);

CREATE INDEX log_lease ON log (lease) WHERE lease <> 0;
