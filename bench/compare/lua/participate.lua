-- wrk script: GET /participate with a random client_id drawn from a pool
-- (default 100000, env POOL), so a run mixes first-time and returning users.
-- Each wrk thread gets its own deterministic random seed.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "stats.lua")

local pool = tonumber(os.getenv("POOL") or "100000")
local experiment = os.getenv("EXPERIMENT") or "bench_exp"
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  math.randomseed(1000 + (tid or 0))
end

function request()
  local cid = math.random(1, pool)
  return wrk.format("GET", "/participate?experiment=" .. experiment ..
    "&alternatives=a&alternatives=b&client_id=u" .. cid)
end
