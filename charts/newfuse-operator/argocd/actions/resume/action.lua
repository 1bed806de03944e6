-- Argo CD action "resume" for newfuse.io/NewFuseAgent: continue a paused phased rollout.
-- Like `newfuse rollout resume`, it sets spec.rollout.paused to false and records who asked in
-- newfuse.io/paused-by as "<user>@<UTC time, RFC 3339>"; Argo CD does not tell the script who
-- clicked (its own ResourceActionRan event on the Application does), so the user is "argocd".
if obj.spec.rollout == nil then
  obj.spec.rollout = {}
end
obj.spec.rollout.paused = false
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["newfuse.io/paused-by"] = "argocd@" .. os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
