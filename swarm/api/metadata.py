"""gRPC metadata keys of the wire protocol, defined once for every side.

RETRY_METADATA_KEY: trailing metadata on a refusal the client may retry as it
is (for example `endpoints`: addresses still in use while tasks stop).
(No leader hint: every controller serves agents, and a follower relays the
control API's leader-only calls itself, so no client looks for the leader.)
"""

RETRY_METADATA_KEY = "swarm-retry"
