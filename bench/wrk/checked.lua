-- static.lua, plus a count of responses whose status is not 2xx (wrk itself counts only
-- status >= 400). Used by bench/policies.py, where a variant must answer 2xx to every request.
-- Arguments (after `--`): <request-target> <host-header>; extra headers with -H are kept.
-- done() prints "WRKJSON {...}" with "non_2xx" added.

local threads = {}
non_2xx = 0 -- per thread (each wrk thread has its own Lua state); summed in done()

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   wrk.path = args[1] or wrk.path
   wrk.headers["Host"] = args[2] or wrk.host
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non_2xx = non_2xx + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non_2xx")
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"non_2xx":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max, bad))
end
