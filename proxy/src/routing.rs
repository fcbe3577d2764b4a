//! The routing table: which schema versions exist, which one a session gets.
//! The proxy knows nothing of migrations; whoever runs it (the `pgshift
//! proxy` command, the daemon) replaces the table at runtime, and only
//! sessions that start afterwards see the change.

use std::sync::{Arc, RwLock};

/// One schema version a session can be routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Name clients ask for (`pgshift.version`); the migration name.
    pub name: String,
    /// Schemas the session's `search_path` is set to, in order (the version
    /// schema, then the base schema).
    pub search_path: Vec<String>,
}

/// A configured rule: sessions matching every given field get `version`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub database: Option<String>,
    pub version: String,
}

impl Rule {
    fn matches(&self, who: &Who<'_>) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == got)
        };
        eq(&self.user, Some(who.user))
            && eq(&self.application_name, who.application_name)
            && eq(&self.database, Some(who.database))
    }

    /// Parse `user=alice,application_name=billing,version=0003_x`.
    pub fn parse(spec: &str) -> Result<Rule, String> {
        let mut r = Rule::default();
        let mut version = None;
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("route {spec:?}: {part:?} is not KEY=VALUE"))?;
            let v = v.trim().to_string();
            match k.trim() {
                "user" => r.user = Some(v),
                "application_name" => r.application_name = Some(v),
                "database" => r.database = Some(v),
                "version" => version = Some(v),
                other => {
                    return Err(format!(
                        "route {spec:?}: unknown key {other:?} (use user, application_name, database, version)"
                    ))
                }
            }
        }
        r.version = version.ok_or_else(|| format!("route {spec:?}: no version=NAME"))?;
        Ok(r)
    }
}

/// Who is connecting, from the startup message.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: Option<&'a str>,
}

/// Versions, rules and the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    pub versions: Vec<Version>,
    pub rules: Vec<Rule>,
    /// The version of sessions that ask for none and match no rule (the
    /// newest completed version). `None`: such sessions are not rewritten.
    pub default: Option<String>,
    /// The database these versions live in; sessions to other databases are
    /// not rewritten. `None`: every database.
    pub database: Option<String>,
}

/// Why a session cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVersion {
    pub requested: String,
    pub known: Vec<String>,
    /// Set when the session's database is not the one versions live in.
    pub only_database: Option<String>,
}

impl std::fmt::Display for UnknownVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(db) = &self.only_database {
            return write!(
                f,
                "schema version {:?} does not exist in this database; pgshift routes versions of database {db:?} only",
                self.requested
            );
        }
        write!(
            f,
            "schema version {:?} does not exist; known versions: {}",
            self.requested,
            if self.known.is_empty() {
                "none".to_string()
            } else {
                self.known.join(", ")
            }
        )
    }
}

impl RoutingTable {
    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// The version for a session: the one it asked for, else the first
    /// matching rule's, else the default. `Ok(None)`: leave it alone.
    pub fn resolve(
        &self,
        requested: Option<&str>,
        who: &Who<'_>,
    ) -> Result<Option<&Version>, UnknownVersion> {
        let unknown = |name: &str| UnknownVersion {
            requested: name.to_string(),
            known: self.versions.iter().map(|v| v.name.clone()).collect(),
            only_database: None,
        };
        if let Some(db) = self.database.as_deref().filter(|db| *db != who.database) {
            return match requested.filter(|n| !n.is_empty()) {
                Some(name) => Err(UnknownVersion {
                    only_database: Some(db.to_string()),
                    ..unknown(name)
                }),
                None => Ok(None),
            };
        }
        if let Some(name) = requested.filter(|n| !n.is_empty()) {
            return self.version(name).map(Some).ok_or_else(|| unknown(name));
        }
        for rule in self.rules.iter().filter(|r| r.matches(who)) {
            match self.version(&rule.version) {
                Some(v) => return Ok(Some(v)),
                None => tracing::warn!(
                    version = %rule.version,
                    "a routing rule names a version that does not exist; using the default"
                ),
            }
        }
        Ok(self.default.as_deref().and_then(|d| self.version(d)))
    }
}

/// The current table, replaceable while sessions run.
#[derive(Debug, Default)]
pub struct Router {
    table: RwLock<Arc<RoutingTable>>,
}

impl Router {
    pub fn new(table: RoutingTable) -> Router {
        Router {
            table: RwLock::new(Arc::new(table)),
        }
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the table; returns true when it changed.
    pub fn set(&self, table: RoutingTable) -> bool {
        let mut cur = match self.table.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **cur == table {
            return false;
        }
        *cur = Arc::new(table);
        true
    }
}

/// Quote a schema name for a `search_path` value.
pub fn quote_schema(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RoutingTable {
        RoutingTable {
            versions: vec![
                Version {
                    name: "v1".into(),
                    search_path: vec!["public_v1".into(), "public".into()],
                },
                Version {
                    name: "v2".into(),
                    search_path: vec!["public_v2".into(), "public".into()],
                },
            ],
            rules: vec![Rule::parse("application_name=new-app,version=v2").unwrap()],
            default: Some("v1".into()),
            database: Some("d".into()),
        }
    }

    fn who(app: Option<&str>) -> Who<'_> {
        Who {
            user: "u",
            database: "d",
            application_name: app,
        }
    }

    #[test]
    fn explicit_then_rule_then_default() {
        let t = table();
        assert_eq!(
            t.resolve(Some("v2"), &who(None)).unwrap().unwrap().name,
            "v2"
        );
        assert_eq!(
            t.resolve(None, &who(Some("new-app")))
                .unwrap()
                .unwrap()
                .name,
            "v2"
        );
        assert_eq!(
            t.resolve(None, &who(Some("other"))).unwrap().unwrap().name,
            "v1"
        );
        let e = t.resolve(Some("v9"), &who(None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "schema version \"v9\" does not exist; known versions: v1, v2"
        );
        let other_db = Who {
            database: "x",
            ..who(None)
        };
        assert_eq!(t.resolve(None, &other_db).unwrap(), None);
        let e = t.resolve(Some("v1"), &other_db).unwrap_err();
        assert!(e.to_string().contains("database \"d\" only"), "{e}");
    }

    #[test]
    fn rules_parse_and_reject_unknown_keys() {
        assert!(Rule::parse("user=a").is_err());
        assert!(Rule::parse("host=a,version=v").is_err());
        assert_eq!(
            Rule::parse("user=a, version=v").unwrap().user.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn router_swaps_tables() {
        let r = Router::new(RoutingTable::default());
        assert!(r.set(table()));
        assert!(!r.set(table()));
        assert_eq!(r.current().default.as_deref(), Some("v1"));
    }
}
