//! Key names. Every key of a tenant carries the hash tag `{t:<tenant>}`, so all of them live in
//! one slot: a script may touch several of them and no command ever crosses slots.

use time::macros::format_description;
use time::OffsetDateTime;

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// The hash tag of a tenant's keys.
pub fn tag(tenant: &str) -> String {
    format!("{{t:{tenant}}}")
}

/// `cnt:{t:<tenant>}:<yyyyMMddHHmm>`: a hash of counts by event type for one minute.
pub fn counters(tenant: &str, minute: &str) -> String {
    format!("cnt:{}:{minute}", tag(tenant))
}

/// The companion of a counters hash: the last offset applied per source partition.
pub fn counters_applied(counters_key: &str) -> String {
    format!("{counters_key}:applied")
}

/// `tl:{t:<tenant>}:<user>`: a user's recent events, scored by event time.
pub fn timeline(tenant: &str, user: &str) -> String {
    format!("tl:{}:{user}", tag(tenant))
}

/// `uu:{t:<tenant>}:<yyyyMMdd>`: a HyperLogLog of the day's users.
pub fn unique_users(tenant: &str, day: &str) -> String {
    format!("uu:{}:{day}", tag(tenant))
}

/// `sess:{t:<tenant>}:<session>`: a session's state.
pub fn session(tenant: &str, session: &str) -> String {
    format!("sess:{}:{session}", tag(tenant))
}

/// `ord:{t:<tenant>}:<order_id>`: an order's newest state.
pub fn order(tenant: &str, order_id: &str) -> String {
    format!("ord:{}:{order_id}", tag(tenant))
}

/// The member of a timeline entry: `<event_type>|<event_id>`.
pub fn timeline_member(event_type: &str, event_id: &str) -> String {
    format!("{event_type}|{event_id}")
}

/// An event time outside what the key format can name (before year 1 or after 9999).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event_time {0} ms is outside the years 1..=9999")]
pub struct OutOfRange(pub i64);

fn utc(ms: i64) -> Result<OffsetDateTime, OutOfRange> {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).map_err(|_| OutOfRange(ms))?;
    if (1..=9999).contains(&t.year()) {
        Ok(t)
    } else {
        Err(OutOfRange(ms))
    }
}

/// `yyyyMMddHHmm` (UTC) of the minute holding `ms`.
pub fn minute(ms: i64) -> Result<String, OutOfRange> {
    utc(ms)?
        .format(format_description!("[year][month][day][hour][minute]"))
        .map_err(|_| OutOfRange(ms))
}

/// `yyyyMMdd` (UTC) of the day holding `ms`.
pub fn day(ms: i64) -> Result<String, OutOfRange> {
    utc(ms)?
        .format(format_description!("[year][month][day]"))
        .map_err(|_| OutOfRange(ms))
}

/// Milliseconds since the epoch of a `yyyyMMddHHmm` (UTC) minute.
pub fn parse_minute(s: &str) -> Result<i64, String> {
    let t =
        time::PrimitiveDateTime::parse(s, format_description!("[year][month][day][hour][minute]"))
            .map_err(|e| format!("`{s}` is not yyyyMMddHHmm: {e}"))?;
    Ok((t.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The start of the period of `period_ms` holding `ms`.
pub fn floor(ms: i64, period_ms: i64) -> i64 {
    ms - ms.rem_euclid(period_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times() {
        // 2026-01-01T00:00:00Z + 1 h 2 min 3 s
        let t = 1_767_225_600_000 + 3_723_000;
        assert_eq!(minute(t).as_deref(), Ok("202601010102"));
        assert_eq!(day(t).as_deref(), Ok("20260101"));
        assert_eq!(floor(t, MINUTE_MS), 1_767_225_600_000 + 3_720_000);
        assert_eq!(
            counters("acme", "202601010102"),
            "cnt:{t:acme}:202601010102"
        );
        assert_eq!(
            counters_applied(&counters("acme", "202601010102")),
            "cnt:{t:acme}:202601010102:applied"
        );
        assert_eq!(minute(i64::MAX), Err(OutOfRange(i64::MAX)));
        assert_eq!(parse_minute("202601010102"), Ok(floor(t, MINUTE_MS)));
        assert!(parse_minute("2026-01-01").is_err());
    }

    #[test]
    fn a_tenants_keys_share_one_slot() {
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        let t = "tenant-042";
        let all = [
            counters(t, "202601010102"),
            counters_applied(&counters(t, "202601010102")),
            timeline(t, "u1"),
            unique_users(t, "20260101"),
            session(t, "s1"),
            order(t, "o1"),
        ];
        assert!(all.iter().all(|k| slot(k) == slot(&all[0])), "{all:?}");
    }
}
