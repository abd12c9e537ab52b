"""Linux host plumbing shared by the agent and the local cluster (which
simulates hosts with the same namespaces the agent uses): the C library calls
Python lacks, named network namespaces, and the mount table.

No gRPC, no cluster objects here: swarm.controller never imports this
package (it runs on any machine), see .importlinter."""
