-- wrk script: POST the JSON body in the file named by BODY to each of the comma-separated PATHS
-- in turn (round robin), e.g. PATHS=/rl/m0/predict,/rl/m1/predict
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY")))
wrk.body = f:read("*a")
f:close()
local paths = {}
for p in string.gmatch(os.getenv("PATHS"), "[^,]+") do
  paths[#paths + 1] = p
end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
