//! The rules a broker's connection settings follow, in one place: the `pg_mqtt_pub.broker_*`
//! settings (their check hooks, pg/guc_checks.rs), `mqtt_broker_add()` (backend/broker_add.rs and
//! the SQL checks of the 1.4 script, which word them the same way) and the worker at connect time
//! (a file that disappeared since) all say the same thing about the same mistake.
//!
//! No PostgreSQL calls: `cargo test` runs it. Files are opened as the server's operating-system
//! user (every backend and the worker are that user), so "readable here" is what the worker finds.

use std::io::ErrorKind;

/// A value that breaks a rule: message, hint (and for files, what the OS said).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub hint: &'static str,
    pub kind: Problem,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Problem {
    /// 22023
    BadValue,
    /// 58P01
    NoSuchFile,
    /// 42501
    NotAllowed,
    /// 58030
    Io,
}

/// Room kept in a configured client id for the `-db<oid>` pg_mqtt_pub may append (ADR-012).
const CLIENT_ID_SUFFIX_ROOM: usize = 14;

/// An MQTT client id as the setting or `mqtt_broker_add` gives it ('' = the default): what
/// libmosquitto accepts (UTF-8 without control characters, at most 65,535 bytes), with room for
/// the suffix. libmosquitto refuses anything else only when the worker connects, and 2.0.11 then
/// closes file descriptor 0 on its way out, under the worker's feet.
pub fn client_id(id: &str) -> Result<(), Invalid> {
    sent_client_id(id, 65_535 - CLIENT_ID_SUFFIX_ROOM)
}

/// The client id the worker is about to send (suffix included).
pub fn sent_client_id(id: &str, max: usize) -> Result<(), Invalid> {
    let control = id.chars().any(|c| c.is_control());
    if !control && id.len() <= max {
        return Ok(());
    }
    Err(Invalid {
        message: if control {
            format!("invalid client_id {}: control characters", crate::pure::topic::quoted(id))
        } else {
            format!("invalid client_id: {} bytes, at most {max}", id.len())
        },
        hint: "An MQTT client id is UTF-8 text without control characters, at most 65,521 bytes (pg_mqtt_pub may append -db<oid>).",
        kind: Problem::BadValue,
    })
}

/// A broker's `host`: one host name or address, or a list of nodes `host[:port]` (nodes.rs).
/// (A node listed twice depends on the port, `pg_mqtt_pub.broker_port`, which a check hook of
/// this setting cannot know: the worker uses such a node once.)
pub fn host(h: &str) -> Result<(), Invalid> {
    super::nodes::parse_used(h, 1883).map(|_| ())
}

/// The lowest TLS version accepted.
pub fn tls_version(v: &str) -> Result<(), Invalid> {
    if v == "tlsv1.2" || v == "tlsv1.3" {
        return Ok(());
    }
    Err(Invalid {
        message: format!("invalid tls_version {}", crate::pure::topic::quoted(v)),
        hint: "Pass 'tlsv1.2' (TLS 1.2 or newer) or 'tlsv1.3'.",
        kind: Problem::BadValue,
    })
}

/// A file the worker will read (`what`: "ca_cert", "password_file", ...): an absolute path to a
/// regular file this process can open. Empty means "not set" and is fine.
pub fn readable_file(what: &str, path: &str) -> Result<(), Invalid> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(Invalid {
            message: format!("{what} must be an absolute path, not {}", crate::pure::topic::quoted(path)),
            hint: "Pass e.g. '/etc/postgresql/mqtt/ca.pem', a file the server can read.",
            kind: Problem::BadValue,
        });
    }
    // stat() first: open() of a FIFO would wait for a writer, uninterruptibly. The open itself is
    // non-blocking too, and the descriptor is checked again (the path may change in between).
    let opened = std::fs::metadata(path).and_then(|m| {
        if !m.is_file() {
            return Ok(m);
        }
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?.metadata()
    });
    let err = match opened {
        Ok(m) if m.is_file() => return Ok(()),
        Ok(_) => return Err(file_error(what, path, "it is not a regular file".into(), Problem::BadValue)),
        Err(e) => e,
    };
    let kind = match err.kind() {
        ErrorKind::NotFound => Problem::NoSuchFile,
        ErrorKind::PermissionDenied => Problem::NotAllowed,
        _ => Problem::Io,
    };
    Err(file_error(what, path, os_text(&err), kind))
}

fn file_error(what: &str, path: &str, why: String, kind: Problem) -> Invalid {
    Invalid {
        message: format!("could not open {what} file \"{path}\": {why}"),
        hint: "The server reads this file as its operating-system user: check the path and that user's rights to it.",
        kind,
    }
}

/// What the OS said, as PostgreSQL words it ("No such file or directory"), without Rust's
/// " (os error 2)".
fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(client_id("").is_ok() && client_id("plant-7").is_ok() && client_id("wärme").is_ok());
        let e = client_id("plant\t7").unwrap_err();
        assert_eq!(e.message, "invalid client_id E'plant\\x097': control characters");
        assert!(client_id(&"x".repeat(65_521)).is_ok());
        assert!(client_id(&"x".repeat(65_522)).is_err(), "no room for -db<oid>");
        assert!(sent_client_id(&"x".repeat(65_535), 65_535).is_ok());
        assert!(sent_client_id("a\u{85}b", 65_535).is_err(), "C1 controls too");
    }

    #[test]
    fn hosts_and_versions() {
        assert!(host("mqtt.example.com").is_ok());
        assert!(host("[::1]").is_ok());
        assert!(host("").is_err());
        assert!(host("mq1:1883,mq2").is_ok());
        assert!(host("mqtt://x").unwrap_err().message.starts_with("invalid host \"mqtt://x\""));
        assert!(tls_version("tlsv1.3").is_ok());
        assert_eq!(tls_version("tlsv1.1").unwrap_err().message, "invalid tls_version \"tlsv1.1\"");
    }

    #[test]
    fn files_name_themselves_and_the_os_error() {
        assert!(readable_file("ca_cert", "").is_ok());
        let e = readable_file("ca_cert", "/nonexistent.pem").unwrap_err();
        assert_eq!(e.message, "could not open ca_cert file \"/nonexistent.pem\": No such file or directory");
        assert_eq!(e.kind, Problem::NoSuchFile);
        assert_eq!(readable_file("ca_cert", "x.pem").unwrap_err().kind, Problem::BadValue);
        assert_eq!(readable_file("ca_cert", "/").unwrap_err().kind, Problem::BadValue);
        assert!(readable_file("ca_cert", "/etc/hostname").is_ok());
        // a FIFO is refused at once, not waited on
        let fifo = std::env::temp_dir().join(format!("pgmp-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain mkfifo on a fresh path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = readable_file("ca_cert", fifo.to_str().unwrap()).unwrap_err();
        let _ = std::fs::remove_file(&fifo);
        assert!(e.message.ends_with("it is not a regular file"), "{}", e.message);
    }
}
