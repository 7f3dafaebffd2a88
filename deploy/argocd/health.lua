-- Argo CD health check for ephemera.dev/DebugSession.
-- Install: the argocd-cm key resource.customizations.health.ephemera.dev_DebugSession
-- (see argocd-cm.yaml next to this file). It reads the kstatus conditions that
-- ephemera writes: a finished (Terminated) session did its job and is Healthy;
-- a Failed one (Stalled=True) is Degraded; anything still to happen is Progressing.
-- Argo CD runs custom checks without Lua's string library, so none is used here.

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local health = { status = "Progressing", message = "waiting for ephemera to take up the session" }
local status = obj.status
if status == nil then
  return health
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  health.message = "ephemera has not observed generation " .. tostring(generation) .. " yet"
  return health
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  health.status = "Degraded"
  health.message = describe(stalled)
  return health
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  health.message = describe(reconciling)
  return health
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  health.status = "Healthy"
  health.message = describe(ready)
  return health
end

return health
