"""Lua scripts the store runs, each one atomic and one round trip.

Keys are built inside the scripts from the prefix passed in ARGV, because the
set of keys depends on the data (a resend's root, say). That rules out Redis
Cluster, which retrier does not support; a single Redis (or a primary with
replicas) is what Heroku and most hosts provide.
"""

# Claim each message id that has no record yet. ARGV: prefix, claim_ttl_s, now,
# then (message_id, token) pairs. Returns, per pair, {claimed (0/1), root id or
# "", attempts used by the root's chain}.
CLAIM = """
local prefix, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = prefix .. ':msg:' .. id
  if redis.call('exists', key) == 1 then
    table.insert(out, {0, '', 0})
  else
    local root = redis.call('get', prefix .. ':resend:' .. id) or id
    redis.call('hset', key, 'state', 'claimed', 'token', token, 'root', root,
               'seen_at', now, 'updated_at', now)
    redis.call('expire', key, ttl)
    local used = redis.call('hget', prefix .. ':msg:' .. root, 'attempts') or 0
    table.insert(out, {1, root, tonumber(used)})
  end
end
return out
"""

# Start a hook call. ARGV: prefix, id, token, root, max_attempts, now,
# inflight_ttl_ms, dedup_ttl_s. Returns {status, value, next attempt}: stale
# (state), done (state), paused, backoff (until), busy (ms left), exhausted
# (attempts used) or proceed (this attempt's number).
BEGIN_ATTEMPT = """
local prefix, id, token, root = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, now = tonumber(ARGV[5]), ARGV[6]
local inflight_ttl, dedup_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local key = prefix .. ':msg:' .. id
local state, held = unpack(redis.call('hmget', key, 'state', 'token'))
if state and held ~= token then return {'stale', state, 0} end
if state == 'resent' or state == 'gave_up' or state == 'permanent' or state == 'expired'
   or state == 'cancelled' then
  return {'done', state, 0}
end
local root_key = prefix .. ':msg:' .. root
local used = tonumber(redis.call('hget', root_key, 'attempts') or '0')
if redis.call('exists', prefix .. ':pause') == 1 then return {'paused', '', used + 1} end
local not_before = tonumber(redis.call('hget', prefix .. ':backoff', 'until') or '0')
if not_before > tonumber(now) then return {'backoff', tostring(not_before), used + 1} end
local lock = prefix .. ':inflight:' .. id
local left = redis.call('pttl', lock)
if left > 0 then return {'busy', tostring(left), used + 1} end
if used >= max_attempts then return {'exhausted', tostring(used), used} end
redis.call('hincrby', root_key, 'attempts', 1)
redis.call('expire', root_key, dedup_ttl)
redis.call('set', lock, token, 'PX', inflight_ttl)
if not state then redis.call('hset', key, 'token', token, 'root', root, 'seen_at', now) end
redis.call('hset', key, 'state', 'sending', 'updated_at', now)
redis.call('expire', key, dedup_ttl)
return {'proceed', tostring(used + 1), used + 1}
"""

# End a hook call. ARGV: prefix, id, root, refund (1 = the attempt was not used),
# dedup_ttl_s, hour key, counter name, state, now, then field/value pairs for
# the record. A message given up joins the index that replay reads.
FINISH_ATTEMPT = """
local prefix, id, root, refund = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dedup_ttl, counts, counter = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local state, now = ARGV[8], ARGV[9]
local key = prefix .. ':msg:' .. id
if refund == '1' then redis.call('hincrby', prefix .. ':msg:' .. root, 'attempts', -1) end
redis.call('hset', key, 'state', state, 'updated_at', now)
if #ARGV > 9 then redis.call('hset', key, unpack(ARGV, 10)) end
redis.call('expire', key, dedup_ttl)
redis.call('del', prefix .. ':inflight:' .. id)
if counter ~= '' then
  redis.call('hincrby', counts, counter, 1)
  redis.call('expire', counts, 172800)
end
if state == 'gave_up' then
  local index = prefix .. ':gaveup'
  redis.call('zadd', index, now, id)
  redis.call('zremrangebyscore', index, 0, tonumber(now) - dedup_ttl)
end
return 1
"""

# Move the shared backoff later, never earlier. ARGV: key, until, source, now.
# Returns the backoff in force afterwards.
DEFER = """
local key, not_before, source, now = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local current = tonumber(redis.call('hget', key, 'until') or '0')
if not_before > current then
  redis.call('hset', key, 'until', ARGV[1], 'source', source, 'set_at', now)
  redis.call('expireat', key, math.ceil(not_before) + 3600)
  return ARGV[1]
end
return tostring(current)
"""

# Hold every resend after an account-level failure, unless already held.
# KEYS: pause key. ARGV: field/value pairs. Returns 1 when this call set it.
PAUSE = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
"""

# Put one given-up message back in the queue, once. ARGV: prefix, id, token,
# now. Returns the stored job (JSON) when the message was given up and is now
# queued again with a fresh attempt budget, or false.
REPLAY = """
local prefix, id, token, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = prefix .. ':msg:' .. id
local state, job, root = unpack(redis.call('hmget', key, 'state', 'job', 'root'))
if state ~= 'gave_up' or not job then return false end
redis.call('hset', key, 'state', 'queued', 'token', token, 'updated_at', now)
redis.call('hincrby', key, 'replays', 1)
redis.call('hset', prefix .. ':msg:' .. (root or id), 'attempts', 0)
redis.call('zrem', prefix .. ':gaveup', id)
return job
"""

# Count one alert against its rule's hourly budget. KEYS: the hour's alert
# hash. ARGV: kind:rule, limit. Returns 1 to send it, 0 when over budget (it is
# then counted as suppressed).
ALERT_BUDGET = """
local sent = redis.call('hincrby', KEYS[1], 'sent:' .. ARGV[1], 1)
redis.call('expire', KEYS[1], 3 * 3600)
if sent > tonumber(ARGV[2]) then
  redis.call('hincrby', KEYS[1], 'suppressed:' .. ARGV[1], 1)
  return 0
end
return 1
"""
