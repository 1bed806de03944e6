"""The fleet API gateway: every fleet an A2A v1.0 agent, served from its Redis streams.

A client speaks A2A over HTTP to the gateway instead of reaching Redis with Redis credentials. The
gateway keeps no state of its own: tasks, results and the A2A task records live in the fleet's
Redis keys (`newfuse.wire.keys`), so any number of replicas serve the same fleets.

`a2amap` is the pure translation between A2A and our task envelopes; `tasks` is the A2A request
handler on top of `newfuse.adapters.taskclient`; `app` mounts both under one Starlette app.
"""
