-- wrk script for the mint benchmark (devtools/appliance_dev/bench/mint.py): every request carries its own
-- pre-signed device JWT, read from the file named after `--`; the summary goes to stdout as
-- one "RESULT key=value ..." line for the bench to parse.
local tokens = {}
local next_token = 0

init = function(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
end

request = function()
  next_token = next_token + 1
  -- past the end the tokens come round again: those requests are refused as replays, and the
  -- bench reports them (it signs more tokens than a run can use)
  local token = tokens[(next_token - 1) % #tokens + 1]
  return wrk.format("POST", "/v1/realtime/keys", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, "{}")
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d "
      .. "p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
