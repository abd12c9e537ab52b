"""controller.allocator: IP address management for overlay networks.

`ipam` holds the pure decisions (which subnet, VNI, address comes next);
`claims` turns them into store operations (create-only keys); `reconciler`
is the leader's loop that allocates task addresses (NEW -> PENDING)."""
