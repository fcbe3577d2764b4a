//! The daemon's configuration: a TOML file, then environment variables and
//! flags on top. Every value is checked at start (and at SIGHUP) with an
//! error naming the file and the key.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `pgshift.toml`, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub postgres_url: Option<String>,
    pub schema: Option<String>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub backfill: BackfillSection,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub routes: Vec<String>,
    pub workers: Option<usize>,
    pub max_message_size: Option<u32>,
    pub gate_max_hold_ms: Option<u64>,
    pub shutdown_timeout_s: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSection {
    /// Rows per batch; 0 or absent sizes batches to `batch_target_ms`.
    pub batch_size: Option<u64>,
    pub batch_target_ms: Option<u64>,
    pub batch_delay_ms: Option<u64>,
}

/// Overrides from flags and environment (already merged by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub postgres_url: Option<String>,
    pub schema: Option<String>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub admin_listen: Option<String>,
}

/// The checked, complete configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub postgres_url: String,
    pub schema: String,
    pub listen: String,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub proxy: ProxySection,
    pub routes: Vec<pgshift_proxy::Rule>,
    pub backfill: crate::backfill::BackfillOptions,
}

/// Read and check the configuration: `file` (if any), then `over`.
pub fn load(file: Option<&Path>, over: &Overrides) -> Result<Config> {
    let (parsed, origin) = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("cannot read config {}", p.display()), e))?;
            let parsed: FileConfig = toml::from_str(&text)
                .map_err(|e| Error::config(format!("config {}: {e}", p.display())))?;
            (parsed, p.display().to_string())
        }
        None => (FileConfig::default(), "flags".to_string()),
    };
    let bad =
        |key: &str, msg: String| Error::config(format!("config {origin}: key `{key}`: {msg}"));
    let addr = |key: &str, v: Option<String>| -> Result<Option<SocketAddr>> {
        v.map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|e| bad(key, format!("{s:?} is not HOST:PORT ({e})")))
        })
        .transpose()
    };
    let postgres_url = over
        .postgres_url
        .clone()
        .or(parsed.postgres_url.clone())
        .ok_or_else(|| {
            bad(
                "postgres_url",
                "missing (set it in the file, --postgres-url or PGSHIFT_POSTGRES_URL)".into(),
            )
        })?;
    let listen = over
        .listen
        .clone()
        .or(parsed.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:6432".into());
    let routes = parsed
        .proxy
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            pgshift_proxy::Rule::parse(r).map_err(|e| bad(&format!("proxy.routes[{i}]"), e))
        })
        .collect::<Result<Vec<_>>>()?;
    if parsed.proxy.tls_cert.is_some() != parsed.proxy.tls_key.is_some() {
        return Err(bad(
            "proxy.tls_cert",
            "tls_cert and tls_key go together".into(),
        ));
    }
    if parsed.backfill.batch_target_ms == Some(0) {
        return Err(bad("backfill.batch_target_ms", "must be positive".into()));
    }
    let backfill = crate::backfill::BackfillOptions {
        batch_size: parsed.backfill.batch_size.filter(|n| *n > 0),
        target: std::time::Duration::from_millis(parsed.backfill.batch_target_ms.unwrap_or(100)),
        delay: std::time::Duration::from_millis(parsed.backfill.batch_delay_ms.unwrap_or(0)),
        ..Default::default()
    };
    Ok(Config {
        schema: over
            .schema
            .clone()
            .or(parsed.schema.clone())
            .unwrap_or_else(|| "public".into()),
        metrics_listen: addr(
            "metrics_listen",
            over.metrics_listen
                .clone()
                .or(parsed.metrics_listen.clone()),
        )?,
        admin_listen: addr(
            "admin_listen",
            over.admin_listen.clone().or(parsed.admin_listen.clone()),
        )?,
        postgres_url,
        listen,
        routes,
        backfill,
        proxy: parsed.proxy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as a config file (written to a scratch file that is
    /// removed again) with `overrides`.
    fn load_text(text: &str, overrides: &Overrides) -> Result<Config> {
        let p = std::env::temp_dir().join(format!(
            "pgshift-cfg-{}-{}.toml",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::write(&p, text).unwrap();
        let c = load(Some(&p), overrides);
        let _ = std::fs::remove_file(&p);
        c
    }

    fn load_str(text: &str) -> Result<Config> {
        load_text(text, &Overrides::default())
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = load_str("postgres_url = 'x'\nlisten_addr = '1'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `listen_addr`") && e.contains("line 2"),
            "{e}"
        );
        let e = load_str("postgres_url = 'x'\nmetrics_listen = 'nope'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `metrics_listen`"), "{e}");
        let e = load_str("postgres_url = 'x'\n[proxy]\nroutes = ['user=a']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `proxy.routes[0]`"), "{e}");
        let e = load_str("[backfill]\nbatch_size = 'ten'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = load_str("listen = '127.0.0.1:1'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `postgres_url`: missing"), "{e}");
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pgshift.toml");
        let c = load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.admin_listen.map(|a| a.port()), Some(6433));
    }

    #[test]
    fn flags_override_the_file() {
        let c = load_text(
            "postgres_url = 'postgres://file'\nlisten = '127.0.0.1:1'\n[backfill]\nbatch_size = 500\n",
            &Overrides {
                listen: Some("127.0.0.1:2".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.postgres_url, "postgres://file");
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.backfill.batch_size, Some(500));
    }
}
