-- Argo CD health of metaspec resources (TrainingRun, TeacherGeneration, SpecServe), read from the
-- status the metaspec operator writes: `status.phase`, KEP-1623 `status.conditions`, `observedGeneration`.
-- Argo CD runs it with `obj` bound to the resource and wants {status, message} back.
-- deploy/sync.py copies it into argocd-cm-patch.yaml; tests/unit/packaging runs it with a Lua 5.1 interpreter.
local hs = {}

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

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function verdict(health, message)
  hs.status = health
  hs.message = message
  return hs
end

if obj.status == nil or obj.status.phase == nil then
  return verdict("Progressing", "Waiting for the metaspec operator to report a status")
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  return verdict("Progressing", "Waiting for the operator to observe generation " .. generation)
end

local phase = status.phase
local message = status.message or ""

if phase == "Failed" then
  return verdict("Degraded", message ~= "" and message or "Failed")
end
if phase == "Suspended" then
  return verdict("Suspended", message ~= "" and message or "spec.suspend is true")
end
if phase == "Succeeded" then
  -- A generation whose outputs failed the quality gate is not healthy, even if its pods exited cleanly.
  local quality = condition(status, "QualityCheckPassed")
  if quality ~= nil and quality.status == "False" then
    return verdict("Degraded", describe(quality, "quality check failed"))
  end
  return verdict("Healthy", message ~= "" and message or "Succeeded")
end
if phase == "Ready" then
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status ~= "True" then
    return verdict("Progressing", describe(ready, "not ready"))
  end
  return verdict("Healthy", message ~= "" and message or "Ready")
end
if phase == "Waiting" then
  return verdict("Progressing", describe(condition(status, "DependenciesReady"), "Waiting for dependencies"))
end
-- Pending, Running, and any phase a newer operator may add.
return verdict("Progressing", message ~= "" and message or phase)
