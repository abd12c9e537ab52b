"""gRPC metadata keys of the wire protocol, defined once for every side.

LEADER_METADATA_KEY: trailing metadata a follower's dispatcher sets when it
refuses a call only the leader answers; its value is the leader's HOST:PORT.
(The control API needs none: a follower relays leader-only calls itself.)
RETRY_METADATA_KEY: trailing metadata on a refusal the client may retry as it
is (for example `endpoints`: addresses still in use while tasks stop).
"""

LEADER_METADATA_KEY = "swarm-leader-addr"
RETRY_METADATA_KEY = "swarm-retry"
