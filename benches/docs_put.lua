-- PUTs 150-byte JSON documents of percore's document API to random keys.
-- Usage: wrk -t1 -c64 -d10s --latency -s benches/docs_put.lua http://127.0.0.1:PORT \
--            -- COLLECTION NKEYS [SEED]
-- Requests PUT /v1/COLLECTION/pNNNNNN for NNNNNN drawn uniformly from
-- [0, NKEYS) with math.random (seeded with SEED plus the thread's number), so
-- a run both creates (201) and replaces (200) documents. The body has the
-- shape of the documents benches/docs.py seeds (see seed_doc there).

local threads = 0

function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

local body_fmt = '{"id":"p%06d","name":"user %06d","email":"user%06d@example.com",' ..
  '"age":%d,"active":true,"tags":["alpha","beta"],"note":"lorem ipsum dolor sit a"}'

function init(args)
  collection = args[1] or "bench"
  nkeys = tonumber(args[2]) or 100000
  local seed = tonumber(args[3]) or 1
  math.randomseed(seed + 7919 * (thread_no or 0))
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  local n = math.random(nkeys) - 1
  local body = string.format(body_fmt, n, n, n, n % 90 + 10)
  return wrk.format("PUT", string.format("/v1/%s/p%06d", collection, n), headers, body)
end
