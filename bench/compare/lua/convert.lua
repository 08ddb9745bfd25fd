-- wrk script: GET /convert with a random client_id from the same pool as
-- participate.lua (default 100000, env POOL). Run seed.lua first so every
-- id in the pool is a participant (otherwise Sixpack answers 400).
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
  math.randomseed(2000 + (tid or 0))
end

function request()
  local cid = math.random(1, pool)
  return wrk.format("GET", "/convert?experiment=" .. experiment ..
    "&client_id=u" .. cid)
end
