//! Live sessions: who they are, which version they use, and where they are
//! in the protocol (tracked from ReadyForQuery). Read by metrics, the
//! shutdown logic and the daemon.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Transaction status before the first ReadyForQuery.
pub const STATUS_STARTUP: u8 = b'S';

/// The shared state of one session; the pumps update it, others read it.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    /// Version name, `None` when the session was not rewritten.
    pub version: Option<String>,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: Option<SocketAddr>,
    pub started: Instant,
    /// `I`, `T` or `E` from the last ReadyForQuery; [`STATUS_STARTUP`] before.
    pub(crate) status: AtomicU8,
    /// Requests (Query, Sync, FunctionCall) sent and not yet answered by
    /// ReadyForQuery.
    pub(crate) pending: AtomicU32,
    pub(crate) copy_in: AtomicBool,
    pub(crate) held: AtomicBool,
    /// Nanoseconds after `started` at which the current request began.
    pub(crate) request_started: AtomicU64,
    /// Signalled at every ReadyForQuery.
    pub(crate) ready: Notify,
    /// Set by [`Registry::terminate`]: the message the session is closed with.
    pub(crate) kill: Mutex<Option<String>>,
    pub(crate) killed: Notify,
}

impl SessionInfo {
    pub fn new(
        version: Option<String>,
        user: String,
        database: String,
        application_name: String,
        client_addr: Option<SocketAddr>,
    ) -> SessionInfo {
        SessionInfo {
            id: 0,
            version,
            user,
            database,
            application_name,
            client_addr,
            started: Instant::now(),
            status: AtomicU8::new(STATUS_STARTUP),
            pending: AtomicU32::new(0),
            copy_in: AtomicBool::new(false),
            held: AtomicBool::new(false),
            request_started: AtomicU64::new(0),
            ready: Notify::new(),
            kill: Mutex::new(None),
            killed: Notify::new(),
        }
    }

    /// Between transactions with nothing in flight: the only place a session
    /// may be held or closed without harm.
    pub fn at_boundary(&self) -> bool {
        self.status.load(Ordering::Acquire) == b'I'
            && self.pending.load(Ordering::Acquire) == 0
            && !self.copy_in.load(Ordering::Acquire)
    }

    /// A point-in-time copy for listings.
    pub fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            id: self.id,
            version: self.version.clone(),
            user: self.user.clone(),
            database: self.database.clone(),
            application_name: self.application_name.clone(),
            client_addr: self.client_addr,
            state: self.state(),
            age: self.started.elapsed(),
        }
    }

    pub fn state(&self) -> SessionState {
        if self.held.load(Ordering::Relaxed) {
            return SessionState::Held;
        }
        let pending = self.pending.load(Ordering::Relaxed) > 0;
        match self.status.load(Ordering::Relaxed) {
            STATUS_STARTUP => SessionState::Startup,
            b'T' | b'E' if pending => SessionState::Active,
            b'T' => SessionState::IdleInTransaction,
            b'E' => SessionState::IdleInFailedTransaction,
            _ if pending || self.copy_in.load(Ordering::Relaxed) => SessionState::Active,
            _ => SessionState::Idle,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SessionState {
    Startup,
    Idle,
    Active,
    IdleInTransaction,
    IdleInFailedTransaction,
    Held,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Startup => "startup",
            SessionState::Idle => "idle",
            SessionState::Active => "active",
            SessionState::IdleInTransaction => "idle in transaction",
            SessionState::IdleInFailedTransaction => "idle in transaction (aborted)",
            SessionState::Held => "held",
        }
    }
}

/// A point-in-time view of one session.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub id: u64,
    pub version: Option<String>,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: Option<SocketAddr>,
    pub state: SessionState,
    pub age: Duration,
}

/// Every live session.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    emptied: Notify,
}

/// Removes its session from the registry when dropped.
pub struct Registered<'a> {
    registry: &'a Registry,
    pub info: Arc<SessionInfo>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        map.remove(&self.info.id);
        let empty = map.is_empty();
        drop(map);
        metrics::gauge!("pgshift_sessions", "version" => version_label(&self.info.version))
            .decrement(1.0);
        if empty {
            self.registry.emptied.notify_waiters();
        }
    }
}

/// Metric label of a version (`base` for sessions left unrewritten).
pub fn version_label(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "base".to_string())
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionInfo>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, mut info: SessionInfo) -> Registered<'_> {
        info.id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(info);
        metrics::gauge!("pgshift_sessions", "version" => version_label(&info.version))
            .increment(1.0);
        self.lock().insert(info.id, info.clone());
        Registered {
            registry: self,
            info,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every session, oldest first.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let mut v: Vec<SessionSnapshot> = self.lock().values().map(|s| s.snapshot()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Number of live sessions per version label.
    pub fn count_by_version(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.lock().values() {
            *m.entry(version_label(&s.version)).or_insert(0) += 1;
        }
        m
    }

    /// Close every session for which `pick` is true with a FATAL
    /// ErrorResponse (`57P01`) carrying `message`. Returns how many.
    pub fn terminate(&self, pick: impl Fn(&SessionSnapshot) -> bool, message: &str) -> usize {
        let chosen: Vec<Arc<SessionInfo>> = self
            .lock()
            .values()
            .filter(|s| pick(&s.snapshot()))
            .cloned()
            .collect();
        for s in &chosen {
            *s.kill.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_string());
            s.killed.notify_one();
        }
        chosen.len()
    }

    /// Wait until no session is left.
    pub async fn wait_empty(&self) {
        loop {
            let n = self.emptied.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_empty() {
                return;
            }
            n.await;
        }
    }
}
