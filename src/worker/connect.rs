//! Connecting a link: when it is due, with the broker's settings and password; for a host name
//! on a helper thread (ADR-008), for an address inline.

use super::*;

/// A connect running on a helper thread: it hands the client back with the result.
pub(super) type Connecting = std::thread::JoinHandle<(Client, Result<(), String>)>;

/// Start `client`'s connect on a helper thread. libmosquitto resolves the host name with a
/// blocking getaddrinfo() inside its "asynchronous" connect; a name that resolves slowly (or a
/// DNS server that does not answer) would stop delivery to every broker for seconds per try. The
/// thread runs only libmosquitto and libc code (no PostgreSQL function), owns the client until
/// it returns it, and blocks every signal, so PostgreSQL's handlers run in the main thread only.
/// The name (not an address) is what libmosquitto connects to, so TLS still verifies the
/// certificate against it.
pub(super) fn connect_on_helper_thread(
    mut client: Client,
    host: &str,
    port: u16,
    keepalive: i32,
) -> Result<Connecting, String> {
    let host = host.to_string();
    // SAFETY: plain signal-mask calls on this thread; the new thread inherits the full mask and
    // this thread's own mask is restored right after.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let handle = std::thread::Builder::new().name("pg_mqtt_pub connect".into()).spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.connect(&host, port, keepalive)))
                .unwrap_or_else(|_| Err("the connect thread panicked".into()));
            (client, r)
        });
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        handle.map_err(|e| format!("cannot start a connect thread: {e}"))
    }
}

/// The TLS files, checked before libmosquitto gets them: its own error ("Invalid function
/// arguments provided.") names neither the file nor what the OS said.
pub(super) fn check_tls_files(cfg: &BrokerConfig) -> Result<(), String> {
    if !cfg.use_tls {
        return Ok(());
    }
    for (what, path) in [("ca_cert", &cfg.ca_cert), ("client_cert", &cfg.client_cert), ("client_key", &cfg.client_key)]
    {
        crate::pure::settings_rules::readable_file(what, path).map_err(|e| e.message)?;
    }
    Ok(())
}

/// The password to log in with: the first line of `password_file` when one is set (read at
/// each connect, so rotating it needs no SQL and the secret never passes through SQL text or
/// the server log), else the inline one.
pub(super) fn read_password(cfg: &BrokerConfig) -> Result<String, String> {
    if cfg.password_file.is_empty() {
        return Ok(cfg.password.clone());
    }
    crate::pure::settings_rules::readable_file("password_file", &cfg.password_file).map_err(|e| e.message)?;
    std::fs::read_to_string(&cfg.password_file)
        .map(|s| s.lines().next().unwrap_or("").to_string())
        .map_err(|e| format!("cannot read password_file \"{}\": {e}", cfg.password_file))
}

impl Worker {
    pub(super) fn manage_connection(&mut self, l: usize) {
        self.finish_resolving(l);
        let now = Instant::now();
        if self.links[l].removed_at.is_some() {
            return;
        }
        if !self.active() && self.links[l].state != ConnState::Idle {
            // Extension dropped and nothing left to deliver: let go of the broker.
            let k = &mut self.links[l];
            if let Some(c) = k.client.take() {
                c.close();
            }
            k.state = ConnState::Idle;
            k.status.set_connected(false);
            self.go_cold(l);
            self.rebuild_waiter = true;
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: idle, disconnected from broker \"{}\"", self.links[l].cfg.name),
            );
            return;
        }
        match self.links[l].state {
            ConnState::Idle if self.active() => self.connect(l),
            ConnState::Idle => {}
            ConnState::Retry { at } if now >= at => self.connect(l),
            ConnState::Connecting { since } => {
                let k = &self.links[l];
                if now.duration_since(since) > k.connect_timeout() {
                    let why = k.no_connack(None);
                    self.fail(l, why);
                }
            }
            _ => {}
        }
    }

    pub(super) fn connect(&mut self, l: usize) {
        if self.links[l].resolving.is_some() {
            return; // the previous attempt's resolution must end first (it cannot be cancelled)
        }
        self.rebuild_waiter = true;
        let k = &mut self.links[l];
        k.status.set_identity(&k.cfg.name, &k.cfg.host, k.cfg.port);
        let result = match k.client.as_mut() {
            Some(_) => Ok(()), // still connecting
            None => {
                let id = k.client_id();
                let password = match check_tls_files(&k.cfg).and_then(|()| read_password(&k.cfg)) {
                    Ok(p) => p,
                    Err(e) => return self.fail(l, e),
                };
                let opts = ClientOptions {
                    broker: &k.cfg.name,
                    client_id: &id,
                    protocol: k.cfg.protocol,
                    max_inflight: k.cfg.max_inflight,
                    username: &k.cfg.username,
                    password: &password,
                    use_tls: k.cfg.use_tls,
                    ca_cert: &k.cfg.ca_cert,
                    client_cert: &k.cfg.client_cert,
                    client_key: &k.cfg.client_key,
                    tls_version: &k.cfg.tls_version,
                };
                match Client::new(&opts) {
                    Err(e) => Err(e),
                    Ok(mut c) if k.cfg.host.parse::<std::net::IpAddr>().is_ok() => {
                        let r = c.connect(&k.cfg.host, k.cfg.port, k.cfg.keepalive);
                        k.client = Some(c);
                        r
                    }
                    Ok(c) => connect_on_helper_thread(c, &k.cfg.host, k.cfg.port, k.cfg.keepalive)
                        .map(|h| k.resolving = Some(h)),
                }
            }
        };
        match result {
            Ok(()) => {
                let k = &mut self.links[l];
                k.state = ConnState::Connecting { since: Instant::now() };
                k.tcp_up = false;
            }
            Err(e) => {
                let k = &self.links[l];
                let why = format!("cannot connect to {}:{}: {e}", k.cfg.host, k.cfg.port);
                self.fail(l, why)
            }
        }
    }

    /// A connect on a helper thread has returned: the client comes back to this loop if the
    /// attempt is still wanted (nothing failed, switched or removed the link meanwhile), else it
    /// is dropped.
    pub(super) fn finish_resolving(&mut self, l: usize) {
        let k = &mut self.links[l];
        if !k.resolving.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let Ok((client, result)) = k.resolving.take().expect("checked").join() else {
            return self.fail(l, "the connect thread failed".into());
        };
        if !matches!(k.state, ConnState::Connecting { .. }) || k.removed_at.is_some() || k.client.is_some() {
            return; // not wanted any more; dropping it destroys the client
        }
        k.client = Some(client);
        self.rebuild_waiter = true;
        if let Err(e) = result {
            let k = &self.links[l];
            let why = format!("cannot connect to {}:{}: {e}", k.cfg.host, k.cfg.port);
            self.fail(l, why);
        }
    }
}
