-- Requests cycling over many host names: h0.<suffix> ... h<N-1>.<suffix>, one per request.
-- Arguments (after `--`): <count> <suffix> <port> <form>
--   <form> is "absolute" (GET http://hN.suffix:port/) or "origin" (GET / + Host header).
-- Extra headers given with -H are kept. done() prints "WRKJSON {...}" for bench/run.py.

local reqs = {}
local n = 0
local i = 0

function init(args)
   n = tonumber(args[1]) or 1000
   local suffix = args[2] or "bench.test"
   local port = args[3] or "80"
   local form = args[4] or "absolute"
   for k = 0, n - 1 do
      local authority = string.format("h%d.%s:%s", k, suffix, port)
      local headers = {}
      for name, value in pairs(wrk.headers) do
         headers[name] = value
      end
      headers["Host"] = authority
      local path = "/"
      if form == "absolute" then
         path = "http://" .. authority .. "/"
      end
      reqs[k + 1] = wrk.format("GET", path, headers)
   end
end

function request()
   i = i % n + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max))
end
