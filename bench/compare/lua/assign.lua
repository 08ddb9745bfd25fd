-- wrk script: POST /api/experiments/$EXP/assign for the project, molam_id drawn from a pool
-- (env POOL, default 100000) so a run mixes first-time and returning users; bearer token in env TOKEN.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "stats.lua")
local pool = tonumber(os.getenv("POOL") or "100000")
local exp = os.getenv("EXP")
local tok = os.getenv("TOKEN")
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args) math.randomseed(2000 + (tid or 0)) end
function request()
  local body = '{"molam_id":"u' .. math.random(1, pool) .. '","country":"SN","lang":"fr"}'
  return wrk.format("POST", "/api/experiments/" .. exp .. "/assign",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tok}, body)
end
