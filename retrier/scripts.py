"""Lua scripts the store runs, each one atomic and one round trip.

Keys are built inside the scripts from the prefix passed in ARGV, because the
set of keys depends on the data (a resend's root, say). That rules out Redis
Cluster, which retrier does not support; a single Redis (or a primary with
replicas) is what Heroku and most hosts provide.
"""

# Take one page into account. ARGV: prefix, claim_ttl_s, now, newest id on the
# page ("" if none), hour counter key, number of pairs, then (message_id,
# token) pairs, then the ids the page lists as delivered or read. Claims each
# pair's id that has no record yet; cancels the pending resend of each
# delivered id; moves the watermark (newest id seen) forward. Returns {rows,
# cancelled ids, previous watermark}, a row per pair being {claimed (0/1),
# root id or "", attempts used by the root's chain}.
SYNC_PAGE = """
local prefix, ttl, now, newest = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local counts, npairs = ARGV[5], tonumber(ARGV[6])
local rows = {}
local last = 6 + 2 * npairs
for i = 7, last, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = prefix .. ':msg:' .. id
  if redis.call('exists', key) == 1 then
    table.insert(rows, {0, '', 0})
  else
    local root = redis.call('get', prefix .. ':resend:' .. id) or id
    redis.call('hset', key, 'state', 'claimed', 'token', token, 'seen_at', now, 'updated_at', now)
    if root ~= id then redis.call('hset', key, 'root', root) end
    redis.call('expire', key, ttl)
    local used = redis.call('hget', prefix .. ':msg:' .. root, 'attempts') or 0
    table.insert(rows, {1, root, tonumber(used)})
  end
end
local cancelled = {}
for i = last + 1, #ARGV do
  local id = ARGV[i]
  local key = prefix .. ':msg:' .. id
  local state = redis.call('hget', key, 'state')
  if state == 'queued' or state == 'retrying' then
    redis.call('hset', key, 'state', 'cancelled', 'updated_at', now,
               'cause', 'listed as delivered before its resend ran')
    redis.call('zrem', prefix .. ':pending', id)
    redis.call('hdel', prefix .. ':pending:phone', id)
    redis.call('hincrby', counts, 'cancelled', 1)
    redis.call('expire', counts, 172800)
    table.insert(cancelled, id)
  end
end
local watermark = prefix .. ':watermark'
local previous = redis.call('get', watermark) or ''
if newest ~= '' and (previous == '' or tonumber(newest) > tonumber(previous)) then
  redis.call('set', watermark, newest)
end
return {rows, cancelled, previous}
"""

# Start a hook call. ARGV: prefix, id, token, root, max_attempts, now,
# inflight_ttl_ms, dedup_ttl_s, stall deadline (Unix s), recipient key ("" for
# none), recipient limit. Returns {status, value, next attempt}: stale (state),
# done (state), paused, backoff (until), busy (ms left), exhausted (attempts
# used), recipient (resends to the number today) or proceed (this attempt's
# number).
BEGIN_ATTEMPT = """
local prefix, id, token, root = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, now = tonumber(ARGV[5]), ARGV[6]
local inflight_ttl, dedup_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local deadline, recipient, recipient_limit = ARGV[9], ARGV[10], tonumber(ARGV[11])
local stamp = tostring(math.floor(tonumber(now)))  -- records keep whole seconds
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
if recipient ~= '' then
  local sent = redis.call('incr', recipient)
  redis.call('expire', recipient, 2 * 86400)
  if sent > recipient_limit then
    redis.call('decr', recipient)
    return {'recipient', tostring(sent - 1), used + 1}
  end
end
redis.call('hincrby', root_key, 'attempts', 1)
redis.call('expire', root_key, dedup_ttl)
redis.call('set', lock, token, 'PX', inflight_ttl)
if not state then redis.call('hset', key, 'token', token, 'seen_at', stamp) end
if not state and root ~= id then redis.call('hset', key, 'root', root) end
redis.call('hset', key, 'state', 'sending', 'updated_at', stamp)
redis.call('expire', key, dedup_ttl)
redis.call('zadd', prefix .. ':pending', deadline, id)
return {'proceed', tostring(used + 1), used + 1}
"""

# End a hook call. ARGV: prefix, id, root, refund (1 = the attempt was not used),
# dedup_ttl_s, hour key, counter name, state, now, stall deadline ("" once the
# message needs nothing more), recipient key to give one resend back to ("" for
# none), then field/value pairs for the record. A message given up joins the
# index that replay reads.
FINISH_ATTEMPT = """
local prefix, id, root, refund = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dedup_ttl, counts, counter = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local state, now, deadline, recipient = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local key = prefix .. ':msg:' .. id
if refund == '1' then redis.call('hincrby', prefix .. ':msg:' .. root, 'attempts', -1) end
if recipient ~= '' then redis.call('decr', recipient) end
redis.call('hset', key, 'state', state, 'updated_at', now)
if #ARGV > 11 then redis.call('hset', key, unpack(ARGV, 12)) end
redis.call('expire', key, dedup_ttl)
redis.call('del', prefix .. ':inflight:' .. id)
if counter ~= '' then
  redis.call('hincrby', counts, counter, 1)
  redis.call('expire', counts, 172800)
end
if deadline == '' then
  redis.call('zrem', prefix .. ':pending', id)
  redis.call('hdel', prefix .. ':pending:phone', id)
else
  redis.call('zadd', prefix .. ':pending', deadline, id)
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

# Put one given-up message back in the queue, once. ARGV: prefix, id, token,
# now, stall deadline. Returns the stored job (JSON) when the message was given up and is now
# queued again with a fresh attempt budget, or false.
REPLAY = """
local prefix, id, token, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = prefix .. ':msg:' .. id
local state, job, root = unpack(redis.call('hmget', key, 'state', 'job', 'root'))
if state ~= 'gave_up' or not job then return false end
redis.call('hset', key, 'state', 'queued', 'token', token, 'updated_at', now)
redis.call('hincrby', key, 'replays', 1)
redis.call('hset', prefix .. ':msg:' .. (root or id), 'attempts', 0)
redis.call('zrem', prefix .. ':gaveup', id)
redis.call('zadd', prefix .. ':pending', deadline, id)
return job
"""

# Give a stalled message a new job, unless it moved meanwhile. ARGV: prefix,
# id, the updated_at the sweeper read, new token, now, stall deadline. Returns
# 1 when the record now carries the new token.
REQUEUE_STALLED = """
local prefix, id, seen, token, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = prefix .. ':msg:' .. id
local state, updated = unpack(redis.call('hmget', key, 'state', 'updated_at'))
if updated ~= seen then return 0 end
if state ~= 'queued' and state ~= 'retrying' and state ~= 'sending' then
  redis.call('zrem', prefix .. ':pending', id)
  redis.call('hdel', prefix .. ':pending:phone', id)
  return 0
end
if redis.call('exists', prefix .. ':inflight:' .. id) == 1 then return 0 end
redis.call('hset', key, 'state', 'queued', 'token', token, 'updated_at', now)
redis.call('hincrby', key, 'swept', 1)
redis.call('zadd', prefix .. ':pending', deadline, id)
return 1
"""

# Hold the poller lease, or renew it. KEYS: lease key. ARGV: holder id, lease
# in ms. Returns 1 when the caller holds the lease afterwards.
LEASE = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Give the poller lease up if the caller holds it. KEYS: lease key. ARGV: holder id.
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
