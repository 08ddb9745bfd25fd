-- wrk script: POST /api/experiments/$EXP/track for users u1..u$POOL (all assigned beforehand).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "stats.lua")
local pool = tonumber(os.getenv("POOL") or "10000")
local exp = os.getenv("EXP")
local tok = os.getenv("TOKEN")
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args) math.randomseed(3000 + (tid or 0)) end
function request()
  local body = '{"molam_id":"u' .. math.random(1, pool) .. '","event_type":"click","value":1.5}'
  return wrk.format("POST", "/api/experiments/" .. exp .. "/track",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tok}, body)
end
