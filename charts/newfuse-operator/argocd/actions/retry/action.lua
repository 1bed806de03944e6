-- Argo CD action "retry" for newfuse.io/NewFuseAgent: start a failed rollout again.
-- Like `newfuse rollout retry`, it sets the annotation newfuse.io/rollout-action to
-- "retry@<UTC time, RFC 3339>"; the operator acts on each new value once
-- (newfuse.core.rollout.parse_action reads the verb before the "@").
local verb = "retry"
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
obj.metadata.annotations["newfuse.io/rollout-action"] = verb .. "@" .. now
-- Who asked, as "<user>@<time>" like the CLI; Argo CD does not tell the script who clicked
-- (its own ResourceActionRan event on the Application does).
obj.metadata.annotations["newfuse.io/rollout-action-by"] = "argocd@" .. now
return obj
