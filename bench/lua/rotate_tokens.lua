-- wrk script (issue 11, scenario 6): every request carries the next of N distinct bearer tokens, read from the
-- file named after `--` (one token per line), round robin; each wrk thread starts at its own offset.
--   wrk -t2 -c64 -d10s -s bench/lua/rotate_tokens.lua http://127.0.0.1:PORT/api/items -- tokens.txt
local tokens, n, i = {}, 0, 0
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("offset", threads * 7919)
end

function init(args)
   for line in io.lines(args[1]) do
      n = n + 1
      tokens[n] = "Bearer " .. line
   end
   assert(n > 0, "no tokens in " .. args[1])
   i = (offset or 0) % n
end

function request()
   i = i % n + 1
   return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end
