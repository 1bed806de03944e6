-- Argo CD health check for newfuse.io/NewFuseAgent, installed as
-- resource.customizations.health.newfuse.io_NewFuseAgent (see README.md next to this file).
--
-- Argo CD runs it in gopher-lua (Lua 5.1) with only the base, table and package libraries and
-- os.time/os.date: no string or math library, so no string.format and no ("x"):sub(...).
--
-- The first rule that matches wins:
--   1. Progressing  no status or no status.observedGeneration yet, or observedGeneration <
--                   metadata.generation: the rest of the status describes an older spec.
--   2. Progressing  phase Terminating.
--   3. Degraded     phase Degraded, a Degraded condition that is True, status.rollout.phase
--                   Degraded, or a rollout that ended RolledBack/Aborted while the spec still asks
--                   for the rejected revision (a spec reverted to the stable revision is healthy).
--   4. Suspended    spec.paused, spec.rollout.paused (Phased strategy), status.rollout.phase
--                   Paused, or phase Paused.
--   5. Progressing  a rollout in progress (Progressing, Analyzing, Promoting), phase Pending or
--                   Progressing, a Progressing condition that is True, an Available condition that
--                   is False, or fewer pods/ready pods/updated pods than spec.replicas.
--   6. Healthy      phase Available.
--   7. Progressing  anything else.

local hs = {}

-- Numbers may arrive as strings (json.Number); a missing count is 0.
local function num(value)
  local n = tonumber(value)
  if n == nil then
    return 0
  end
  return n
end

local function text(value, fallback)
  if value == nil or value == "" then
    return fallback
  end
  return tostring(value)
end

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function result(health, message)
  hs.status = health
  hs.message = message
  return hs
end

local metadata = obj.metadata or {}
local spec = obj.spec or {}
local rolloutSpec = spec.rollout or {}
local status = obj.status

-- 1. Is the status about the current spec?
if status == nil or status.observedGeneration == nil then
  return result("Progressing", "Waiting for the operator to observe the fleet")
end
if metadata.generation ~= nil and num(status.observedGeneration) < num(metadata.generation) then
  return result("Progressing", "Waiting for the operator to observe generation "
    .. tostring(num(metadata.generation)) .. " (status is of generation "
    .. tostring(num(status.observedGeneration)) .. ")")
end

-- 2. Deleting.
if status.phase == "Terminating" then
  return result("Progressing", "The fleet is being deleted")
end

local rollout = status.rollout
local rolloutPhase = nil
if rollout ~= nil then
  rolloutPhase = rollout.phase
end
local desired = 1
if spec.replicas ~= nil then
  desired = num(spec.replicas)
end

-- 3. Degraded.
local degraded = condition(status, "Degraded")
local degradedTrue = degraded ~= nil and degraded.status == "True"
local heldBack = (rolloutPhase == "RolledBack" or rolloutPhase == "Aborted")
  and status.updateRevision ~= nil and status.updateRevision ~= rollout.stableRevision
if degradedTrue then
  return result("Degraded", text(degraded.reason, "Degraded") .. ": "
    .. text(degraded.message, text(status.message, "the fleet is degraded")))
end
if heldBack or rolloutPhase == "Degraded" then
  return result("Degraded", "Rollout " .. rolloutPhase .. ": "
    .. text(rollout.message, "revision " .. text(rollout.canaryRevision, "?")))
end
if status.phase == "Degraded" then
  return result("Degraded", text(status.message, "The fleet is degraded"))
end

-- 4. Suspended.
if spec.paused == true then
  return result("Suspended", "spec.paused is true: changes to the fleet's pods are suspended")
end
local phased = rolloutSpec.strategy ~= "Replace"
if (phased and rolloutSpec.paused == true) or rolloutPhase == "Paused"
  or status.phase == "Paused" then
  if rolloutPhase == "Paused" then
    return result("Suspended", "Rollout paused at " .. text(rollout.stage, "?") .. " step "
      .. tostring(num(rollout.step)) .. ": " .. tostring(num(rollout.canaryAgents)) .. "/"
      .. tostring(desired) .. " agents on " .. text(rollout.canaryRevision, "?"))
  end
  return result("Suspended", "Rollout paused (spec.rollout.paused is true)")
end

-- 5. Progressing.
if rolloutPhase == "Progressing" or rolloutPhase == "Analyzing" or rolloutPhase == "Promoting" then
  local message = "Rollout " .. rolloutPhase .. " at " .. text(rollout.stage, "?") .. " step "
    .. tostring(num(rollout.step)) .. ": " .. tostring(num(rollout.canaryAgents)) .. "/"
    .. tostring(desired) .. " agents on " .. text(rollout.canaryRevision, "?")
  if rollout.message ~= nil and rollout.message ~= "" then
    message = message .. " (" .. rollout.message .. ")"
  end
  return result("Progressing", message)
end
local progressing = condition(status, "Progressing")
local available = condition(status, "Available")
if status.phase == "Pending" or status.phase == "Progressing"
  or (progressing ~= nil and progressing.status == "True")
  or (available ~= nil and available.status == "False") then
  local message = nil
  if progressing ~= nil and progressing.status == "True" then
    message = progressing.message
  end
  message = text(message, text(status.message, "Waiting for the fleet to converge"))
  return result("Progressing", message)
end
if num(status.readyReplicas) < desired then
  return result("Progressing", "Waiting for agents: " .. tostring(num(status.readyReplicas))
    .. "/" .. tostring(desired) .. " ready")
end
if num(status.replicas) ~= desired or num(status.updatedReplicas) < desired then
  return result("Progressing", "Waiting for agents: " .. tostring(num(status.updatedReplicas))
    .. "/" .. tostring(desired) .. " at revision " .. text(status.updateRevision, "?") .. ", "
    .. tostring(num(status.replicas)) .. " pods")
end

-- 6. Healthy.
if status.phase == "Available" then
  local message = nil
  if available ~= nil then
    message = available.message
  end
  return result("Healthy", text(status.message, text(message, "All agents are ready")))
end

-- 7. Anything else: wait for the operator.
return result("Progressing", "Waiting for the fleet to become Available (phase "
  .. text(status.phase, "unset") .. ")")
