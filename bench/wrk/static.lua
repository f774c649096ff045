-- One fixed request, pre-formatted once by wrk (fastest path: no request() function).
-- Arguments (after `--`): <request-target> <host-header>
--   absolute form: wrk ... -s static.lua http://PROXY/ -- http://127.0.0.1:8080/ 127.0.0.1:8080
--   origin form:   wrk ... -s static.lua http://PROXY/ -- / 127.0.0.1:8080
-- Extra headers given with -H (e.g. "Connection: close") are kept.
-- done() prints one line "WRKJSON {...}" that bench/run.py parses.

function init(args)
   wrk.path = args[1] or wrk.path
   wrk.headers["Host"] = args[2] or wrk.host
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
