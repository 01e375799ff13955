"""The Lua scripts of the shared budget (`_redis_budget`): each runs atomically in Redis."""

from __future__ import annotations

__all__ = ["BOOK", "CANCEL", "SENT", "SETTLE"]

# A budget is, for each of its windows (a minute's, and an hour's or a day's when it has such
# limits), three keys: `log`, a list of bookings "<ms>:<id>" oldest first; `tokens`, a hash of
# booking id -> "<tokens>:<ms>", and id.."@" -> when its request went on the wire (absent while
# it has not); `sum`, the tokens booked in the window. Beside them: `clock`, a hash (last,
# offset), and `sharers`, a sorted set of process -> when it last booked. All in one hash slot
# (a Redis Cluster keeps them on one node).
# A booking counts in a window from the moment its request went on the wire, not from the
# booking: a process slowed between the two (a cold start, a busy host) cannot have its request
# arrive beside one booked a window later. A booking whose request has not gone yet counts
# whatever its age, up to a minute's window past its own (its process may have died).
# Bookings leave each log oldest first, each once: a booking costs O(1), amortised, whatever the
# budget. A request is admitted only if every window (by the budget's clock) then holds at most
# its requests and tokens. The budget's clock is Redis's, never allowed to go back: when Redis's
# clock steps back, the offset grows by the step, so that no booking is ever dated in the future
# (which would hold the budget for the whole step).

# The budget's clock (milliseconds), kept in KEYS[1] for `ttl` milliseconds.
_CLOCK = """
local function clock(key, ttl)
  local now = redis.call('TIME')
  local real = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local kept = redis.call('HMGET', key, 'last', 'offset')
  local last, offset = tonumber(kept[1]) or 0, tonumber(kept[2]) or 0
  local ms = real + offset
  if ms < last then offset = offset + last - ms; ms = last end
  redis.call('HSET', key, 'last', ms, 'offset', offset)
  redis.call('PEXPIRE', key, ttl)
  return ms
end
"""

# When a booking leaves a window: a window after its request went on the wire; while it has
# not gone, a window plus `unsent` after the booking (`pending`: when a waiter should ask again).
_LEAVES = """
local function leaves(booked_tokens, at, id, window, unsent)
  local sent = tonumber(redis.call('HGET', booked_tokens, id .. '@'))
  if sent then return sent + window, false end
  if redis.call('HEXISTS', booked_tokens, id) == 0 then return at + window, false end
  return at + window + unsent, true
end
local function free_at(booked_tokens, at, id, window, unsent, now)
  local leaving, pending = leaves(booked_tokens, at, id, window, unsent)
  if pending then return math.max(at + window, now + math.ceil(window / 20)) end
  return leaving
end
"""

# KEYS: clock, sharers, then (log, tokens, sum) per window.
# ARGV: tokens, id, process, then (max requests, max tokens, window ms) per window; the first
# window is the minute's.
BOOK = (
    _CLOCK
    + _LEAVES
    + """
local tokens = tonumber(ARGV[1])
local windows = (#KEYS - 2) / 3
local unsent = tonumber(ARGV[6])
local ms = clock(KEYS[1], unsent * 2)
local wait, counts, sums = 0, {}, {}
for w = 1, windows do
  local log, booked_tokens, sum = KEYS[3 * w], KEYS[3 * w + 1], KEYS[3 * w + 2]
  local max_requests = tonumber(ARGV[3 * w + 1])
  local max_tokens = tonumber(ARGV[3 * w + 2])
  local window = tonumber(ARGV[3 * w + 3])
  local used = tonumber(redis.call('GET', sum)) or 0
  while true do
    local head = redis.call('LINDEX', log, 0)
    if not head then break end
    local at, id = string.match(head, '^(%d+):(.+)$')
    if leaves(booked_tokens, tonumber(at), id, window, unsent) > ms then break end
    redis.call('LPOP', log)
    local booked = redis.call('HGET', booked_tokens, id)
    if booked then
      used = used - tonumber(string.match(booked, '^(%d+):'))
      redis.call('HDEL', booked_tokens, id, id .. '@')
    end
  end
  local count = redis.call('LLEN', log)
  if used < 0 or count == 0 then used = 0 end
  if max_requests > 0 and count >= max_requests then
    -- the oldest (count - max + 1) bookings must leave first, in order
    local oldest = redis.call('LRANGE', log, 0, math.min(count - max_requests, 127))
    for i = 1, #oldest do
      local at, id = string.match(oldest[i], '^(%d+):(.+)$')
      wait = math.max(wait, free_at(booked_tokens, tonumber(at), id, window, unsent, ms) - ms)
    end
  end
  if max_tokens > 0 and used + tokens > max_tokens then
    local oldest = redis.call('LRANGE', log, 0, 127)
    local freed, soonest = 0, ms + 1
    for i = 1, #oldest do
      local at, id = string.match(oldest[i], '^(%d+):(.+)$')
      local booked = redis.call('HGET', booked_tokens, id)
      if booked then freed = freed + tonumber(string.match(booked, '^(%d+):')) end
      soonest = math.max(soonest, free_at(booked_tokens, tonumber(at), id, window, unsent, ms))
      if used - freed + tokens <= max_tokens then break end
    end
    wait = math.max(wait, soonest - ms)
  end
  redis.call('SET', sum, used, 'PX', window * 2)
  counts[w], sums[w] = count, used
end
redis.call('ZADD', KEYS[2], ms, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms - unsent)
local sharers = redis.call('ZCARD', KEYS[2])
redis.call('PEXPIRE', KEYS[2], unsent * 2)
if wait > 0 then return {0, tostring(wait), sharers, counts[1], sums[1]} end
local member = ms .. ':' .. ARGV[2]
for w = 1, windows do
  local log, booked_tokens, sum = KEYS[3 * w], KEYS[3 * w + 1], KEYS[3 * w + 2]
  local span = tonumber(ARGV[3 * w + 3]) * 2 + unsent
  redis.call('RPUSH', log, member)
  redis.call('HSET', booked_tokens, ARGV[2], tokens .. ':' .. ms)
  redis.call('INCRBY', sum, tokens)
  redis.call('PEXPIRE', log, span)
  redis.call('PEXPIRE', booked_tokens, span)
  redis.call('PEXPIRE', sum, span)
end
return {1, member, sharers, counts[1] + 1, sums[1] + tokens}
"""
)

# A booking's request went on the wire `ARGV[2]` milliseconds before this runs: from then on it
# counts in each window. KEYS: clock, then (log, tokens, sum) per window. ARGV: id, ms ago,
# the clock's time to live (ms).
SENT = (
    _CLOCK
    + """
local at = clock(KEYS[1], tonumber(ARGV[3])) - tonumber(ARGV[2])
for w = 1, (#KEYS - 1) / 3 do
  local booked_tokens = KEYS[3 * w]
  local booked = redis.call('HGET', booked_tokens, ARGV[1])
  if booked and redis.call('HEXISTS', booked_tokens, ARGV[1] .. '@') == 0 then
    local ms = tonumber(string.match(booked, ':(%d+)$'))
    redis.call('HSET', booked_tokens, ARGV[1] .. '@', math.max(at, ms))
  end
end
return 1
"""
)

# Once the answer says how many tokens a request used, its booking takes that count, in every
# window. KEYS: (log, tokens, sum) per window. ARGV: id, tokens used.
SETTLE = """
for w = 1, #KEYS / 3 do
  local booked = redis.call('HGET', KEYS[3 * w - 1], ARGV[1])
  if booked then
    local tokens, ms = string.match(booked, '^(%d+):(%d+)$')
    redis.call('HSET', KEYS[3 * w - 1], ARGV[1], ARGV[2] .. ':' .. ms)
    redis.call('INCRBY', KEYS[3 * w], tonumber(ARGV[2]) - tonumber(tokens))
  end
end
return 1
"""

# A booking whose request was never sent leaves every window (found from the newest end of each
# log, where it almost always is). KEYS: (log, tokens, sum) per window. ARGV: id.
CANCEL = """
for w = 1, #KEYS / 3 do
  local booked = redis.call('HGET', KEYS[3 * w - 1], ARGV[1])
  if booked then
    local tokens, ms = string.match(booked, '^(%d+):(%d+)$')
    redis.call('HDEL', KEYS[3 * w - 1], ARGV[1], ARGV[1] .. '@')
    redis.call('INCRBY', KEYS[3 * w], -tonumber(tokens))
    redis.call('LREM', KEYS[3 * w - 2], -1, ms .. ':' .. ARGV[1])
  end
end
return 1
"""
