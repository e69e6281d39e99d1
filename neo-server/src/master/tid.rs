//! NEO's transaction ids from time (lib/util.py `tidFromTime`, `addTID`).
//!
//! A tid is 8 bytes, big-endian: the high 32 bits count minutes since
//! 1900-01-01 00:00 UTC in a calendar where every month has 31 days
//! (`((((year-1900)*12 + month-1)*31 + day-1)*24 + hour)*60 + minute`), the
//! low 32 bits are the seconds within that minute scaled to 60:2^32.
//!
//! | bits   | meaning                                   |
//! |--------|-------------------------------------------|
//! | 63..32 | packed year/month/day/hour/minute (UTC)   |
//! | 31..0  | seconds * 2^32 / 60                       |

use fsformat::Tid;

const LOW_OVERFLOW: i64 = 1 << 32;
const LOW_MAX: u64 = (1 << 32) - 1;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Packs minutes since the UNIX epoch into the high half of a tid.
fn pack_minutes(minutes: i64) -> u64 {
    let days = minutes.div_euclid(1440);
    let mod_day = minutes.rem_euclid(1440);
    let (y, m, d) = civil_from_days(days);
    let packed = ((((y - 1900) * 12 + m - 1) * 31 + d - 1) * 24 + mod_day / 60) * 60 + mod_day % 60;
    packed.max(0) as u64
}

/// Minutes since the UNIX epoch of a tid's high half.
fn unpack_minutes(high: u64) -> i64 {
    let h = high as i64;
    let minute = h % 60;
    let h = h / 60;
    let hour = h % 24;
    let h = h / 24;
    let day = h % 31 + 1;
    let h = h / 31;
    let month = h % 12 + 1;
    let year = h / 12 + 1900;
    days_from_civil(year, month, day) * 1440 + hour * 60 + minute
}

/// The tid of a UNIX time (seconds, UTC), like NEO's `tidFromTime`.
pub fn tid_from_time(t: f64) -> Tid {
    let secs = t.floor();
    let minutes = (secs as i64).div_euclid(60);
    let sec_in_min = (secs as i64).rem_euclid(60) as f64 + (t - secs);
    let lower = (sec_in_min / (60.0 / LOW_OVERFLOW as f64)) as u64;
    Tid((pack_minutes(minutes) << 32) | lower.min(LOW_MAX))
}

/// The UNIX time of a tid (inverse of [`tid_from_time`], to the 2^-32 minute).
pub fn time_from_tid(tid: Tid) -> f64 {
    let minutes = unpack_minutes(tid.0 >> 32);
    minutes as f64 * 60.0 + (tid.0 & LOW_MAX) as f64 * 60.0 / LOW_OVERFLOW as f64
}

/// `tid` moved by `offset` units of the low half, carrying into minutes
/// with real calendar arithmetic, like NEO's `addTID`.
pub fn add_tid(tid: Tid, offset: i64) -> Tid {
    let lower = (tid.0 & LOW_MAX) as i64 + offset;
    let carry = lower.div_euclid(LOW_OVERFLOW);
    let lower = lower.rem_euclid(LOW_OVERFLOW) as u64;
    let high = if carry != 0 {
        pack_minutes(unpack_minutes(tid.0 >> 32) + carry)
    } else {
        tid.0 >> 32
    };
    Tid((high << 32) | lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_neo_values() {
        // python: tidFromTime(1795542388.0773065) (recorded AnswerBeginTransaction
        // values are of that form: 040d3c4a...).
        let t = tid_from_time(1_795_542_388.077_306_5);
        assert_eq!(t.0 >> 32, 0x040d_3c4a);
        assert!((time_from_tid(t) - 1_795_542_388.077_306_5).abs() < 1e-6);
        assert_eq!(tid_from_time(0.0), Tid(pack_minutes(0) << 32));
        // Same formula in Python with time.gmtime.
        assert_eq!(
            tid_from_time(1_795_542_388.081_7),
            Tid(0x040d_3c4a_77d0_b477)
        );
        assert_eq!(tid_from_time(1_700_000_000.123), Tid(0x03f4_7f95_55db_ae99));
        // 1900-01-01 00:00 is 0.
        assert_eq!(pack_minutes(days_from_civil(1900, 1, 1) * 1440), 0);
    }

    #[test]
    fn add_carries_over_calendar() {
        // 2000-02-29 23:59, lower max: +1 goes to 2000-03-01 00:00.
        let m = days_from_civil(2000, 2, 29) * 1440 + 23 * 60 + 59;
        let t = Tid((pack_minutes(m) << 32) | LOW_MAX);
        let next = add_tid(t, 1);
        assert_eq!(next.0 & LOW_MAX, 0);
        assert_eq!(unpack_minutes(next.0 >> 32), m + 1);
        assert_eq!(civil_from_days((m + 1) / 1440), (2000, 3, 1));
        assert_eq!(add_tid(next, -1), t);
        assert_eq!(add_tid(t, 0), t);
    }
}
