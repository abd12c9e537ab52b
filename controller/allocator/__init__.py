"""controller.allocator: IP address management for overlay networks.

Modules: `ipam` holds the pure decisions (which subnet, VNI, address comes
next); `networks` and `tasks` plan allocations from cached objects (pure);
`claims` turns them into store operations; `index` keeps the addresses in use
per network; `reconciler` is the leader's loop that gives NEW tasks their
addresses and makes them PENDING.

Who allocates what, and when:

- network subnet, gateway, VNI: the control API, synchronously in
  CreateNetwork (bad or overlapping input is an error, nothing written);
  released in RemoveNetwork, which is refused while services use it or
  tasks not yet ended hold addresses on it (networks.stopping_holders);
- service VIPs (vip mode, one per attached network): the control API, in the
  same transaction as CreateService / UpdateService; released with the
  service (RemoveService) or when the network or vip mode is dropped;
- task addresses (one per attached network): the allocator loop, NEW ->
  PENDING; released in the transaction that deletes the task record
  (orchestrator: history pruning, scale-down, service removal).

Uniqueness never depends on the planner being right: every address, VNI and
subnet is a create-only key under {prefix}ipam/ (see store.keys), written
in the same transaction as the object that records it, so two controllers
racing make one transaction fail. Each address allocation also rewrites the
network object (its `address_cursor`) with a compare-and-swap, which
serialises allocators on a network and makes a concurrent `network rm` fail.
The cursor is also what keeps a released address from being reused until
the allocator has gone round the whole subnet.
"""
