-- Argo CD action discovery for newfuse.io/NewFuseAgent: which rollout actions the UI offers, and
-- which of them make sense right now. Each action mirrors a `newfuse rollout` CLI command.
--
--   pause         disabled when spec.rollout.paused is already true, or the strategy is Replace
--                 (only phased rollouts can be held).
--   resume        disabled unless spec.rollout.paused is true.
--   promote       disabled unless a rollout is in progress and not paused: the operator consumes a
--   promote-full  promote sent while paused without acting on it.
--   abort         disabled unless a rollout is in progress (paused or not).
--   retry         disabled unless the rollout ended Aborted or RolledBack and the spec still asks
--                 for that revision (the only case the operator retries).
--
-- "In progress" is status.rollout.phase Progressing, Analyzing, Promoting, Paused or Degraded; the
-- other phases (Completed, Aborted, RolledBack) are terminal.

local actions = {}

local spec = obj.spec or {}
local rolloutSpec = spec.rollout or {}
local status = obj.status or {}
local rollout = status.rollout
local phase = nil
if rollout ~= nil then
  phase = rollout.phase
end

local paused = rolloutSpec.paused == true
local phased = rolloutSpec.strategy ~= "Replace"
local active = phase == "Progressing" or phase == "Analyzing" or phase == "Promoting"
  or phase == "Paused" or phase == "Degraded"
local holding = paused or phase == "Paused"
local retryable = (phase == "Aborted" or phase == "RolledBack")
  and status.updateRevision ~= nil and status.updateRevision == rollout.canaryRevision

actions["pause"] = {
  ["disabled"] = paused or not phased,
  ["iconClass"] = "fa fa-fw fa-pause-circle",
  ["displayName"] = "Pause rollout",
}
actions["resume"] = {
  ["disabled"] = not paused,
  ["iconClass"] = "fa fa-fw fa-play-circle",
  ["displayName"] = "Resume rollout",
}
actions["promote"] = {
  ["disabled"] = not active or holding,
  ["iconClass"] = "fa fa-fw fa-forward",
  ["displayName"] = "Promote (pass the current gate)",
}
actions["promote-full"] = {
  ["disabled"] = not active or holding,
  ["iconClass"] = "fa fa-fw fa-fast-forward",
  ["displayName"] = "Promote full (cut over now)",
}
actions["abort"] = {
  ["disabled"] = not active,
  ["iconClass"] = "fa fa-fw fa-times-circle",
  ["displayName"] = "Abort rollout",
}
actions["retry"] = {
  ["disabled"] = not retryable,
  ["iconClass"] = "fa fa-fw fa-redo-alt",
  ["displayName"] = "Retry rollout",
}

return actions
