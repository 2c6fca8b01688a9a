//! Rate limits and budgets, per API key and per model alias.
//!
//! - `requests_per_min`: a token bucket of that capacity refilled at that rate; a request
//!   takes one token when admitted.
//! - `tokens_per_min`: a bucket debited by each answer's tokens once it is known; a request is
//!   admitted while the bucket is above zero (one large answer can drive it below; requests
//!   wait until it refills).
//! - `usd_per_day` / `usd_per_month`: spend in the current UTC day / month, at the targets'
//!   prices; a request is admitted while the spend is under the budget.
//!
//! A request is checked against its key's limits and its model's at once, and takes from
//! neither unless both admit it. Refusals are 429 with `Retry-After`. The store is in-process
//! by default (`MemoryLimits`), or Redis (`RedisLimits`) so many gateway replicas share one set
//! of counters; if Redis is unreachable the gateway lets requests through and logs it (a limit
//! outage must not become a product outage).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use plumb_core::BoxFuture;

/// The limits of one key or model; unset ones do not apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub requests_per_min: Option<u64>,
    pub tokens_per_min: Option<u64>,
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A key or a model with its limits. `name` is what counters are stored under and what a
/// refusal names: `key:<id>` or `model:<alias>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub name: String,
    pub limits: Limits,
}

/// Which limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    DailySpend,
    MonthlySpend,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests_per_min",
            Limit::Tokens => "tokens_per_min",
            Limit::DailySpend => "usd_per_day",
            Limit::MonthlySpend => "usd_per_month",
        }
    }

    /// The code the Redis script returns (1 requests, 2 tokens, 3 daily, 4 monthly).
    fn from_code(code: i64) -> Limit {
        match code {
            2 => Limit::Tokens,
            3 => Limit::DailySpend,
            4 => Limit::MonthlySpend,
            _ => Limit::Requests,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Denied {
    pub scope: String,
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Denied {
    pub fn message(&self, scopes: &[Scope]) -> String {
        let limits = scopes
            .iter()
            .find(|s| s.name == self.scope)
            .map(|s| &s.limits);
        let value = limits.and_then(|l| match self.limit {
            Limit::Requests => l.requests_per_min.map(|v| v.to_string()),
            Limit::Tokens => l.tokens_per_min.map(|v| v.to_string()),
            Limit::DailySpend => l.usd_per_day.map(|v| format!("${v}")),
            Limit::MonthlySpend => l.usd_per_month.map(|v| format!("${v}")),
        });
        format!(
            "{} has reached its {} limit{}; retry in {} s",
            self.scope,
            self.limit.as_str(),
            value.map(|v| format!(" ({v})")).unwrap_or_default(),
            self.retry_after.as_secs().max(1)
        )
    }
}

/// Where counters live.
pub trait LimitStore: Send + Sync {
    /// Admits a request against every scope at `now_ms`, taking one request token from each, or
    /// refuses without taking any. `Err` means the store itself failed.
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Denied>, String>>;

    /// Debits an answer's tokens and cost from every scope.
    fn charge<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), String>>;
}

const MINUTE_MS: f64 = 60_000.0;
const DAY_MS: i64 = 86_400_000;

/// The UTC day and month of `now_ms`, and the milliseconds until each ends.
pub fn windows(now_ms: i64) -> ((i64, i64), (i64, i64)) {
    let day = now_ms.div_euclid(DAY_MS);
    let until_day_end = (day + 1) * DAY_MS - now_ms;
    let (year, month) = civil_month(day);
    let next_month_start = if month == 12 {
        days_from_civil(year + 1, 1)
    } else {
        days_from_civil(year, month + 1)
    };
    let month_index = year * 12 + month - 1;
    (
        (day, until_day_end),
        (month_index, next_month_start * DAY_MS - now_ms),
    )
}

/// Year and month (1–12) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// Days since 1970-01-01 of the first of `month` in `year`.
fn days_from_civil(year: i64, month: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: i64,
}

impl Bucket {
    fn refilled(self, capacity: f64, now_ms: i64) -> f64 {
        let elapsed = (now_ms - self.at).max(0) as f64;
        (self.level + elapsed * capacity / MINUTE_MS).min(capacity)
    }
}

/// A bucket's level at `now_ms` (full when it has never been used).
fn level(buckets: &HashMap<String, Bucket>, name: &str, capacity: f64, now_ms: i64) -> f64 {
    buckets
        .get(name)
        .map_or(capacity, |b| b.refilled(capacity, now_ms))
}

/// Takes `amount` from a bucket (its level may go below zero).
fn take(
    buckets: &mut HashMap<String, Bucket>,
    name: &str,
    capacity: f64,
    amount: f64,
    now_ms: i64,
) {
    let level = level(buckets, name, capacity, now_ms) - amount;
    buckets.insert(name.to_owned(), Bucket { level, at: now_ms });
}

/// Spend of `name` in a window (a day or a month index).
fn spent(spend: &HashMap<(String, i64), f64>, name: &str, window: i64) -> f64 {
    spend
        .get(&(name.to_owned(), window))
        .copied()
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Counters {
    requests: HashMap<String, Bucket>,
    tokens: HashMap<String, Bucket>,
    /// (scope, day or month index) → USD.
    daily: HashMap<(String, i64), f64>,
    monthly: HashMap<(String, i64), f64>,
}

/// Counters in this process.
#[derive(Default)]
pub struct MemoryLimits {
    counters: Mutex<Counters>,
}

impl std::fmt::Debug for MemoryLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimits").finish_non_exhaustive()
    }
}

fn wait_ms(missing: f64, capacity: f64) -> Duration {
    Duration::from_millis((missing * MINUTE_MS / capacity).ceil().max(1.0) as u64)
}

impl MemoryLimits {
    fn admit_now(&self, scopes: &[Scope], now_ms: i64) -> Result<Option<Denied>, String> {
        let mut counters = self
            .counters
            .lock()
            .map_err(|_| "limit counters lock poisoned".to_owned())?;
        let ((day, to_day_end), (month, to_month_end)) = windows(now_ms);
        for scope in scopes {
            let (name, limits) = (scope.name.as_str(), &scope.limits);
            let denied = |limit, retry_after| {
                Ok(Some(Denied {
                    scope: scope.name.clone(),
                    limit,
                    retry_after,
                }))
            };
            if let Some(rpm) = limits.requests_per_min {
                let capacity = rpm as f64;
                let level = level(&counters.requests, name, capacity, now_ms);
                if level < 1.0 {
                    return denied(Limit::Requests, wait_ms(1.0 - level, capacity));
                }
            }
            if let Some(tpm) = limits.tokens_per_min {
                let capacity = tpm as f64;
                let level = level(&counters.tokens, name, capacity, now_ms);
                if level <= 0.0 {
                    return denied(Limit::Tokens, wait_ms(-level + 1.0, capacity));
                }
            }
            if limits
                .usd_per_day
                .is_some_and(|budget| spent(&counters.daily, name, day) >= budget)
            {
                return denied(Limit::DailySpend, Duration::from_millis(to_day_end as u64));
            }
            if limits
                .usd_per_month
                .is_some_and(|budget| spent(&counters.monthly, name, month) >= budget)
            {
                return denied(
                    Limit::MonthlySpend,
                    Duration::from_millis(to_month_end as u64),
                );
            }
        }
        for scope in scopes {
            if let Some(rpm) = scope.limits.requests_per_min {
                take(&mut counters.requests, &scope.name, rpm as f64, 1.0, now_ms);
            }
        }
        Ok(None)
    }

    fn charge_now(
        &self,
        scopes: &[Scope],
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> Result<(), String> {
        let mut counters = self
            .counters
            .lock()
            .map_err(|_| "limit counters lock poisoned".to_owned())?;
        let ((day, _), (month, _)) = windows(now_ms);
        for scope in scopes {
            if let Some(tpm) = scope.limits.tokens_per_min {
                take(
                    &mut counters.tokens,
                    &scope.name,
                    tpm as f64,
                    tokens as f64,
                    now_ms,
                );
            }
            if usd > 0.0 {
                if scope.limits.usd_per_day.is_some() {
                    *counters.daily.entry((scope.name.clone(), day)).or_default() += usd;
                    counters.daily.retain(|(_, d), _| *d >= day);
                }
                if scope.limits.usd_per_month.is_some() {
                    *counters
                        .monthly
                        .entry((scope.name.clone(), month))
                        .or_default() += usd;
                    counters.monthly.retain(|(_, m), _| *m >= month);
                }
            }
        }
        Ok(())
    }
}

impl LimitStore for MemoryLimits {
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Denied>, String>> {
        let result = self.admit_now(scopes, now_ms);
        Box::pin(std::future::ready(result))
    }

    fn charge<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), String>> {
        let result = self.charge_now(scopes, tokens, usd, now_ms);
        Box::pin(std::future::ready(result))
    }
}

/// The same counters in Redis, updated by Lua scripts so each admission is atomic across
/// replicas. Keys: `plumb:limits:{scope}:req|tok|day:<n>|month:<n>`.
pub struct RedisLimits {
    connection: redis::aio::ConnectionManager,
    admit_script: redis::Script,
    charge_script: redis::Script,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits").finish_non_exhaustive()
    }
}

/// KEYS: per scope `req, tok, day, month`. ARGV: now_ms, then per scope
/// `rpm, tpm, usd_day, usd_month` (-1: none), ms to the day's end, ms to the month's end.
/// Returns `{0}` or `{1, scope index (1-based), limit code, retry after ms}`.
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local to_day_end = tonumber(ARGV[2])
local to_month_end = tonumber(ARGV[3])
local scopes = #KEYS / 4
local levels = {}
local function refilled(key, capacity)
  local state = redis.call('HMGET', key, 'level', 'at')
  if not state[1] then return capacity end
  local level = tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * capacity / 60000
  return math.min(capacity, level)
end
for i = 1, scopes do
  local base = (i - 1) * 4
  local arg = 4 + (i - 1) * 4
  local rpm, tpm = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
  local usd_day, usd_month = tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3])
  if rpm >= 0 then
    local level = refilled(KEYS[base + 1], rpm)
    if level < 1 then return {1, i, 1, math.ceil((1 - level) * 60000 / math.max(rpm, 1e-9))} end
    levels[i] = level
  end
  if tpm >= 0 then
    local level = refilled(KEYS[base + 2], tpm)
    if level <= 0 then return {1, i, 2, math.ceil((1 - level) * 60000 / math.max(tpm, 1e-9))} end
  end
  if usd_day >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[base + 3]) or '0')
    if spent >= usd_day then return {1, i, 3, to_day_end} end
  end
  if usd_month >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[base + 4]) or '0')
    if spent >= usd_month then return {1, i, 4, to_month_end} end
  end
end
for i = 1, scopes do
  if levels[i] then
    local key = KEYS[(i - 1) * 4 + 1]
    redis.call('HSET', key, 'level', tostring(levels[i] - 1), 'at', tostring(now))
    redis.call('PEXPIRE', key, 120000)
  end
end
return {0}
";

/// KEYS as for ADMIT. ARGV: now_ms, tokens, usd, ms to the day's end, ms to the month's end,
/// then per scope `tpm, usd_day, usd_month` (-1: none).
const CHARGE: &str = r"
local now = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local usd = tonumber(ARGV[3])
local to_day_end = tonumber(ARGV[4])
local to_month_end = tonumber(ARGV[5])
for i = 1, #KEYS / 4 do
  local base = (i - 1) * 4
  local arg = 6 + (i - 1) * 3
  local tpm, usd_day, usd_month = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  if tpm >= 0 then
    local state = redis.call('HMGET', KEYS[base + 2], 'level', 'at')
    local level = tpm
    if state[1] then
      level = math.min(tpm, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * tpm / 60000)
    end
    redis.call('HSET', KEYS[base + 2], 'level', tostring(level - tokens), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[base + 2], 120000 + math.ceil(math.max(0, tokens - level) * 60000 / math.max(tpm, 1e-9)))
  end
  if usd > 0 and usd_day >= 0 then
    redis.call('INCRBYFLOAT', KEYS[base + 3], tostring(usd))
    redis.call('PEXPIRE', KEYS[base + 3], to_day_end + 60000)
  end
  if usd > 0 and usd_month >= 0 then
    redis.call('INCRBYFLOAT', KEYS[base + 4], tostring(usd))
    redis.call('PEXPIRE', KEYS[base + 4], to_month_end + 60000)
  end
end
return 0
";

impl RedisLimits {
    /// Connects to `url` (`redis://host:port/db`); fails if the server does not answer.
    pub async fn connect(url: &str) -> Result<RedisLimits, String> {
        let client = redis::Client::open(url).map_err(|error| format!("{url}: {error}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            // A request must not wait long on a Redis that is away (limits then fail open).
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|error| format!("cannot connect to {url}: {error}"))?;
        Ok(RedisLimits {
            connection,
            admit_script: redis::Script::new(ADMIT),
            charge_script: redis::Script::new(CHARGE),
        })
    }

    fn keys(scopes: &[Scope], now_ms: i64) -> Vec<String> {
        let ((day, _), (month, _)) = windows(now_ms);
        scopes
            .iter()
            .flat_map(|scope| {
                let base = format!("plumb:limits:{}", scope.name);
                [
                    format!("{base}:req"),
                    format!("{base}:tok"),
                    format!("{base}:day:{day}"),
                    format!("{base}:month:{month}"),
                ]
            })
            .collect()
    }
}

fn or_none(value: Option<f64>) -> f64 {
    value.unwrap_or(-1.0)
}

impl LimitStore for RedisLimits {
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Denied>, String>> {
        Box::pin(async move {
            let ((_, to_day_end), (_, to_month_end)) = windows(now_ms);
            let mut invocation = self.admit_script.prepare_invoke();
            for key in RedisLimits::keys(scopes, now_ms) {
                invocation.key(key);
            }
            invocation.arg(now_ms).arg(to_day_end).arg(to_month_end);
            for scope in scopes {
                let l = &scope.limits;
                invocation
                    .arg(or_none(l.requests_per_min.map(|v| v as f64)))
                    .arg(or_none(l.tokens_per_min.map(|v| v as f64)))
                    .arg(or_none(l.usd_per_day))
                    .arg(or_none(l.usd_per_month));
            }
            let mut connection = self.connection.clone();
            let reply: Vec<i64> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| error.to_string())?;
            match reply.as_slice() {
                [0] => Ok(None),
                [1, index, code, wait] => {
                    let scope = usize::try_from(*index - 1)
                        .ok()
                        .and_then(|i| scopes.get(i))
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    Ok(Some(Denied {
                        scope,
                        limit: Limit::from_code(*code),
                        retry_after: Duration::from_millis((*wait).max(1) as u64),
                    }))
                }
                other => Err(format!(
                    "unexpected reply from the limits script: {other:?}"
                )),
            }
        })
    }

    fn charge<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let ((_, to_day_end), (_, to_month_end)) = windows(now_ms);
            let mut invocation = self.charge_script.prepare_invoke();
            for key in RedisLimits::keys(scopes, now_ms) {
                invocation.key(key);
            }
            invocation
                .arg(now_ms)
                .arg(tokens)
                .arg(usd)
                .arg(to_day_end)
                .arg(to_month_end);
            for scope in scopes {
                let l = &scope.limits;
                invocation
                    .arg(or_none(l.tokens_per_min.map(|v| v as f64)))
                    .arg(or_none(l.usd_per_day))
                    .arg(or_none(l.usd_per_month));
            }
            let mut connection = self.connection.clone();
            let _: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| error.to_string())?;
            Ok(())
        })
    }
}

/// Tests shared by both stores: run against `MemoryLimits` here and against a real
/// redis-server in the integration tests.
pub async fn check_store_semantics(store: &dyn LimitStore) -> Result<(), String> {
    let t0: i64 = 1_790_000_000_000 + fastrand::i64(0..1_000_000_000);
    let unique = format!("{:x}", fastrand::u64(..));
    let key = Scope {
        name: format!("key:{unique}"),
        limits: Limits {
            requests_per_min: Some(2),
            ..Limits::default()
        },
    };
    let model = Scope {
        name: format!("model:{unique}"),
        limits: Limits {
            requests_per_min: Some(10),
            tokens_per_min: Some(100),
            usd_per_day: Some(1.0),
            ..Limits::default()
        },
    };
    let both = [key.clone(), model.clone()];
    let expect = |ok: bool, what: &str| {
        if ok { Ok(()) } else { Err(what.to_owned()) }
    };
    expect(
        store.admit(&both, t0).await?.is_none(),
        "first request admitted",
    )?;
    expect(
        store.admit(&both, t0).await?.is_none(),
        "second request admitted",
    )?;
    let denied = store.admit(&both, t0).await?;
    expect(
        denied.as_ref().is_some_and(|d| {
            d.scope == key.name
                && d.limit == Limit::Requests
                && d.retry_after >= Duration::from_secs(29)
                && d.retry_after <= Duration::from_secs(30)
        }),
        &format!("third request refused by the key for ~30 s, got {denied:?}"),
    )?;
    // Refused by the key, so the model's bucket lost nothing: 8 left of 10 after two.
    let model_only = [model.clone()];
    for n in 0..8 {
        expect(
            store.admit(&model_only, t0).await?.is_none(),
            &format!("model request {n} admitted"),
        )?;
    }
    expect(
        store.admit(&model_only, t0).await?.is_some(),
        "model bucket empty after 10",
    )?;
    // Half a minute later the key has one request again.
    expect(
        store
            .admit(std::slice::from_ref(&key), t0 + 30_000)
            .await?
            .is_none(),
        "key refilled after 30 s",
    )?;
    // Tokens: a 150-token answer drives the model's bucket negative; it refills at 100/min.
    store.charge(&model_only, 150, 0.0, t0 + 60_000).await?;
    let denied = store.admit(&model_only, t0 + 60_000).await?;
    expect(
        denied.as_ref().is_some_and(|d| d.limit == Limit::Tokens),
        &format!("tokens exhausted, got {denied:?}"),
    )?;
    expect(
        store
            .admit(&model_only, t0 + 60_000 + 31_000)
            .await?
            .is_none(),
        "tokens refilled after 31 s",
    )?;
    // Spend: $1.20 against a $1/day budget refuses until the day ends.
    store.charge(&model_only, 0, 1.2, t0 + 100_000).await?;
    let denied = store.admit(&model_only, t0 + 200_000).await?;
    let ((_, to_day_end), _) = windows(t0 + 200_000);
    expect(
        denied.as_ref().is_some_and(|d| {
            d.limit == Limit::DailySpend
                && d.retry_after == Duration::from_millis(to_day_end as u64)
        }),
        &format!("daily budget spent, got {denied:?}"),
    )?;
    let next_day = (t0 / DAY_MS + 1) * DAY_MS + 1_000;
    expect(
        store.admit(&model_only, next_day).await?.is_none(),
        "a new day, a new budget",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn utc_windows() {
        // 2026-11-22T11:30:00Z
        let now = 1_795_347_000_000;
        let ((day, to_day_end), (month, to_month_end)) = windows(now);
        assert_eq!(day, 20_779);
        assert_eq!(to_day_end, 12 * 3_600_000 + 30 * 60_000);
        assert_eq!(month, 2026 * 12 + 10);
        // Eight days and 12.5 hours to 2026-12-01.
        assert_eq!(to_month_end, to_day_end + 8 * DAY_MS);
        // December rolls over to January.
        let december = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        let (_, (_, to_end)) = windows(december);
        assert_eq!(to_end, 31 * DAY_MS);
    }

    #[tokio::test]
    async fn memory_store_semantics() {
        check_store_semantics(&MemoryLimits::default())
            .await
            .unwrap();
    }
}
