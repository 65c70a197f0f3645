-- wrk script for bench/workers.py: POST one-sample infer requests, the JSON bodies of the file
-- $WRK_BODIES (one a line) in turn, on keep-alive connections.
--   WRK_BODIES=bodies.jsonl wrk -t 4 -c 64 -d 3s --latency -s bench/wrk_infer.lua \
--     http://127.0.0.1:8080/v2/models/digits_cnn/infer
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
