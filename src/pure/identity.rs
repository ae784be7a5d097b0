//! The default MQTT client id (pure: no PostgreSQL calls, tested by `cargo test`).
//!
//! Brokers allow one connection per client id: a second one takes the first one's session over
//! (MQTT 5 reason 0x8E) and they keep kicking each other off. Clusters made from one base backup
//! (pg_basebackup, a promoted standby, a restored backup) share the system identifier, so the id
//! also carries an *instance* part: a hash of the host name, the data directory and the port.
//! It stays the same across restarts of one cluster (so a broker sees the same client) and
//! differs between any two clusters running at the same time (they cannot share all three).

/// 32-bit FNV-1a: small, stable across Rust versions and platforms (unlike `DefaultHasher`).
/// The parts are joined with a NUL byte, so ("ab", "c") and ("a", "bc") differ.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            eat(0);
        }
        p.iter().for_each(|&b| eat(b));
    }
    h
}

/// The instance part: a hash of host name, data directory and port.
pub fn instance_hash(host: &[u8], data_dir: &[u8], port: i32) -> u32 {
    fnv1a(&[host, data_dir, port.to_string().as_bytes()])
}

/// Which database and broker a client id is for.
#[derive(Clone, Copy)]
pub struct Whose<'a> {
    /// The database's oid: every database of a cluster has its own worker and connections
    /// (ADR-012), and two of them must never take over each other's session.
    pub database: u32,
    /// `None` for the broker `default`.
    pub broker: Option<&'a str>,
}

/// `pg_mqtt_pub-<system identifier>-<instance>-db<oid>` for the default broker, with `-<name>`
/// for a named one.
pub fn default_client_id(system_id: u64, host: &[u8], data_dir: &[u8], port: i32, whose: Whose<'_>) -> String {
    let instance = instance_hash(host, data_dir, port);
    let db = whose.database;
    match whose.broker {
        None => format!("pg_mqtt_pub-{system_id}-{instance:08x}-db{db}"),
        Some(name) => format!("pg_mqtt_pub-{system_id}-{instance:08x}-db{db}-{name}"),
    }
}

/// The client id of the broker `default` when `pg_mqtt_pub.client_id` is set: as written when
/// one database publishes (`restricted`), else with `-db<oid>` so the databases' workers do not
/// take over each other's session.
pub fn configured_client_id(configured: &str, restricted: bool, database: u32) -> String {
    if restricted {
        configured.to_string()
    } else {
        format!("{configured}-db{database}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Whose<'static> = Whose { database: 5, broker: None };

    #[test]
    fn databases_differ() {
        let a = default_client_id(7, b"db1", b"/d", 5432, Whose { database: 5, broker: None });
        let b = default_client_id(7, b"db1", b"/d", 5432, Whose { database: 6, broker: None });
        assert_ne!(a, b);
        assert!(a.ends_with("-db5"), "{a}");
        assert_eq!(configured_client_id("plant", true, 5), "plant");
        assert_eq!(configured_client_id("plant", false, 5), "plant-db5");
    }

    #[test]
    fn stable_for_one_cluster() {
        let a = default_client_id(7, b"db1", b"/var/lib/postgresql/15/main", 5432, W);
        assert_eq!(a, default_client_id(7, b"db1", b"/var/lib/postgresql/15/main", 5432, W));
        assert!(a.starts_with("pg_mqtt_pub-7-") && a.len() == "pg_mqtt_pub-7-".len() + 8 + "-db5".len(), "{a}");
        assert_eq!(
            default_client_id(7, b"db1", b"/d", 5432, Whose { database: 5, broker: Some("cloud") }),
            format!("{}-cloud", default_client_id(7, b"db1", b"/d", 5432, W))
        );
    }

    #[test]
    fn clones_of_one_base_backup_differ() {
        let primary = default_client_id(7, b"db1", b"/data/a", 5432, W);
        assert_ne!(primary, default_client_id(7, b"db1", b"/data/b", 5432, W), "same host, other directory");
        assert_ne!(primary, default_client_id(7, b"db1", b"/data/a", 5433, W), "same host and directory, other port");
        assert_ne!(primary, default_client_id(7, b"db2", b"/data/a", 5432, W), "another host");
        assert_ne!(
            default_client_id(7, b"ab", b"c", 1, W),
            default_client_id(7, b"a", b"bc", 1, W),
            "parts are separated"
        );
    }

    #[test]
    fn hash_is_fnv1a() {
        // the published FNV-1a test vectors
        assert_eq!(fnv1a(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a(&[b"foobar"]), 0xbf9c_f968);
    }
}
