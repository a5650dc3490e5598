-- wrk script: POST each request as multipart/form-data with one image as the `file` part, rotating
-- over the files given; with WRK_RAW=1, the image itself is the body (Content-Type: the mime given);
-- with no files, a plain GET of the path (the reference endpoint).
-- Prints one line "WRKJSON {...}" with the counts and latency percentiles (microseconds).
--
--   wrk -t1 -c8 -d10s -s bench/wrk_multipart.lua http://127.0.0.1:8000 -- /search?k=10 image/png a.png b.png
--   wrk -t1 -c8 -d10s -s bench/wrk_multipart.lua http://127.0.0.1:8000 -- /healthz

local path = "/"
local bodies = {}
local content_type = nil
local n, i = 0, 0
local boundary = "----simsearch-bench-5f3a9c1e"

local function read_file(name)
  local f = assert(io.open(name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function part(name, mime)
  local fname = name:match("([^/]+)$")
  return "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="file"; filename="' .. fname .. '"\r\n'
    .. "Content-Type: " .. mime .. "\r\n\r\n" .. read_file(name) .. "\r\n"
end

-- WRK_FILES_PER_REQUEST=k puts k file parts in each body (for POST /index batches).
function init(args)
  path = args[1] or "/"
  local mime = args[2]
  local per = tonumber(os.getenv("WRK_FILES_PER_REQUEST") or "1")
  if os.getenv("WRK_RAW") == "1" then
    for k = 3, #args do
      bodies[#bodies + 1] = read_file(args[k])
    end
    n = #bodies
    if n > 0 then
      content_type = mime
    end
    return
  end
  local parts = {}
  for k = 3, #args do
    parts[#parts + 1] = part(args[k], mime)
  end
  if #parts > 0 then
    for b = 1, #parts do
      local body = {}
      for j = 0, per - 1 do
        body[#body + 1] = parts[(b - 1 + j) % #parts + 1]
      end
      bodies[#bodies + 1] = table.concat(body) .. "--" .. boundary .. "--\r\n"
    end
  end
  n = #bodies
  if n > 0 then
    content_type = "multipart/form-data; boundary=" .. boundary
  end
end

function request()
  if n == 0 then
    return wrk.format("GET", path)
  end
  i = i % n + 1
  return wrk.format("POST", path, { ["Content-Type"] = content_type }, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, "errors_read": %d, '
    .. '"errors_write": %d, "errors_status": %d, "errors_timeout": %d, "latency_mean_us": %.1f, '
    .. '"latency_p50_us": %d, "latency_p90_us": %d, "latency_p99_us": %d, "latency_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
