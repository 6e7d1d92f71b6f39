"""etcd's auth: users, roles, key permissions, tokens, and their enforcement (etcd 3.5)."""
