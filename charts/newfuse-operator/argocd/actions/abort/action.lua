-- Argo CD action "abort" for newfuse.io/NewFuseAgent: every agent back to stable.
-- Like `newfuse rollout abort`, it sets the annotation newfuse.io/rollout-action to
-- "abort@<UTC time, RFC 3339>"; the operator acts on each new value once
-- (newfuse.core.rollout.parse_action reads the verb before the "@").
local verb = "abort"
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
obj.metadata.annotations["newfuse.io/rollout-action"] = verb .. "@" .. now
-- Who asked, as "<user>@<time>" like the CLI; Argo CD does not tell the script who clicked
-- (its own ResourceActionRan event on the Application does).
obj.metadata.annotations["newfuse.io/rollout-action-by"] = "argocd@" .. now
return obj
