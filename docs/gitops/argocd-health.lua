-- Argo CD health check for Alcove's Tenant, InferenceInstance and KnowledgeBase
-- (group alcove.dev). Install it for each kind: see docs/gitops.md.
-- Healthy: the operator observed the current generation and Ready is True.
-- Suspended: an instance suspended on purpose (spec.state) or for billing, or idle
-- (spec.idleTimeout; the next request wakes it).
-- Degraded: a spec the operator refused, or a failure it cannot fix by waiting.
-- Progressing: anything else (provisioning, indexing, erasing, not yet observed).
local hs = {status = "Progressing", message = "Waiting for the Alcove operator"}
local st = obj.status
if st == nil then
  return hs
end
if st.observedGeneration == nil or st.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not observed generation " .. tostring(obj.metadata.generation) .. " yet"
  return hs
end
local ready = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
local why = ""
if ready ~= nil then
  why = (ready.reason or "") .. ": " .. (ready.message or "")
end
if st.phase == "Failed" or st.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = why
  return hs
end
if st.phase == "Suspended" or st.phase == "Idle" then
  hs.status = "Suspended"
  hs.message = why
  return hs
end
if st.phase == "Terminating" or st.phase == "Erasing" then
  hs.message = st.phase .. ": " .. why
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if ready ~= nil then
  hs.message = why
end
return hs
