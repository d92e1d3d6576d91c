//! Every name wshub uses in Redis (channels and keys, under the configured prefix), and the
//! Lua scripts that run there.

/// Channel and key names.
pub(super) struct Names {
    pub(super) prefix: String,
    pub(super) all: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            all: format!("{prefix}:all"),
        }
    }
    pub(super) fn topic(&self, topic: &str) -> String {
        format!("{}:topic:{topic}", self.prefix)
    }
    pub(super) fn node(&self, node: u16) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    pub(super) fn lease(&self, node: u16) -> String {
        format!("{}:lease:{node}", self.prefix)
    }
    pub(super) fn counts(&self, node: u16) -> String {
        format!("{}:counts:{node}", self.prefix)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub(super) fn node_seq(&self) -> String {
        format!("{}:node-seq", self.prefix)
    }
    /// Epoch, sequence and stream of a topic's history.
    pub(super) fn history(&self, topic: &str) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}:history:{topic}:epoch"),
            format!("{p}:history:{topic}:seq"),
            format!("{p}:history:{topic}:log"),
        ]
    }
    /// Node `node`'s sessions present on `topic`: a hash of session id to presence info.
    pub(super) fn presence(&self, topic: &str, node: u16) -> String {
        format!("{}:presence:{topic}:{node}", self.prefix)
    }
}

/// Numbers a publication and appends it to the topic's stream, then publishes it, in one
/// atomic step, so that the order of the stream is the order of delivery on every node.
/// KEYS: epoch, sequence, stream. ARGV: channel, packet, max length, a new epoch (8 bytes)
/// in case the history is gone, the TTL (ms) the three keys get, all at once, so that they
/// expire together. The published message is `R`, the epoch (8 bytes), the offset
/// (8 bytes, big-endian), then the packet. Returns the number of receivers, the epoch and the
/// offset. A sequence behind the log (its key deleted or lost while the log survived) is set
/// from the log's last id, so numbering goes on instead of failing every publication.
pub(super) const RECORD: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'e', ARGV[2], 't', ms)
if type(added) == 'table' and added.err then
  -- The sequence is behind the log (its key was lost): number on from the log's last entry.
  local info = redis.call('XINFO', 'STREAM', KEYS[3])
  local last = '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  offset = tonumber(string.match(last, '^(%d+)')) + 1
  redis.call('SET', KEYS[2], offset)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'e', ARGV[2], 't', ms)
end
local n, be = offset, ''
for i = 1, 8 do
  be = string.char(n % 256) .. be
  n = math.floor(n / 256)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {redis.call('PUBLISH', ARGV[1], 'R' .. epoch .. be .. ARGV[2]), epoch, offset}
";

/// Reads a topic's history: creates the epoch when there is none (so that it is stable from
/// the first reader on), and returns epoch, sequence, Redis time (ms) and the stream entries
/// from ARGV[1] on. KEYS: epoch, sequence, stream. ARGV: first id, a new epoch, its TTL (ms).
pub(super) const READ_HISTORY: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0', ms,
        redis.call('XRANGE', KEYS[3], ARGV[1], '+')}
";

/// Renews this node's lease: 1 when it had lapsed and was taken again, 0 when renewed, -1 when
/// another node holds it.
pub(super) const RENEW_LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
return -1
";

/// Gives the lease up, if it is still this node's.
pub(super) const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
";

/// Applies this node's presence changes, if it still holds its lease (so that a node that lost
/// its number never writes under the new holder's). KEYS: the lease. ARGV: the token, the TTL
/// (ms), then groups of four: `S key id info` (set, and renew the TTL), `D key id _` (delete),
/// `X key _ _` (delete the key), `E key _ _` (renew the TTL). Returns 0; -1 when the lease is
/// not this node's; the number of keys to renew that were gone, when some were (they must be
/// written again). The keys are this node's own; the script names them in ARGV because
/// they are not known before (a single Redis, not a Redis Cluster).
pub(super) const WRITE_PRESENCE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local gone = 0
for i = 3, #ARGV, 4 do
  local op, key = ARGV[i], ARGV[i + 1]
  if op == 'S' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    redis.call('PEXPIRE', key, ARGV[2])
  elseif op == 'D' then
    redis.call('HDEL', key, ARGV[i + 2])
  elseif op == 'X' then
    redis.call('DEL', key)
  elseif op == 'E' then
    gone = gone + 1 - redis.call('PEXPIRE', key, ARGV[2])
  end
end
return gone
";
