-- Pipelines N requests per write, as the TechEmpower plaintext test does.
-- Usage: wrk -t1 -c64 -d10s -s benches/pipeline.lua http://127.0.0.1:PORT/plaintext -- 16
-- wrk counts every response, so Requests/sec is responses per second.

init = function(args)
  local depth = tonumber(args[1]) or 1
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
