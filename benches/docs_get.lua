-- GETs documents of percore's document API, keys drawn uniformly at random.
-- Usage: wrk -t1 -c64 -d10s --latency -s benches/docs_get.lua http://127.0.0.1:PORT \
--            -- COLLECTION NKEYS [SEED]
-- Requests GET /v1/COLLECTION/kNNNNNN for NNNNNN in [0, NKEYS), the keys that
-- benches/docs.py seeds. The NKEYS requests are formatted once in init, so a
-- request costs wrk one table lookup; each thread seeds math.random with
-- SEED plus its own number, so runs repeat the same key sequence.

local threads = 0

function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

function init(args)
  local collection = args[1] or "bench"
  nkeys = tonumber(args[2]) or 64
  local seed = tonumber(args[3]) or 1
  math.randomseed(seed + 7919 * (thread_no or 0))
  reqs = {}
  for i = 1, nkeys do
    reqs[i] = wrk.format("GET", string.format("/v1/%s/k%06d", collection, i - 1))
  end
end

function request()
  return reqs[math.random(nkeys)]
end
