//! Reconnect backoff arithmetic. Pure logic; `cargo test` runs it.
//!
//! After a connection is lost the first attempt is immediate (most drops are a broker restart or
//! a network blip); every further failed attempt doubles the wait, starting from
//! `pg_mqtt_pub.reconnect_interval_ms` and capped at [`MAX_RECONNECT_MS`] or the base, whichever is
//! larger. A broker that refuses us (bad password, bad certificate) therefore costs one attempt per
//! minute at steady state, not a tight loop.

pub const MAX_RECONNECT_MS: u64 = 60_000;

/// Delay before reconnect attempt number `failures` (0 = the first attempt after a drop).
pub fn reconnect_delay_ms(base_ms: u64, failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    let cap = MAX_RECONNECT_MS.max(base_ms);
    let shift = (failures - 1).min(20);
    base_ms.saturating_mul(1u64 << shift).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        assert_eq!(reconnect_delay_ms(5000, 0), 0);
        assert_eq!(reconnect_delay_ms(5000, 1), 5000);
        assert_eq!(reconnect_delay_ms(5000, 2), 10_000);
        assert_eq!(reconnect_delay_ms(5000, 4), 40_000);
        assert_eq!(reconnect_delay_ms(5000, 5), 60_000);
        assert_eq!(reconnect_delay_ms(5000, 500), 60_000);
        assert_eq!(reconnect_delay_ms(100_000, 3), 100_000);
        assert_eq!(reconnect_delay_ms(0, 3), 0);
    }
}
