//! The one clock every date, deadline and timestamp comes from, so tests can move time.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};

/// China Standard Time: calendar dates, periods and deadlines are reckoned in it.
pub fn cst() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Today's calendar date in China Standard Time.
    fn today(&self) -> NaiveDate {
        self.now().with_timezone(&cst()).date_naive()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// Days since 1970-01-01, the form dates take on disk.
pub fn day_number(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
    i32::try_from((date - epoch).num_days()).expect("dates are validated to a sane range")
}

pub fn from_day_number(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid") + chrono::Duration::days(i64::from(day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_reckoned_in_china_standard_time() {
        // 16:30 UTC on 23 Nov is 00:30 on 24 Nov in Beijing.
        let clock = ManualClock::new("2026-11-23T16:30:00Z".parse().unwrap());
        assert_eq!(clock.today(), NaiveDate::from_ymd_opt(2026, 11, 24).unwrap());
        clock.set("2026-11-23T15:59:59Z".parse().unwrap());
        assert_eq!(clock.today(), NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
    }

    #[test]
    fn day_numbers_round_trip() {
        for date in ["1900-01-01", "1970-01-01", "2026-02-28", "2099-12-31"] {
            let d: NaiveDate = date.parse().unwrap();
            assert_eq!(from_day_number(day_number(d)), d);
        }
        assert_eq!(day_number("1970-01-02".parse().unwrap()), 1);
    }
}
