-- POSTs one JSON body per request: a job submission, or the same body to /echo as the baseline.
-- Usage: wrk -t1 -c64 -d10s -s benches/post.lua URL -- '<json body>'
init = function(args)
  wrk.method = "POST"
  wrk.body = args[1] or "{}"
  wrk.headers["Content-Type"] = "application/json"
end
